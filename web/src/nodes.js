// litegraph node classes built from /object_info: typed sockets, widgets, and what a run shows on a
// node (progress, running highlight, live preview, output images and text, errors).

import { AUDIO_BAR_HEIGHT, drawAudioBar } from "./media.js";
import { typeColor, typesMatch } from "./types.js";
import { addWidgets, CONTROL_VALUES, declaredInputs, isWidgetInput, parseSpec } from "./widgets.js";

export const MODE_MUTED = 2;
export const MODE_BYPASS = 4;

function displayName(type, def) {
  return def.display_name || type;
}

function widgetBottom(node) {
  const slots = Math.max(node.inputs ? node.inputs.length : 0, node.outputs ? node.outputs.length : 0);
  let bottom = slots * LiteGraph.NODE_SLOT_HEIGHT + 6;
  for (const w of node.widgets || []) {
    if (w.last_y === undefined) continue;
    const h = w.computeSize ? w.computeSize(node.size[0])[1] : LiteGraph.NODE_WIDGET_HEIGHT;
    bottom = Math.max(bottom, w.last_y + h + 6);
  }
  return bottom;
}

function wrapLines(ctx, text, width, maxLines) {
  const out = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(/(\s+)/)) {
      if (ctx.measureText(line + word).width > width && line) {
        out.push(line);
        line = word.trimStart();
      } else {
        line += word;
      }
    }
    out.push(line);
    if (out.length >= maxLines) break;
  }
  return out.slice(0, maxLines);
}

/** Grow `node` so that an image fits below its widgets. */
export function ensureImageRoom(node, room = 200) {
  const need = widgetBottom(node) + room;
  if (node.size[1] < need) node.setSize([Math.max(node.size[0], 240), need]);
}

/** Map `values` onto the node's widgets: positionally when the counts agree, else value by value,
 * skipping control/filter/upload entries the file does not have (older or foreign files). */
export function applyWidgetValues(node, values) {
  const widgets = node.widgets || [];
  if (!Array.isArray(values)) {
    if (values && typeof values === "object") {
      for (const w of widgets) if (w.kind === "value" && w.inputName in values) w.value = values[w.inputName];
    }
    return;
  }
  if (values.length === widgets.length) {
    widgets.forEach((w, i) => { if (values[i] !== undefined && values[i] !== null) w.value = values[i]; });
    return;
  }
  let i = 0;
  for (const w of widgets) {
    if (i >= values.length) break;
    const v = values[i];
    if (w.kind === "value") { w.value = v; i++; }
    else if (w.kind === "control") { if (typeof v === "boolean" || CONTROL_VALUES.includes(v) || v === "increment-wrap") { w.value = v; i++; } }
    else if (w.kind === "upload") { if (v === "image") i++; }
    else if (w.kind === "filter") { if (typeof v === "string" && i < values.length - 0) { w.value = v; i++; } }
  }
}

