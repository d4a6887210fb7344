// Loop bodies edited as graphs. Repeat and ForEach run a body template held in their `body` input as an
// API-format JSON string (nodes/flow/loops.py). On this canvas that input is a button: it opens the
// body as a graph of its own (litegraph's subgraph view), edited with the palette, search, links and
// widgets like the workflow; every change is written back into `body` at once, so the JSON stays what
// the server, files and other clients read, and undo, save and Queue see the edit.
//
// Writing back keeps the body's node ids (`grow`, `show` — the names runs report as `2.0.r1.grow`), and
// the inputs of node classes this server does not know, verbatim. The body's canvas form (positions,
// sizes, titles, bypass, notes) is kept in the loop node's `properties.body_canvas`, used when it still
// converts to the JSON in `body` (a body edited as text elsewhere is laid out afresh).

import { el } from "./dialogs.js";
import { graphToPrompt, loadApiWorkflow, serializeWorkflow } from "./workflow.js";
import { toast } from "./panels.js";

export const LOOP_CLASSES = new Set(["Repeat", "ForEach"]);
const CANVAS_PROPERTY = "body_canvas";

/** A JSON value with object keys sorted: two bodies are the same when these strings are. */
export function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** The body template of a loop node: {ok, body} or {ok: false, error}. An empty body is a valid start. */
export function parseBody(text) {
  if (typeof text !== "string" || !text.trim()) return { ok: true, body: {} };
  try {
    const body = JSON.parse(text);
    if (!body || typeof body !== "object" || Array.isArray(body)) return { ok: false, error: "the body is not a JSON object of nodes" };
    return { ok: true, body };
  } catch (e) {
    return { ok: false, error: `the body is not valid JSON: ${e.message}` };
  }
}

function bodyWidgetOf(node) {
  return (node.widgets || []).find((w) => w.kind === "value" && w.inputName === "body") || null;
}

/** The body as an API-format object from a body graph: node ids mapped back through `ids` (graph id →
 * body id), inputs of unknown classes and inputs the graph cannot hold taken from `original`. */
export function bodyFromGraph(graph, ids, original, known) {
  const prompt = graphToPrompt(graph);
  const bodyId = (id) => ids.get(String(id)) ?? String(id);
  const body = {};
  for (const [id, entry] of Object.entries(prompt)) {
    const name = bodyId(id);
    const before = original[name];
    const node = graph.getNodeById(Number(id));
    const isLink = (v) => Array.isArray(v) && v.length === 2 && typeof v[0] === "string" && Number.isInteger(v[1]);
    let inputs;
    let meta = null;
    if (!known(entry.class_type) && before && before.class_type === entry.class_type) {
      inputs = { ...(before.inputs || {}) };           // nothing to edit them with here: kept as they were
      meta = before._meta || null;
    } else {
      inputs = {};
      // literal values the graph has no widget for (a text given to a socket) stay; links come from the graph
      if (before && before.class_type === entry.class_type) {
        for (const [key, value] of Object.entries(before.inputs || {})) if (!isLink(value)) inputs[key] = value;
      }
      for (const [key, value] of Object.entries(entry.inputs)) {
        inputs[key] = isLink(value) ? [bodyId(value[0]), value[1]] : value;
      }
      const defaultTitle = node && node.constructor && node.constructor.title;
      if (node && node.title && node.title !== defaultTitle) meta = { title: node.title };
      else if (before && before._meta && before._meta.title && node && node.title === before._meta.title) meta = { title: node.title };
    }
    const out = { class_type: entry.class_type, inputs };
    if (meta) out._meta = meta;
    body[name] = out;
  }
  return body;
}

export class LoopBodies {
  constructor(app) {
    this.app = app;
    this.editing = null;    // {node, graph, ids, original, rootDs, text}
    this.bar = null;
  }

