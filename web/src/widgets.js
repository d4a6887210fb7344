// Widgets from /object_info input declarations, in ComfyUI's widgets_values order (COMFY_COMPAT §3):
// one widget per widget-type input in declared order, a "control after generate" combo after seeds
// (and a filter after controlled combos), and the upload button after all others.
//
// Every widget carries `kind` ("value" | "control" | "filter" | "upload") and, for values,
// `inputName` and `spec`, so the workflow code never guesses from positions.

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
export const CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"];
const SEED_NAMES = new Set(["seed", "noise_seed"]);
const RANDOM_MAX = 2 ** 50; // JavaScript numbers hold integers exactly only up to 2^53

/** `[type, options]` → `{type, options, choices}`; combos become type "COMBO". */
export function parseSpec(spec) {
  const [raw, options = {}] = Array.isArray(spec) ? spec : [spec, {}];
  if (Array.isArray(raw)) return { type: "COMBO", options: options || {}, choices: raw };
  if (raw === "COMBO") return { type: "COMBO", options: options || {}, choices: (options && options.options) || [] };
  return { type: String(raw), options: options || {}, choices: null };
}

export function isWidgetInput(spec) {
  const { type, options } = parseSpec(spec);
  return WIDGET_TYPES.has(type) && !options.forceInput;
}

/** Inputs in declared order: required then optional, as `input_order` says (object order otherwise). */
export function declaredInputs(def) {
  const out = [];
  for (const group of ["required", "optional"]) {
    const specs = (def.input && def.input[group]) || {};
    const order = (def.input_order && def.input_order[group]) || Object.keys(specs);
    for (const name of order) if (name in specs) out.push({ name, spec: specs[name], optional: group === "optional" });
  }
  return out;
}

function hasControl(name, parsed) {
  if (parsed.type === "INT") return !!parsed.options.control_after_generate || SEED_NAMES.has(name);
  if (parsed.type === "FLOAT") return !!parsed.options.control_after_generate;
  return parsed.type === "COMBO" && !!parsed.options.control_after_generate;
}

function decimals(step) {
  const text = String(step);
  if (text.includes("e-")) return Number(text.split("e-")[1]);
  return text.includes(".") ? text.split(".")[1].length : 0;
}

/** Round and clamp a number the way the declaration asks (INT to its step, FLOAT to `round`/step). */
export function normalizeNumber(value, parsed) {
  const o = parsed.options;
  let v = Number(value);
  if (!Number.isFinite(v)) v = Number(o.default ?? 0);
  if (parsed.type === "INT") {
    const step = Number(o.step) > 0 ? Number(o.step) : 1;
    const base = Number.isFinite(Number(o.min)) && Math.abs(Number(o.min)) < RANDOM_MAX ? Number(o.min) : 0;
    v = Math.round((v - base) / step) * step + base;
  } else {
    const round = o.round === false ? null : (Number(o.round) > 0 ? Number(o.round) : (Number(o.step) > 0 ? Number(o.step) : null));
    if (round) v = Number((Math.round(v / round) * round).toFixed(Math.max(decimals(round), 0)));
  }
  if (o.min !== undefined && o.min !== null && v < Number(o.min)) v = Number(o.min);
  if (o.max !== undefined && o.max !== null && v > Number(o.max)) v = Number(o.max);
  if (parsed.type === "INT") v = Math.round(v);
  return v;
}

function defaultValue(parsed) {
  const o = parsed.options;
  if (o.default !== undefined) return o.default;
  switch (parsed.type) {
    case "INT": case "FLOAT": return Math.max(0, Number(o.min ?? 0));
    case "STRING": return "";
    case "BOOLEAN": return false;
    case "COMBO": return parsed.choices.length ? parsed.choices[0] : "";
    default: return null;
  }
}

/** A canvas-drawn multi-line text box; a click opens litegraph's multi-line prompt. */
function multilineWidget(name, value, callback) {
  return {
    type: "multiline", name, value, options: { multiline: true }, callback,
    computeSize(width) { return [width, 64]; },
    draw(ctx, node, width, y) {
      const margin = 15, h = 60;
      ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
      ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
      ctx.beginPath();
      ctx.roundRect ? ctx.roundRect(margin, y, width - margin * 2, h, 6) : ctx.rect(margin, y, width - margin * 2, h);
      ctx.fill(); ctx.stroke();
      ctx.save();
      ctx.beginPath(); ctx.rect(margin, y, width - margin * 2, h); ctx.clip();
      ctx.fillStyle = LiteGraph.WIDGET_TEXT_COLOR;
      ctx.font = "12px monospace";
      const lines = String(this.value ?? "").split("\n").slice(0, 4);
      lines.forEach((line, i) => ctx.fillText(line || (i === 0 ? `(${name})` : ""), margin + 6, y + 15 + i * 14));
      ctx.restore();
    },
    mouse(event, pos, node) {
      if (event.type !== LiteGraph.pointerevents_method + "down") return false;
      const canvas = LGraphCanvas.active_canvas;
      canvas.prompt(name, this.value ?? "", (v) => {
        this.value = v;
        if (this.callback) this.callback(v);
        node.setDirtyCanvas(true, true);
      }, event, true);
      return true;
    },
  };
}

