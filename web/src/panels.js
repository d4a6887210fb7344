// DOM around the canvas: node palette, queue/history panel, error box, toasts, overall progress.

import { formatDuration, formatStart, runRecord, workflowNameOf } from "./runs.js";
import { isVideoFile } from "./media.js";

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

export function toast(message, { error = false, ms = 4000 } = {}) {
  const box = el("div", { className: "toast" + (error ? " error" : ""), textContent: message });
  document.getElementById("toasts").appendChild(box);
  setTimeout(() => box.remove(), ms);
  return box;
}

/** The palette: categories (nested on "/") of display names; a click adds the node mid-canvas. */
export function buildPalette(app) {
  const tree = document.getElementById("palette-tree");
  const filter = document.getElementById("palette-filter");
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    tree.innerHTML = "";
    const root = { children: new Map(), nodes: [] };
    for (const [type, def] of Object.entries(app.objectInfo)) {
      const name = def.display_name || type;
      if (q && !`${name} ${type} ${def.category}`.toLowerCase().includes(q)) continue;
      let at = root;
      for (const part of (def.category || "other").split("/")) {
        if (!at.children.has(part)) at.children.set(part, { children: new Map(), nodes: [] });
        at = at.children.get(part);
      }
      at.nodes.push({ type, name, def });
    }
    const draw = (branch, parent, path) => {
      for (const [name, child] of [...branch.children].sort((a, b) => a[0].localeCompare(b[0]))) {
        const details = el("details", { open: !!q, dataset: { category: path ? `${path}/${name}` : name } },
                           el("summary", { textContent: name }));
        draw(child, details, path ? `${path}/${name}` : name);
        parent.appendChild(details);
      }
      for (const item of branch.nodes.sort((a, b) => a.name.localeCompare(b.name))) {
        parent.appendChild(el("a", { className: "pal-node", textContent: item.name, title: item.def.description || item.type,
                                     dataset: { type: item.type }, onclick: () => app.addNode(item.type) }));
      }
    };
    draw(root, tree, "");
  };
  filter.addEventListener("input", render);
  render();
}

/** The errors box: a list of (title, text) lines; clicking a line selects the node. */
export function showErrors(app, items) {
  const box = document.getElementById("errors");
  box.innerHTML = "";
  if (!items.length) { box.hidden = true; return; }
  box.appendChild(el("span", { className: "close", textContent: "✕", onclick: () => { box.hidden = true; } }));
  for (const item of items) {
    box.appendChild(el("div", { className: "error-item", dataset: { node: item.nodeId ?? "" },
                                textContent: item.nodeId != null ? `#${item.nodeId} ${item.title}: ${item.text}` : item.text,
                                onclick: () => item.nodeId != null && app.focusNode(item.nodeId) }));
  }
  box.hidden = false;
}

export function setOverall(fraction, text) {
  document.getElementById("overall-bar").style.width = `${Math.round(Math.min(Math.max(fraction, 0), 1) * 100)}%`;
  document.getElementById("overall-text").textContent = text;
}

/** Queue (running, pending with cancel) and history (click to reopen) from GET /queue and /history.
 *  Each row shows the workflow's name; history rows also the run status (success / error / interrupted /
 *  cancelled, each styled apart), the start time and the duration (runs.js). */
export async function refreshSidePanel(app) {
  const panel = document.getElementById("side-panel");
  if (panel.hidden) return;
  let queue, history;
  try {
    [queue, history] = await Promise.all([app.api.queue(), app.api.history(30, { includeCancelled: true })]);
  } catch (e) {
    toast(`cannot read the queue: ${e.message}`, { error: true });
    return;
  }
  const qList = document.getElementById("queue-list");
  qList.innerHTML = "";
  for (const [state, items] of [["running", queue.queue_running], ["pending", queue.queue_pending]]) {
    for (const item of items) {
      const id = item[1];
      const name = workflowNameOf(item[3]) || "untitled";
      const row = el("div", { className: `job job-${state}`, dataset: { promptId: id, state }, title: `#${item[0]} ${id}` },
                     el("span", { className: "job-id", textContent: `${state === "running" ? "▶" : "…"} ` },
                        el("span", { className: "job-name", textContent: name })));
      if (state === "running") row.appendChild(el("button", { textContent: "Interrupt", className: "job-interrupt", onclick: () => app.interrupt() }));
      else row.appendChild(el("button", { textContent: "Cancel", className: "job-cancel", onclick: () => app.cancel(id) }));
      qList.appendChild(row);
    }
  }
  if (!qList.children.length) qList.appendChild(el("div", { className: "empty", textContent: "nothing queued" }));
  const hList = document.getElementById("history-list");
  hList.innerHTML = "";
  for (const [id, entry] of Object.entries(history).reverse()) hList.appendChild(historyRow(app, id, entry));
  if (!hList.children.length) hList.appendChild(el("div", { className: "empty", textContent: "no history yet" }));
}

function historyRow(app, id, entry) {
  const run = runRecord(entry);
  const shownAt = run.startTime ?? run.endTime;   // a cancelled job never started: when it was cancelled
  const time = el("time", { className: "job-time", textContent: formatStart(shownAt),
                            title: run.startTime === null ? "cancelled at" : "started at" });
  if (shownAt !== null) time.dateTime = new Date(shownAt).toISOString();
  const duration = el("span", { className: "job-duration", textContent: formatDuration(run.durationMs),
                                title: "duration", dataset: { ms: run.durationMs ?? "" } });
  const info = el("div", { className: "job-info" },
                  el("div", { className: "job-name", textContent: run.workflowName || "untitled" }),
                  el("div", { className: "job-meta" },
                     el("span", { className: "job-status", textContent: run.status }), time, duration));
  const row = el("div", { className: `job status-${run.status}`, dataset: { promptId: id, status: run.status },
                          title: `#${entry.prompt[0]} ${id}${run.attempts > 1 ? ` (attempt ${run.attempts})` : ""} — reopen this run's workflow and results` },
                 info);
  const first = Object.values(entry.outputs || {}).flatMap((o) => o.images || [])[0];
  if (first && isVideoFile(first.filename)) {
    row.prepend(el("video", { src: app.api.viewUrl(first), muted: true, preload: "metadata" }));
  } else if (first) {
    row.prepend(el("img", { src: app.api.viewUrl(first), alt: "" }));
  }
  row.appendChild(el("button", { textContent: "Open", className: "job-open", onclick: () => app.reopen(id, entry) }));
  return row;
}

export function fillWorkflowMenu(app, items) {
  const list = document.getElementById("workflow-list");
  list.innerHTML = "";
  for (const item of items) {
    list.appendChild(el("button", { type: "button", textContent: item.name, dataset: { workflow: item.name },
                                    onclick: () => app.openReadyWorkflow(item.name) }));
  }
  if (!items.length) list.appendChild(el("div", { className: "menu-sep", textContent: "(none)" }));
}