  /** Turn a loop node's `body` text box into the button that opens the body graph. */
  decorate(node, type = node.type) {
    if (!LOOP_CLASSES.has(type)) return;      // (litegraph sets node.type after the constructor)
    const widget = bodyWidgetOf(node);
    if (!widget) return;
    const bodies = this;
    Object.assign(widget, {
      type: "loopbody",
      computeSize(width) { return [width, LiteGraph.NODE_WIDGET_HEIGHT + 4]; },
      draw(ctx, owner, width, y) {
        const margin = 15, h = LiteGraph.NODE_WIDGET_HEIGHT;
        const parsed = parseBody(this.value);
        const count = parsed.ok ? Object.keys(parsed.body).length : null;
        ctx.fillStyle = parsed.ok ? "#2d4a6a" : "#5a2020";
        ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
        ctx.beginPath();
        ctx.roundRect ? ctx.roundRect(margin, y, width - margin * 2, h, 6) : ctx.rect(margin, y, width - margin * 2, h);
        ctx.fill(); ctx.stroke();
        ctx.fillStyle = "#eee";
        ctx.font = "12px sans-serif";
        ctx.textAlign = "center";
        ctx.fillText(parsed.ok ? `✎ Edit loop body · ${count} node${count === 1 ? "" : "s"}` : "✎ Loop body: invalid JSON",
                     width / 2, y + h * 0.7);
        ctx.textAlign = "left";
      },
      mouse(event, pos, owner) {
        if (event.type === LiteGraph.pointerevents_method + "down") {
          setTimeout(() => bodies.open(owner), 0);   // after litegraph has finished this click
          return true;
        }
        return false;
      },
    });
    widget.tooltip = "The loop's body: a graph run once per round. LoopInput nodes receive value, index and "
      + "context1–4; its one LoopOutput is the round's result. Click to edit it.";
  }

  /** Right-click entries of a loop node. */
  menuOptions(node) {
    if (!LOOP_CLASSES.has(node.type) || !bodyWidgetOf(node)) return [];
    return [{ content: "Edit loop body", callback: () => this.open(node) },
            { content: "Edit loop body as JSON", callback: () => this.editJson(node) }];
  }

  /** Build the body graph: from the stored canvas form when it still matches the JSON, else laid out. */
  buildGraph(node, original) {
    const known = (type) => !!this.app.objectInfo[type];
    const stored = node.properties && node.properties[CANVAS_PROPERTY];
    if (stored && Array.isArray(stored.nodes) && stored.extra && stored.extra.body_ids) {
      const graph = new LGraph();
      try {
        graph.configure(JSON.parse(JSON.stringify(stored)));
        const ids = new Map(Object.entries(stored.extra.body_ids));
        if (canonical(bodyFromGraph(graph, ids, original, known)) === canonical(original)) return { graph, ids };
      } catch (e) {
        // a damaged canvas form: lay the JSON out instead
      }
    }
    const graph = new LGraph();
    const ids = new Map();
    if (!Object.keys(original).length) {
      // a new body: the round's value in, straight out
      const input = LiteGraph.createNode("LoopInput"), output = LiteGraph.createNode("LoopOutput");
      if (input && output) {
        input.pos = [0, 0]; output.pos = [360, 0];
        graph.add(input); graph.add(output);
        input.connect(0, output, 0);
        ids.set(String(input.id), "value"); ids.set(String(output.id), "result");
      }
      return { graph, ids };
    }
    const byId = loadApiWorkflow(graph, original);
    for (const [name, created] of byId) ids.set(String(created.id), name);
    return { graph, ids };
  }