/** Add the widgets for node class `def` to `node`; `hooks.upload(node, widget)` runs the upload button. */
export function addWidgets(node, def, hooks = {}) {
  let upload = null;
  for (const { name, spec } of declaredInputs(def)) {
    if (!isWidgetInput(spec)) continue;
    const parsed = parseSpec(spec);
    const o = parsed.options;
    const initial = defaultValue(parsed);
    let w;
    const mark = (widget) => Object.assign(widget, { kind: "value", inputName: name, spec: parsed, tooltip: o.tooltip || "" });
    if (parsed.type === "INT" || parsed.type === "FLOAT") {
      const step = Number(o.step) > 0 ? Number(o.step) : (parsed.type === "INT" ? 1 : 0.01);
      const options = { min: o.min ?? -Infinity, max: o.max ?? Infinity, step: step * 10,
                        precision: parsed.type === "INT" ? 0 : Math.min(Math.max(decimals(o.round || step), 1), 6) };
      w = node.addWidget("number", name, normalizeNumber(initial, parsed), (v) => {
        w.value = normalizeNumber(v, parsed);
        node.onWidgetEdited?.(w);
      }, options);
    } else if (parsed.type === "BOOLEAN") {
      w = node.addWidget("toggle", name, !!initial, () => node.onWidgetEdited?.(w),
                         { on: o.label_on || "true", off: o.label_off || "false" });
    } else if (parsed.type === "COMBO") {
      w = node.addWidget("combo", name, initial, () => node.onWidgetEdited?.(w), { values: parsed.choices.slice() });
    } else if (o.multiline) {
      w = node.addCustomWidget(multilineWidget(name, String(initial ?? ""), () => node.onWidgetEdited?.(w)));
    } else {
      w = node.addWidget("text", name, String(initial ?? ""), () => node.onWidgetEdited?.(w));
    }
    mark(w);
    if (hasControl(name, parsed)) {
      const values = parsed.type === "COMBO" ? [...CONTROL_VALUES, "increment-wrap"] : CONTROL_VALUES;
      const control = node.addWidget("combo", "control_after_generate", "randomize", () => {}, { values });
      Object.assign(control, { kind: "control", target: w, tooltip: "what happens to the value after each run" });
      w.control = control;
      if (parsed.type === "COMBO") {
        const filter = node.addWidget("text", "control_filter_list", "", () => {});
        Object.assign(filter, { kind: "filter", target: w });
      }
    }
    if (o.image_upload || o.video_upload || o.animated_image_upload) upload = w;
  }
  if (upload) {
    const button = node.addWidget("button", "choose file to upload", "image", () => hooks.upload?.(node, upload));
    Object.assign(button, { kind: "upload", target: upload, serialize: true });
    button.value = "image";
  }
}

/** Apply "control after generate" to every controlled widget of `node` (after a prompt was queued). */
export function applyControls(node) {
  for (const w of node.widgets || []) {
    if (w.kind !== "control" || !w.target) continue;
    const target = w.target;
    const parsed = target.spec;
    const mode = w.value === true ? "randomize" : w.value === false ? "fixed" : w.value;
    if (parsed.type === "COMBO") {
      let values = target.options.values || [];
      const filter = (node.widgets.find((x) => x.kind === "filter" && x.target === target) || {}).value;
      if (filter) values = values.filter((v) => String(v).toLowerCase().includes(String(filter).toLowerCase()));
      if (!values.length) continue;
      let i = values.indexOf(target.value);
      if (mode === "increment") i = Math.min(i + 1, values.length - 1);
      else if (mode === "increment-wrap") i = (i + 1) % values.length;
      else if (mode === "decrement") i = Math.max(i - 1, 0);
      else if (mode === "randomize") i = Math.floor(Math.random() * values.length);
      else continue;
      target.value = values[Math.max(i, 0)];
    } else {
      const o = parsed.options;
      const step = Number(o.step) > 0 ? Number(o.step) : 1;
      const min = Math.max(Number(o.min ?? 0), -RANDOM_MAX);
      const max = Math.min(Number(o.max ?? RANDOM_MAX), RANDOM_MAX);
      let v = Number(target.value);
      if (mode === "increment") v += step;
      else if (mode === "decrement") v -= step;
      else if (mode === "randomize") v = min + Math.floor(Math.random() * ((max - min) / step + 1)) * step;
      else continue;
      target.value = normalizeNumber(Math.min(Math.max(v, min), max), parsed);
    }
  }
}
