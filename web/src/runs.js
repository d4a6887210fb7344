// Run records for the queue & history panel: a workflow's name (from the file it was opened from, or
// from a prompt's extra_data as the server reads it), and how a history entry's run status, start time
// and duration are shown. The server's record is the entry's `nodegraph` block (nodegraph/queue/
// run_status.py): status success / error / interrupted / cancelled next to ComfyUI's status_str.

/** "design_loop.ui.json" → "design_loop" (the name nodegraph run gives its run folders too). */
export function workflowNameFromFile(fileName) {
  if (!fileName) return null;
  const base = String(fileName).split(/[\\/]/).pop();
  const name = base.replace(/(\.ui\.json|\.json|\.png)$/i, "");
  return name || base || null;
}

function text(value) {
  if (typeof value !== "string") return null;
  const t = value.split(/\s+/).filter(Boolean).join(" ");
  return t || null;
}

/** The workflow name in a prompt's extra_data: workflow_name, else the UI workflow's name/title. */
export function workflowNameOf(extra) {
  if (!extra || typeof extra !== "object") return null;
  const direct = text(extra.workflow_name);
  if (direct) return direct;
  const workflow = extra.extra_pnginfo && extra.extra_pnginfo.workflow;
  if (!workflow || typeof workflow !== "object") return null;
  for (const holder of [workflow, workflow.extra || {}]) {
    const name = text(holder.name) || text(holder.title);
    if (name) return name;
  }
  return null;
}

/** A history entry's run record; entries without one (another server) fall back to ComfyUI's fields. */
export function runRecord(entry) {
  const record = entry.nodegraph || {};
  const comfy = (entry.status && entry.status.status_str) || "unknown";
  return {
    status: record.status || comfy,
    workflowName: record.workflow_name ?? workflowNameOf(entry.prompt && entry.prompt[3]),
    createTime: record.create_time ?? null,
    startTime: record.start_time ?? null,
    endTime: record.end_time ?? null,
    durationMs: record.duration_ms ?? null,
    attempts: record.attempts ?? null,
  };
}

/** 350 → "350 ms", 1234 → "1.2 s", 65000 → "1 min 05 s", 3723000 → "1 h 02 min". */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (Math.round(ms) < 1000) return `${Math.round(ms)} ms`;
  const tenths = Math.round(ms / 100);
  if (tenths < 600) return `${(tenths / 10).toFixed(1)} s`;
  const whole = Math.round(ms / 1000);
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
  return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")} min`;
}

/** The time of day of a start (with the date when it is not today), in the browser's locale. */
export function formatStart(ms, now = new Date()) {
  if (ms === null || ms === undefined) return "";
  const at = new Date(ms);
  const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return at.toDateString() === now.toDateString() ? time : `${at.toLocaleDateString()} ${time}`;
}

/** The file a typed save-as name is saved under: no folders, no characters file systems refuse,
 * ".json" added when missing ("my flow" → "my flow.json"); null when nothing usable is left. */
export function saveFileName(typed) {
  if (typeof typed !== "string") return null;
  let name = typed.split(/[\\/]/).pop();
  name = name.replace(/[\u0000-\u001f<>:"|?*]/g, "").trim().replace(/[. ]+$/, "");
  if (!name || /^\.+$/.test(name)) return null;
  if (!/\.json$/i.test(name)) name += ".json";
  return name;
}