  open(node) {
    const app = this.app;
    const widget = bodyWidgetOf(node);
    if (!widget) return false;
    if (node.graph !== app.graph) {
      toast("A loop inside a loop body opens as JSON only (right-click it: Edit loop body as JSON)", { error: true });
      return false;
    }
    if (this.editing) this.close();
    const parsed = parseBody(widget.value);
    if (!parsed.ok) {
      toast(`${parsed.error} — fix it with "Edit loop body as JSON" (right-click the node)`, { error: true, ms: 8000 });
      return false;
    }
    const { graph, ids } = this.buildGraph(node, parsed.body);
    graph._subgraph_node = node;          // litegraph frames the view and titles it with the loop node
    for (const hook of ["onNodeAdded", "onNodeRemoved", "onConnectionChange", "onAfterChange"]) {
      graph[hook] = () => app.onGraphEdited();
    }
    const rootDs = { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset] };
    this.editing = { node, graph, ids, original: parsed.body, rootDs, text: widget.value };
    this.editing.lastKey = this.graphKey();
    app.canvas.openSubgraph(graph);
    this.showBar(node);
    const view = node.properties && node.properties[CANVAS_PROPERTY] && node.properties[CANVAS_PROPERTY].extra
      && node.properties[CANVAS_PROPERTY].extra.ds;
    if (view && view.offset && graph.extra && graph.extra.body_ids) {
      app.canvas.ds.scale = Number(view.scale) || 1;
      app.canvas.ds.offset = [Number(view.offset[0]) || 0, Number(view.offset[1]) || 0];
    } else {
      app.fitView();
    }
    app.canvasEl.focus();
    app.canvas.setDirty(true, true);
    return true;
  }

  graphKey() {
    const data = this.editing.graph.serialize();
    for (const n of data.nodes) delete n.order;
    return JSON.stringify(data);
  }

  /** Write the body graph back into the loop node when it changed since the last write. */
  sync() {
    const editing = this.editing;
    if (!editing) return false;
    const key = this.graphKey();
    if (key === editing.lastKey) return false;
    editing.lastKey = key;
    const known = (type) => !!this.app.objectInfo[type];
    const body = bodyFromGraph(editing.graph, editing.ids, editing.original, known);
    const form = serializeWorkflow(editing.graph, this.app.canvas);
    form.extra.body_ids = Object.fromEntries(editing.ids);
    editing.node.properties = editing.node.properties || {};
    editing.node.properties[CANVAS_PROPERTY] = form;
    const widget = bodyWidgetOf(editing.node);
    if (widget && canonical(parseBody(widget.value).body ?? null) !== canonical(body)) {
      widget.value = JSON.stringify(body, null, 1);
    }
    return true;
  }

  /** Back to the workflow (writing the body back first unless `write` is false). */
  close({ write = true } = {}) {
    const editing = this.editing;
    if (!editing) return;
    if (write) this.sync();
    this.editing = null;
    const app = this.app;
    const stack = app.canvas._graph_stack || [];
    const root = stack.length ? stack[0] : app.graph;
    app.canvas._graph_stack = null;
    app.canvas.selected_nodes = {};
    root.attachCanvas(app.canvas);
    app.canvas.ds.scale = editing.rootDs.scale;
    app.canvas.ds.offset = editing.rootDs.offset;
    if (this.bar) { this.bar.remove(); this.bar = null; }
    if (write) app.onGraphEdited();
    app.canvas.setDirty(true, true);
  }

  showBar(node) {
    if (this.bar) this.bar.remove();
    this.bar = el("div", { id: "loop-body-bar" },
      el("button", { type: "button", id: "btn-loop-back", textContent: "◀ Back to the workflow",
                     title: "Esc", onclick: () => this.close() }),
      el("span", { className: "loop-body-title", textContent: `Loop body of ${node.title} #${node.id}` }),
      el("span", { className: "loop-body-hint",
                   textContent: "LoopInput: value · index · context1–4 — LoopOutput: the round's result" }));
    document.getElementById("canvas-wrap").appendChild(this.bar);
  }

  /** The body as text, for a body that does not parse or for pasting one in. */
  editJson(node) {
    if (this.editing && node.graph === this.app.graph) this.close();
    const widget = bodyWidgetOf(node);
    if (!widget) return;
    this.app.canvas.prompt("body (API-format JSON)", widget.value ?? "", (value) => {
      widget.value = value;
      this.app.onGraphEdited();
    }, null, true);
  }
}