/** Register one litegraph class per node class; returns the sorted list of socket types seen. */
export function registerNodes(app, info) {
  const types = new Set(["*"]);
  for (const [type, def] of Object.entries(info)) {
    const inputs = declaredInputs(def);
    for (const { spec } of inputs) if (!isWidgetInput(spec)) types.add(parseSpec(spec).type);
    for (const t of def.output || []) types.add(Array.isArray(t) ? "COMBO" : t);

    class NodegraphNode extends LGraphNode {
      constructor(title) {
        super(title);
        this.serialize_widgets = true;
        this.properties = this.properties || {};
        this.properties["Node name for S&R"] = type;
        for (const { name, spec } of inputs) {
          if (isWidgetInput(spec)) continue;
          const parsed = parseSpec(spec);
          const slot = this.addInput(name, parsed.type);
          if (parsed.options.tooltip) slot.tooltip = parsed.options.tooltip;
          slot.color_on = slot.color_off = typeColor(parsed.type);
        }
        (def.output || []).forEach((t, i) => {
          const outType = Array.isArray(t) ? "COMBO" : t;
          const slot = this.addOutput((def.output_name && def.output_name[i]) || outType, outType);
          if (def.output_tooltips && def.output_tooltips[i]) slot.tooltip = def.output_tooltips[i];
          slot.color_on = slot.color_off = typeColor(outType);
        });
        addWidgets(this, def, { upload: (node, widget) => app.pickUpload(node, widget) });
        app.loops.decorate(this, type);   // a loop's body: a button that opens it as a graph (loopbody.js)
        const size = this.computeSize();
        this.size = [Math.max(size[0], 240), size[1] + (def.output_node ? 10 : 0)];
        this.comfyClass = type;   // as ComfyUI's nodes carry it; litegraph sets type after construction
        if (!this.type) this.type = type;
        app.extensions.invokeNow("nodeCreated", this, app);   // packs' frontend extensions (extensions.js)
      }

      onConfigure(infoIn) {
        applyWidgetValues(this, infoIn.widgets_values);
        // unconnected widget sockets (ComfyUI ≥1.16 autosaves) are not shown: the widget stands
        for (let i = (this.inputs || []).length - 1; i >= 0; i--) {
          const input = this.inputs[i];
          if (input.widget && input.link == null) this.removeInput(i);
        }
        for (const input of this.inputs || []) input.color_on = input.color_off = typeColor(input.type);
        const min = this.computeSize();   // a file may be smaller than the widgets need
        if (this.size[0] < min[0] || this.size[1] < min[1]) {
          this.size = [Math.max(this.size[0], min[0]), Math.max(this.size[1], min[1])];
        }
      }

      onSerialize(o) {
        for (const input of o.inputs || []) { delete input.color_on; delete input.color_off; delete input.tooltip; }
        for (const output of o.outputs || []) { delete output.color_on; delete output.color_off; delete output.tooltip; }
      }

      connect(slot, target, targetSlot) {
        const outIndex = typeof slot === "string" ? this.findOutputSlot(slot) : slot;
        const inIndex = typeof targetSlot === "string" ? target.findInputSlot(targetSlot) : targetSlot;
        const output = this.outputs && this.outputs[outIndex];
        const input = target && target.inputs && target.inputs[inIndex];
        if (output && input && !typesMatch(output.type, input.type)) {
          app.refused(this, output, target, input);
          return null;
        }
        return super.connect(slot, target, targetSlot);
      }

      onWidgetEdited() {
        app.onGraphEdited();
      }

      acceptsUpload() {
        return (this.widgets || []).some((w) => w.kind === "upload");
      }

      onDropFile(file) {
        if (this.acceptsUpload() && /^image\//.test(file.type)) {
          const widget = this.widgets.find((w) => w.kind === "value" && w.spec.options.image_upload);
          app.uploadFile(this, widget, file);
          return true;
        }
        return false;
      }

      // litegraph puts what this returns above its own entries: return only ours, never its list
      // (returning `options` after adding to it listed every entry twice)
      getExtraMenuOptions() {
        const extra = [];
        const convertible = (this.widgets || []).filter((w) => w.kind === "value");
        if (convertible.length) {
          extra.push({ content: "Convert widget to input", has_submenu: true, submenu: {
            options: convertible.map((w) => ({ content: w.inputName, callback: () => app.widgetToInput(this, w) })) } });
        }
        extra.push({ content: this.mode === MODE_BYPASS ? "Un-bypass (Ctrl+B)" : "Bypass (Ctrl+B)",
                     callback: () => app.toggleMode(this, MODE_BYPASS) });
        extra.push(...app.loops.menuOptions(this));
        return extra;
      }

      // a click on an audio output's player bar plays or pauses it
      onMouseDown(event, pos) {
        if (this.graph !== app.graph) return false;
        const audio = app.nodeState(this.id).audio;
        const top = widgetBottom(this) + 2;
        if (!audio || pos[1] < top || pos[1] > top + AUDIO_BAR_HEIGHT) return false;
        if (audio.paused) audio.play().catch(() => {});
        else audio.pause();
        return true;
      }

      onDrawForeground(ctx) {
        // what runs show belongs to the workflow's nodes, not to a loop body's (their ids are the body graph's)
        const inWorkflow = this.graph === app.graph;
        const state = inWorkflow ? app.nodeState(this.id) : {};
        const w = this.size[0];
        const h = this.size[1];
        const titleH = LiteGraph.NODE_TITLE_HEIGHT;
        if (this.flags && this.flags.collapsed) return;
        if (this.mode === MODE_BYPASS || this.mode === MODE_MUTED) {
          ctx.fillStyle = this.mode === MODE_BYPASS ? "rgba(160, 60, 200, 0.35)" : "rgba(60, 60, 60, 0.55)";
          ctx.fillRect(0, -titleH, w, h + titleH);
        }
        const top = widgetBottom(this);
        const video = state.video;
        if (video && video.readyState >= 2 && video.videoWidth) {
          const availH = Math.max(h - top - 4, 20);
          const scale = Math.min((w - 10) / video.videoWidth, availH / video.videoHeight);
          const vw = video.videoWidth * scale, vh = video.videoHeight * scale;
          ctx.drawImage(video, (w - vw) / 2, top + (availH - vh) / 2, vw, vh);
        }
        if (state.audio) drawAudioBar(ctx, state.audio, state.audioName, 5, top + 2, w - 10);
        const image = state.preview || (state.images && state.images[state.imageIndex || 0]);
        if (image && image.complete && image.naturalWidth) {
          const availH = Math.max(h - top - 4, 20);
          const scale = Math.min((w - 10) / image.naturalWidth, availH / image.naturalHeight);
          const iw = image.naturalWidth * scale, ih = image.naturalHeight * scale;
          ctx.drawImage(image, (w - iw) / 2, top + (availH - ih) / 2, iw, ih);
        }
        if (state.text) {
          ctx.save();
          ctx.fillStyle = "#ddd";
          ctx.font = "12px monospace";
          wrapLines(ctx, state.text, w - 16, 6).forEach((line, i) => ctx.fillText(line, 8, top + 14 + i * 14));
          ctx.restore();
        }
        if (state.progress > 0 && state.progress < 1 || (state.progress > 0 && inWorkflow && app.runningNodeId === String(this.id))) {
          ctx.fillStyle = "#3c8f52";
          ctx.fillRect(0, 0, w * Math.min(state.progress, 1), 4);
        }
        if (inWorkflow && app.runningNodeId === String(this.id)) {
          ctx.strokeStyle = "#4caf50";
          ctx.lineWidth = 3;
          ctx.strokeRect(-3, -titleH - 3, w + 6, h + titleH + 6);
        }
        if (state.error) {
          ctx.strokeStyle = "#ff4040";
          ctx.lineWidth = 3;
          ctx.strokeRect(-4, -titleH - 4, w + 8, h + titleH + 8);
          ctx.save();
          ctx.font = "12px sans-serif";
          const lines = wrapLines(ctx, state.error, Math.max(w, 260) - 12, 5);
          ctx.fillStyle = "rgba(80, 10, 10, 0.92)";
          ctx.fillRect(-4, h + 8, Math.max(w, 260) + 8, lines.length * 15 + 8);
          ctx.fillStyle = "#ffb0b0";
          lines.forEach((line, i) => ctx.fillText(line, 2, h + 22 + i * 15));
          ctx.restore();
        }
      }
    }

    NodegraphNode.title = displayName(type, def);
    NodegraphNode.comfyClass = type;
    NodegraphNode.nodeData = def;
    if (!def.name) def.name = type;
    app.extensions.invokeNow("beforeRegisterNodeDef", NodegraphNode, def, app);
    LiteGraph.registerNodeType(type, NodegraphNode);
    NodegraphNode.category = def.category || "";
    NodegraphNode.description = def.description || "";
    NodegraphNode.title_color = undefined;
  }
  return [...types].sort();
}
