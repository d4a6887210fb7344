// Graph ↔ workflow: the canvas (UI, schema 0.4) format ComfyUI opens, the API format the server
// runs (the same conversion ComfyUI's frontend does on Queue, COMFY_COMPAT §3), and loading either.

import { MODE_BYPASS, MODE_MUTED, applyWidgetValues } from "./nodes.js";
import { typesMatch } from "./types.js";

const VIRTUAL = new Set(["Reroute", "PrimitiveNode", "Note", "MarkdownNote"]);

export function isUiWorkflow(data) {
  return !!data && typeof data === "object" && Array.isArray(data.nodes);
}

export function isApiWorkflow(data) {
  return !!data && typeof data === "object" && !Array.isArray(data) && !isUiWorkflow(data)
    && Object.keys(data).length > 0
    && Object.values(data).every((n) => n && typeof n === "object" && typeof n.class_type === "string");
}

function pair(value) {
  if (!value) return value;
  return [Number(value[0]), Number(value[1])];
}

/** The graph as a plain UI workflow: litegraph's serialize() made ComfyUI-shaped (arrays for pos and
 * size, slot_index on outputs, canvas offset and zoom in extra.ds). Deep-copied. */
export function serializeWorkflow(graph, canvas) {
  const data = JSON.parse(JSON.stringify(graph.serialize()));
  for (const node of data.nodes) {
    node.pos = pair(node.pos);
    node.size = pair(node.size);
    (node.outputs || []).forEach((output, i) => { output.slot_index = i; });
  }
  data.extra = data.extra || {};
  if (canvas) {
    data.extra.ds = { scale: canvas.ds.scale, offset: [canvas.ds.offset[0], canvas.ds.offset[1]] };
  }
  data.version = 0.4;
  return data;
}

/** Replace the graph's contents with a UI or API workflow. */
export function loadWorkflow(graph, canvas, data) {
  if (isUiWorkflow(data)) {
    graph.clear();
    graph.configure(JSON.parse(JSON.stringify(data)));
    const ds = data.extra && data.extra.ds;
    if (canvas && ds && ds.offset) {
      canvas.ds.scale = Number(ds.scale) || 1;
      canvas.ds.offset = [Number(ds.offset[0]) || 0, Number(ds.offset[1]) || 0];
    }
    return !(ds && ds.offset);   // the caller may fit the view when the file says nothing
  }
  if (isApiWorkflow(data)) {
    loadApiWorkflow(graph, data);
    return true;
  } else {
    throw new Error("this is neither a canvas (UI) workflow nor an API-format workflow");
  }
}

/** Lay an API-format workflow out on the canvas: nodes by id, widget values by input name, links.
 * Returns the created nodes by the workflow's ids (ids that are not numbers get new numeric ones). */
export function loadApiWorkflow(graph, prompt) {
  graph.clear();
  const byId = new Map();
  const ids = Object.keys(prompt);
  let nextId = 1 + Math.max(0, ...ids.map(Number).filter(Number.isInteger));
  for (const id of ids) {
    const entry = prompt[id];
    let node = LiteGraph.createNode(entry.class_type);
    if (!node) {
      node = new LGraphNode(entry.class_type);
      node.type = entry.class_type;
    }
    node.id = /^\d+$/.test(id) ? Number(id) : nextId++;
    if (entry._meta && entry._meta.title && entry._meta.title !== node.title) node.title = entry._meta.title;
    const values = {};
    for (const [name, value] of Object.entries(entry.inputs || {})) {
      if (!Array.isArray(value)) values[name] = value && typeof value === "object" && "__value__" in value ? value.__value__ : value;
    }
    applyWidgetValues(node, values);
    graph.add(node, true);
    byId.set(id, node);
  }
  for (const id of ids) {
    const target = byId.get(id);
    for (const [name, value] of Object.entries(prompt[id].inputs || {})) {
      if (!Array.isArray(value) || value.length !== 2) continue;
      const origin = byId.get(String(value[0]));
      if (!origin) continue;
      let slot = target.findInputSlot(name);
      if (slot < 0) {
        const widget = (target.widgets || []).find((w) => w.kind === "value" && w.inputName === name);
        if (!widget) continue;
        target.addInput(name, widget.spec.type, { widget: { name } });
        slot = target.findInputSlot(name);
      }
      origin.connect(Number(value[1]), target, slot);
    }
  }
  graph.arrange(60);
  return byId;
}

function resolveLink(graph, linkId, wanted, seen = new Set()) {
  const link = graph.links[linkId];
  if (!link || seen.has(linkId)) return null;
  seen.add(linkId);
  const origin = graph.getNodeById(link.origin_id);
  if (!origin) return null;
  if (origin.type === "Reroute") {
    const input = origin.inputs && origin.inputs[0];
    return input && input.link != null ? resolveLink(graph, input.link, wanted, seen) : null;
  }
  if (origin.mode === MODE_MUTED || VIRTUAL.has(origin.type)) return null;
  if (origin.mode === MODE_BYPASS) {
    const inputs = origin.inputs || [];
    const outType = origin.outputs && origin.outputs[link.origin_slot] ? origin.outputs[link.origin_slot].type : "*";
    let chosen = inputs[link.origin_slot];
    if (!(chosen && typesMatch(chosen.type, outType) && typesMatch(chosen.type, wanted))) {
      chosen = inputs.find((i) => i.type === wanted) || inputs.find((i) => typesMatch(i.type, wanted));
    }
    if (!chosen || chosen.link == null) return null;
    return resolveLink(graph, chosen.link, wanted, seen);
  }
  return { id: String(origin.id), slot: link.origin_slot };
}

/** The API-format prompt of the graph, as ComfyUI's frontend builds it when you press Queue. */
export function graphToPrompt(graph) {
  const prompt = {};
  const nodes = graph.computeExecutionOrder(false) || graph._nodes;
  for (const node of nodes) {
    if (VIRTUAL.has(node.type) || node.mode === MODE_MUTED || node.mode === MODE_BYPASS) continue;
    const inputs = {};
    for (const w of node.widgets || []) {
      if (w.kind !== "value") continue;
      const v = w.value;
      inputs[w.inputName] = Array.isArray(v) ? { __value__: v } : v;
    }
    if (!node.widgets && node.last_serialization && Array.isArray(node.last_serialization.widgets_values)) {
      // an unknown class: send what we have so validation can name it
    }
    for (const input of node.inputs || []) {
      if (input.link == null) continue;
      const source = resolveLink(graph, input.link, input.type);
      if (source) inputs[input.name] = [source.id, source.slot];
    }
    prompt[String(node.id)] = { class_type: node.type, inputs, _meta: { title: node.title } };
  }
  return prompt;
}
