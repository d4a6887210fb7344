// The canvas application: one object holding the API client, the litegraph graph and canvas, and
// what the current run shows. Panels and node classes call back into it; tests read it as window.app.

import { Api, ApiError } from "./api.js";
import { askText } from "./dialogs.js";
import { Extensions } from "./extensions.js";
import { Gallery } from "./gallery.js";
import { LOOP_CLASSES, LoopBodies } from "./loopbody.js";
import { showHelp } from "./help.js";
import { MODE_BYPASS, MODE_MUTED, ensureImageRoom, registerNodes } from "./nodes.js";
import { createAudio, createVideo, isVideoFile } from "./media.js";
import { buildPalette, fillWorkflowMenu, refreshSidePanel, setOverall, showErrors, toast } from "./panels.js";
import { workflowFromPng } from "./png.js";
import { SearchBox } from "./search.js";
import { installTypeRules } from "./types.js";
import { RunCounter } from "./runcount.js";
import { saveFileName, workflowNameFromFile } from "./runs.js";
import { GraphHistory } from "./undo.js";
import { applyControls } from "./widgets.js";
import { graphToPrompt, isApiWorkflow, isUiWorkflow, loadWorkflow, serializeWorkflow } from "./workflow.js";

const STORAGE_KEY = "nodegraph.workflow";
const NAME_KEY = "nodegraph.workflowName";

function download(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export class App {
  constructor() {
    this.api = new Api();
    this.objectInfo = {};
    this.states = new Map();     // node id → {progress, images, preview, text, error}
    this.runs = new Map();       // prompt id → {counter: RunCounter, workflow, name}
    this.stepProgress = new Map();   // running node id → its step progress 0..1 (the overall bar)
    this.activePrompt = null;
    this.runningNodeId = null;
    this.events = [];            // the WS messages of this page (tests and debugging read them)
    this.lastPrompt = null;      // the last body sent to POST /prompt
    this.lastRefusal = null;
    this.workflowName = null;    // the file the workflow was opened from or saved as (sent with each prompt)
    this.document = { name: null };   // what undo steps of one workflow share: its name
    this._saved = null;
    this.undo = null;            // GraphHistory, once the graph exists
    this.loops = new LoopBodies(this);   // the loop body being edited as a graph, if any
    this.gallery = null;
    this.extensions = new Extensions(this);   // the custom node packs' frontend extensions
    this.ui = { settings: this.extensions.settings };   // ComfyUI's app.ui.settings, for them
  }

  /** ComfyUI's app.registerExtension, for the packs' frontend extensions (extensions.js). */
  registerExtension(extension) {
    this.extensions.register(extension);
  }

  // -- start ---------------------------------------------------------------------------------------

  async start() {
    LiteGraph.dialog_close_on_mouse_leave = false;
    LiteGraph.release_link_on_empty_shows_menu = false;
    LiteGraph.catch_exceptions = true;
    this.canvasEl = document.getElementById("graph-canvas");
    this.graph = new LGraph();
    this.canvas = new LGraphCanvas(this.canvasEl, this.graph);
    this.canvas.allow_searchbox = true;
    this.canvas.show_info = false;
    this.canvas.render_canvas_border = false;
    this.search = new SearchBox(this);
    this.canvas.showSearchBox = (event) => this.search.open(event);
    this.canvas.onDropItem = (event) => this.onDrop(event);
    // a loop body open on the canvas: our bar instead of litegraph's subgraph panels (which would add
    // inputs to the loop node), and its "Close subgraph" menu entry goes back through us
    this.canvas.drawSubgraphPanel = () => {};
    this.canvas.closeSubgraph = () => this.loops.close();
    this.resize();
    window.addEventListener("resize", () => this.resize());

    try {
      this.objectInfo = await this.api.objectInfo();
    } catch (e) {
      toast(e instanceof ApiError && e.status === 401
        ? "This server needs its token: open the page as /?token=…" : `cannot load /object_info: ${e.message}`, { error: true, ms: 600000 });
      throw e;
    }
    await this.extensions.load();      // before the node classes: beforeRegisterNodeDef may patch them
    const types = registerNodes(this, this.objectInfo);
    await this.extensions.settle();
    installTypeRules(LiteGraph, LGraphCanvas, this.canvas, types);
    buildPalette(this);
    this.gallery = new Gallery(this);
    this.bindToolbar();
    this.bindApiEvents();
    this.bindTooltips();
    this.api.connect();
    this.restore();
    this.installHistory();
    this.graph.start();
    this.api.listWorkflows().then((items) => fillWorkflowMenu(this, items)).catch(() => fillWorkflowMenu(this, []));
    setInterval(() => { this.undo.check(); this.persist(); }, 1000);
    window.addEventListener("beforeunload", () => this.persist());
    await this.extensions.invoke("setup", this);
    this.ready = true;
    document.body.dataset.ready = "1";
  }

  resize() {
    const wrap = document.getElementById("canvas-wrap");
    this.canvas.resize(wrap.clientWidth, wrap.clientHeight);
  }

  // -- graph helpers -------------------------------------------------------------------------------

  nodeState(id) {
    const key = String(id);
    if (!this.states.has(key)) this.states.set(key, {});
    return this.states.get(key);
  }

  node(id) {
    return this.graph.getNodeById(Number(id)) || this.graph._nodes.find((n) => String(n.id) === String(id)) || null;
  }

  /** The graph the canvas shows: the workflow, or the loop body being edited. */
  get shownGraph() {
    return this.canvas.graph || this.graph;
  }

  addNode(type, pos) {
    const node = LiteGraph.createNode(type);
    if (!node) return null;
    if (!pos) {
      const c = this.canvas.ds;
      pos = [(-c.offset[0] + this.canvasEl.width / 2 / c.scale) - node.size[0] / 2,
             (-c.offset[1] + this.canvasEl.height / 2 / c.scale) - node.size[1] / 2];
    }
    node.pos = [pos[0], pos[1]];
    this.shownGraph.add(node);
    this.canvas.selectNode(node);
    this.onGraphEdited();
    return node;
  }

  /** Zoom and pan so that every node (with its title and what is drawn below it) is in view. */
  fitView(margin = 40) {
    const nodes = this.shownGraph._nodes;
    if (!nodes.length) return;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]);
      y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
      x1 = Math.max(x1, n.pos[0] + n.size[0]);
      y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const ds = this.canvas.ds;
    const w = this.canvasEl.width, h = this.canvasEl.height;
    const scale = Math.min(1.25, Math.max(0.2, Math.min((w - 2 * margin) / (x1 - x0), (h - 2 * margin) / (y1 - y0))));
    ds.scale = scale;
    ds.offset = [(w / scale - (x1 - x0)) / 2 - x0, (h / scale - (y1 - y0)) / 2 - y0];
    this.canvas.setDirty(true, true);
  }

  focusNode(id) {
    this.loops.close();
    const node = this.node(id);
    if (!node) return;
    this.canvas.centerOnNode(node);
    this.canvas.selectNode(node);
    this.canvas.setDirty(true, true);
  }

  toggleMode(node, mode) {
    node.mode = node.mode === mode ? LiteGraph.ALWAYS : mode;
    this.onGraphEdited();
  }

  widgetToInput(node, widget) {
    if (node.findInputSlot(widget.inputName) >= 0) return;
    node.addInput(widget.inputName, widget.spec.type, { widget: { name: widget.inputName } });
    this.onGraphEdited();
  }

  refused(originNode, output, targetNode, input) {
    this.lastRefusal = { from: output.type, to: input.type, origin: originNode.id, target: targetNode.id, input: input.name };
    toast(`Cannot connect ${output.type} to ${input.type} (input "${input.name}" of ${targetNode.title})`, { error: true });
  }

  onGraphEdited() {
    this.canvas.setDirty(true, true);
    if (this.undo) this.undo.schedule();
  }

  /** A node grew to show an image or text: no edit of the user's, so no undo step of its own. */
  onNodeGrown() {
    this.canvas.setDirty(true, true);
    if (this.undo) this.undo.absorb();
  }

  // -- undo / redo ---------------------------------------------------------------------------------

  /** Snapshots on every change litegraph reports, and after each mouse or key release. */
  installHistory() {
    this.undo = new GraphHistory(this);
    const graph = this.graph;
    const schedule = () => this.undo.schedule();
    const chain = (object, name) => {
      const before = object[name];
      object[name] = function (...args) {
        const result = before ? before.apply(this, args) : undefined;
        schedule();
        return result;
      };
    };
    for (const hook of ["onNodeAdded", "onNodeRemoved", "onConnectionChange", "onAfterChange"]) chain(graph, hook);
    chain(this.canvas, "onNodeMoved");
    for (const type of ["pointerup", "mouseup", "keyup"]) document.addEventListener(type, schedule, true);
    this.undo.onChange((history) => {
      document.getElementById("btn-undo").disabled = !history.stack.canUndo;
      document.getElementById("btn-redo").disabled = !history.stack.canRedo;
    });
    this.undo.reset();
  }

  /** Put a snapshot's graph back (undo/redo): nodes keep their ids, so what runs showed stays. */
  restoreSnapshot(workflow, document) {
    this.canvas.deselectAllNodes();
    const ds = { scale: this.canvas.ds.scale, offset: [...this.canvas.ds.offset] };
    const body = this.loops.editing ? this.loops.editing.node.id : null;   // reopened on the restored node
    this.loops.close({ write: false });
    loadWorkflow(this.graph, null, workflow);
    const loop = body === null ? null : this.node(body);
    if (loop && LOOP_CLASSES.has(loop.type)) this.loops.open(loop);
    this.canvas.ds.scale = ds.scale;
    this.canvas.ds.offset = ds.offset;
    this.document = document;
    this.storeName();
    this.canvas.setDirty(true, true);
    this.persist(true);
  }

  undoEdit() {
    if (!this.undo.undo()) toast("Nothing to undo");
  }

  redoEdit() {
    if (!this.undo.redo()) toast("Nothing to redo");
  }

  clearErrors() {
    for (const state of this.states.values()) delete state.error;
    showErrors(this, []);
    this.canvas.setDirty(true, true);
  }

  clearRunState() {
    for (const state of this.states.values()) {
      delete state.error; delete state.progress; delete state.preview;
    }
    this.runningNodeId = null;
    showErrors(this, []);
  }

  // -- workflows -----------------------------------------------------------------------------------

  /** The workflow as a canvas (UI) file; a loop body being edited is written into its node first. */
  workflow() {
    this.loops.sync();
    const view = this.loops.editing ? { ds: this.loops.editing.rootDs } : this.canvas;
    return serializeWorkflow(this.graph, view);
  }

  /** Show a workflow; `name` is its workflow name (history shows it), none for an unnamed one. */
  load(data, source = "workflow", { name = null } = {}) {
    this.loops.close({ write: false });
    this.states.clear();
    this.clearRunState();
    this.setWorkflowName(name);
    if (loadWorkflow(this.graph, this.canvas, data)) this.fitView();
    this.canvas.setDirty(true, true);
    this.persist(true);
    if (this.undo) this.undo.check();   // loading is a step too: undo brings the previous graph back
    toast(`Loaded ${source}`);
  }

  /** A new document (a workflow loaded, or New): its name, none for an unnamed one. */
  setWorkflowName(name) {
    this.document = { name: name || null };
    this.storeName();
  }

  /** The same document under another name (saved as): every undo step of it takes the new name. */
  renameWorkflow(name) {
    this.document.name = name || null;
    this.storeName();
  }

  storeName() {
    this.workflowName = this.document.name;
    try {
      if (this.workflowName) localStorage.setItem(NAME_KEY, this.workflowName);
      else localStorage.removeItem(NAME_KEY);
    } catch (e) {
      // storage unavailable: the name lasts for this page only
    }
  }

  persist(force = false) {
    if (!this.ready && !force) return;
    try {
      const text = JSON.stringify(this.workflow());
      if (text !== this._saved) {
        localStorage.setItem(STORAGE_KEY, text);
        this._saved = text;
      }
    } catch (e) {
      // storage full or unavailable: the page keeps working
    }
  }

  restore() {
    const text = localStorage.getItem(STORAGE_KEY);
    if (text) {
      try {
        if (loadWorkflow(this.graph, this.canvas, JSON.parse(text))) this.fitView();
        this._saved = text;
        this.document = { name: localStorage.getItem(NAME_KEY) || null };
        this.workflowName = this.document.name;
        return;
      } catch (e) {
        toast(`could not restore the last workflow: ${e.message}`, { error: true });
      }
    }
    this.loadDefault();
  }

  loadDefault() {
    this.graph.clear();
    const make = (type, x, y) => {
      const n = LiteGraph.createNode(type);
      if (!n) return null;
      n.pos = [x, y];
      this.graph.add(n);
      return n;
    };
    const a = make("EmptyImage", 40, 80);
    const b = make("ImageBlur", 340, 80);
    const c = make("SaveImage", 640, 80);
    if (a && b && c) {
      a.connect(0, b, 0);
      b.connect(0, c, 0);
    }
  }

  async openReadyWorkflow(name) {
    document.getElementById("file-menu").classList.remove("open");
    try {
      this.load(await this.api.workflow(name), name, { name: workflowNameFromFile(name) });
    } catch (e) {
      toast(`cannot open ${name}: ${e.message}`, { error: true });
    }
  }

  async openFile(file) {
    try {
      let data;
      if (file.type === "image/png" || /\.png$/i.test(file.name)) {
        data = await workflowFromPng(await file.arrayBuffer());
        if (!data) throw new Error("this PNG carries no workflow");
      } else {
        data = JSON.parse(await file.text());
      }
      if (!isUiWorkflow(data) && !isApiWorkflow(data)) throw new Error("not a workflow");
      this.load(data, file.name, { name: workflowNameFromFile(file.name) });
    } catch (e) {
      toast(`cannot open ${file.name}: ${e.message}`, { error: true });
    }
  }

  onDrop(event) {
    if (event.clientX !== undefined && event.target === this.canvasEl) {
      const [x, y] = this.canvas.convertEventToCanvasOffset(event);
      const over = this.shownGraph.getNodeOnPos(x, y);
      if (over && over.acceptsUpload && over.acceptsUpload()) return true; // the node took the file
    }
    const files = event.dataTransfer ? [...event.dataTransfer.files] : [];
    const file = files.find((f) => /\.(json|png)$/i.test(f.name) || f.type === "application/json" || f.type === "image/png");
    if (!file) return false;
    this.openFile(file);
    return true;
  }

  /** Save under the current name (the file it was opened from or last saved as); ask when there is none. */
  saveWorkflow() {
    if (!this.workflowName) return this.saveWorkflowAs();
    return this.saveAs(saveFileName(this.workflowName));
  }

  /** Ask for a file name (the current one offered), then save under it and remember it. */
  async saveWorkflowAs() {
    const current = this.workflowName ? saveFileName(this.workflowName) : "workflow.json";
    const typed = await askText({ id: "save-as", title: "Save workflow as", label: "File name",
                                  value: current || "workflow.json", okText: "Save",
                                  hint: "Saved as a .json file in your browser's download folder." });
    if (typed === null) return null;
    const fileName = saveFileName(typed);
    if (!fileName) {
      toast(`"${typed}" is no usable file name`, { error: true });
      return null;
    }
    return this.saveAs(fileName);
  }

  saveAs(fileName) {
    this.renameWorkflow(workflowNameFromFile(fileName));
    download(fileName, JSON.stringify(this.workflow(), null, 2));
    toast(`Saved ${fileName}`);
    return fileName;
  }

  /** The API prompt the Queue button would send now. */
  lastPromptPreview() {
    this.loops.sync();
    return graphToPrompt(this.graph);
  }

  exportApi() {
    this.loops.sync();
    download("workflow_api.json", JSON.stringify(graphToPrompt(this.graph), null, 2));
  }

  async reopen(promptId, entry) {
    const workflow = entry.prompt && entry.prompt[3] && entry.prompt[3].extra_pnginfo && entry.prompt[3].extra_pnginfo.workflow;
    const name = (entry.nodegraph && entry.nodegraph.workflow_name) || null;
    this.load(workflow || entry.prompt[2], `run ${promptId}`, { name });
    for (const [nodeId, output] of Object.entries(entry.outputs || {})) this.showOutput(nodeId, output);
    const messages = (entry.status && entry.status.messages) || [];
    for (const [type, data] of messages) if (type === "execution_error") this.showExecutionError(data);
  }

  // -- uploads -------------------------------------------------------------------------------------

  pickUpload(node, widget) {
    const input = document.getElementById("upload-input");
    input.value = "";
    input.onchange = () => { if (input.files[0]) this.uploadFile(node, widget, input.files[0]); };
    input.click();
  }

  async uploadFile(node, widget, file) {
    try {
      const result = await this.api.uploadImage(file);
      const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
      if (!widget.options.values.includes(name)) widget.options.values.push(name);
      widget.value = name;
      this.showImages(node.id, [{ filename: result.name, subfolder: result.subfolder || "", type: result.type || "input" }]);
      toast(`Uploaded ${name}`);
      this.onGraphEdited();
    } catch (e) {
      toast(`upload failed: ${e.message}`, { error: true });
    }
  }

  // -- running -------------------------------------------------------------------------------------

  async queuePrompt() {
    const workflow = this.workflow();
    const prompt = graphToPrompt(this.graph);
    this.clearErrors();   // not the running state: an earlier prompt may still be running
    this.lastPrompt = { prompt, workflow, workflowName: this.workflowName };
    let answer;
    try {
      answer = await this.api.queuePrompt(prompt, workflow, this.workflowName);
    } catch (e) {
      this.showPromptError(e);
      return null;
    }
    // its first messages may have come before this answer: they started its record already
    const run = this.run(answer.prompt_id);
    run.counter.expect(Object.keys(prompt));
    Object.assign(run, { workflow, name: this.workflowName });
    this.updateOverall();
    if (answer.node_errors && Object.keys(answer.node_errors).length) this.showNodeErrors(answer.node_errors);
    for (const node of this.graph._nodes) applyControls(node);
    this.canvas.setDirty(true, true);
    refreshSidePanel(this);
    return answer;
  }

  showPromptError(e) {
    const body = e instanceof ApiError ? e.body : null;
    if (body && body.node_errors && Object.keys(body.node_errors).length) {
      this.showNodeErrors(body.node_errors);
      toast(`The workflow is not valid: ${body.error ? body.error.message : ""}`, { error: true });
    } else {
      const msg = body && body.error ? `${body.error.message}${body.error.details ? ": " + body.error.details : ""}` : e.message;
      showErrors(this, [{ nodeId: null, text: msg }]);
      toast(`Not queued: ${msg}`, { error: true });
    }
  }

  showNodeErrors(nodeErrors) {
    const items = [];
    for (const [id, info] of Object.entries(nodeErrors)) {
      const text = (info.errors || []).map((err) => `${err.message}${err.details ? ": " + err.details : ""}`).join("\n");
      this.nodeState(id).error = text;
      const node = this.node(id);
      items.push({ nodeId: id, title: node ? node.title : info.class_type, text });
    }
    showErrors(this, items);
    this.canvas.setDirty(true, true);
  }

  showExecutionError(data) {
    if (data.node_id == null) {
      showErrors(this, [{ nodeId: null, text: `${data.exception_type}: ${data.exception_message}` }]);
      return;
    }
    const text = `${data.exception_type}: ${String(data.exception_message || "").trim()}`;
    this.nodeState(data.node_id).error = text;
    const node = this.node(data.node_id);
    showErrors(this, [{ nodeId: data.node_id, title: node ? node.title : data.node_type, text }]);
    this.canvas.setDirty(true, true);
  }

  async interrupt() {
    try {
      await this.api.interrupt();
    } catch (e) {
      toast(`interrupt failed: ${e.message}`, { error: true });
    }
  }

  async cancel(promptId) {
    try {
      await this.api.deleteQueued([promptId]);
      toast(`Cancelled ${promptId}`);
    } catch (e) {
      toast(`cancel failed: ${e.message}`, { error: true });
    }
    refreshSidePanel(this);
  }

  showImages(nodeId, images) {
    const state = this.nodeState(nodeId);
    state.imageIndex = 0;
    state.imageUrls = images.map((img) => this.api.viewUrl(img));
    state.images = state.imageUrls.map((url) => {
      const image = new Image();
      image.onload = () => {
        const node = this.node(nodeId);
        if (node) ensureImageRoom(node, 220);
        this.onNodeGrown();
      };
      image.src = url;
      return image;
    });
  }

  /** A video output (SaveVideo, SaveWEBM): the first file plays muted and looping on the node. */
  showVideo(nodeId, files) {
    const state = this.nodeState(nodeId);
    if (state.video) state.video.pause();
    state.videoUrl = this.api.viewUrl(files[0]);
    state.video = createVideo(state.videoUrl, () => {
      const node = this.node(nodeId);
      if (node && !state.videoSized) {
        state.videoSized = true;
        ensureImageRoom(node, 220);
        this.onNodeGrown();
      }
      this.canvas.setDirty(true, false);
    });
    state.videoSized = false;
  }

  /** An audio output (SaveAudio…, PreviewAudio): a player bar on the node for the first file. */
  showAudio(nodeId, files) {
    const state = this.nodeState(nodeId);
    if (state.audio) state.audio.pause();
    state.audioName = files[0].filename;
    state.audioUrl = this.api.viewUrl(files[0]);
    state.audio = createAudio(state.audioUrl, () => this.canvas.setDirty(true, false));
    const node = this.node(nodeId);
    if (node) ensureImageRoom(node, 50);
  }

  showOutput(nodeId, output) {
    if (!output) return;
    if (Array.isArray(output.images) && output.images.length) {
      const videos = output.images.filter((f) => isVideoFile(f.filename));
      const pictures = output.images.filter((f) => !isVideoFile(f.filename));
      if (videos.length) this.showVideo(nodeId, videos);
      if (pictures.length) this.showImages(nodeId, pictures);
    }
    if (Array.isArray(output.audio) && output.audio.length) this.showAudio(nodeId, output.audio);
    if (Array.isArray(output.text)) {
      this.nodeState(nodeId).text = output.text.join("\n");
      const node = this.node(nodeId);
      if (node && node.size[1] < 120) node.setSize([node.size[0], 120]);
    }
    this.onNodeGrown();
  }

  /** The run record of a prompt (one queued elsewhere, e.g. before a reload, gets one on its first message). */
  run(promptId) {
    if (!promptId) return null;
    if (!this.runs.has(promptId)) this.runs.set(promptId, { counter: new RunCounter(), workflow: null, name: null });
    return this.runs.get(promptId);
  }

  updateOverall() {
    const run = this.runs.get(this.activePrompt);
    if (!run) return;
    const counter = run.counter;
    let steps = 0;
    for (const id of counter.running) steps += this.stepProgress.get(id) || 0;
    setOverall(counter.fraction(steps), counter.text(steps));
    this.showCount(counter);
  }

  /** done/total in the progress bar's tooltip and data-count, kept after the run ("done" shows then). */
  showCount(counter) {
    const box = document.getElementById("overall");
    box.dataset.count = `${counter.done.size}/${counter.total}`;
    box.title = `${counter.done.size} of ${counter.total} nodes done (loop rounds and other expansions included)`;
  }

  endRun(promptId, status) {
    const run = this.runs.get(promptId);
    if (!run) return;
    run.counter.ended(status);
    if (promptId === this.activePrompt || !this.activePrompt) this.showCount(run.counter);
  }

  /** Load the workflow a run of this page was queued with (the gallery's "load its workflow"). */
  async loadRunWorkflow(promptId) {
    try {
      const entry = (await this.api.historyItem(promptId))[promptId];
      if (entry) return this.reopen(promptId, entry);
    } catch (e) {
      // not in the history (yet): the workflow this page sent
    }
    const run = this.runs.get(promptId);
    if (run && run.workflow) this.load(run.workflow, `run ${promptId}`, { name: run.name });
    else toast(`the workflow of run ${promptId} is not known`, { error: true });
  }

  bindApiEvents() {
    const api = this.api;
    const on = (type, fn) => api.addEventListener(type, (e) => fn(e.detail));
    on("message", (m) => { this.events.push(m); if (this.events.length > 5000) this.events.shift(); });
    on("connection", ({ connected }) => {
      const dot = document.getElementById("conn");
      dot.className = connected ? "conn-on" : "conn-off";
      dot.title = connected ? "connected" : "disconnected — retrying";
    });
    on("status", (data) => {
      const remaining = data.status && data.status.exec_info ? data.status.exec_info.queue_remaining : 0;
      document.getElementById("queue-size").textContent = `queue: ${remaining}`;
      refreshSidePanel(this);
    });
    on("execution_start", (data) => {
      this.activePrompt = data.prompt_id;
      this.run(data.prompt_id);
      this.stepProgress.clear();
      for (const state of this.states.values()) { delete state.progress; delete state.preview; delete state.error; }
      this.updateOverall();
    });
    on("execution_cached", (data) => {
      const run = this.run(data.prompt_id);
      if (run) run.counter.cached(data.nodes || []);
      this.updateOverall();
    });
    // the counter counts real node ids (`loop.0.r1.show`); the canvas shows them on their display node
    on("executing", (data) => {
      const run = this.run(data.prompt_id);
      if (data.node === null || data.node === undefined) {
        if (run && !run.counter.status) this.endRun(data.prompt_id, "success");
        if (data.prompt_id === this.activePrompt) {
          this.runningNodeId = null;
          const ok = run && run.counter.status === "success";
          if (ok) setOverall(1, "done");
          this.activePrompt = null;
        }
        refreshSidePanel(this);
      } else {
        if (run) run.counter.started(data.node);
        this.runningNodeId = String(data.display_node || data.node);
        this.updateOverall();
      }
      this.canvas.setDirty(true, true);
    });
    on("progress", (data) => {
      const id = String(data.node);
      const fraction = data.max ? data.value / data.max : 0;
      this.stepProgress.set(id, fraction);
      const shown = this.node(id) ? id : this.runningNodeId;   // an expanded node's progress: on its display node
      if (shown) this.nodeState(shown).progress = fraction;
      this.updateOverall();
      this.canvas.setDirty(true, false);
    });
    on("node_finished", (data) => {
      const run = this.run(data.prompt_id);
      if (run) run.counter.finished(data.node);
      this.stepProgress.delete(String(data.node));
      const state = this.nodeState(data.node);
      state.progress = 1;
      delete state.preview;
      this.updateOverall();
    });
    on("executed", (data) => {
      this.showOutput(data.display_node || data.node, data.output);
      if (data.output && Array.isArray(data.output.images)) {
        this.gallery.add(data.output.images, { promptId: data.prompt_id, nodeId: data.node });
      }
    });
    on("execution_error", (data) => {
      const run = this.runs.get(data.prompt_id);
      if (run) this.endRun(data.prompt_id, "error");
      this.showExecutionError(data);
      setOverall(0, "error");
      toast(`Node #${data.node_id} failed: ${data.exception_message}`, { error: true });
    });
    on("execution_interrupted", (data) => {
      const run = this.runs.get(data.prompt_id);
      if (run) this.endRun(data.prompt_id, "interrupted");
      this.runningNodeId = null;
      setOverall(0, "interrupted");
      toast("Interrupted");
      this.canvas.setDirty(true, true);
    });
    on("execution_success", (data) => {
      this.endRun(data.prompt_id, "success");
      setOverall(1, "done");
    });
    on("b_preview", ({ blob, nodeId }) => {
      const id = nodeId || this.runningNodeId;
      if (!id) return;
      const state = this.nodeState(id);
      const image = new Image();
      image.onload = () => {
        if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
        state.previewUrl = image.src;
        state.preview = image;
        state.previewCount = (state.previewCount || 0) + 1;
        const node = this.node(id);
        if (node) ensureImageRoom(node, 180);
        this.onNodeGrown();
      };
      image.src = URL.createObjectURL(blob);
    });
    on("b_text", ({ nodeId, text }) => { this.nodeState(nodeId).text = text; this.canvas.setDirty(true, false); });
  }

  // -- toolbar, keys, tooltips ---------------------------------------------------------------------

  bindToolbar() {
    const $ = (id) => document.getElementById(id);
    const menus = [...document.querySelectorAll("#toolbar .menu")];
    const closeMenus = () => menus.forEach((m) => m.classList.remove("open"));
    for (const menu of menus) {
      menu.querySelector(":scope > button").addEventListener("click", () => {
        const open = !menu.classList.contains("open");
        closeMenus();
        menu.classList.toggle("open", open);
      });
    }
    document.addEventListener("click", (e) => { if (!menus.some((m) => m.contains(e.target))) closeMenus(); });
    const item = (id, fn) => $(id).addEventListener("click", () => { closeMenus(); fn(); });
    item("btn-new", () => {
      this.loops.close({ write: false });
      this.graph.clear(); this.states.clear(); this.setWorkflowName(null); this.persist(true); this.undo.check();
    });
    item("btn-open", () => $("file-input").click());
    item("btn-save", () => this.saveWorkflow());
    item("btn-save-as", () => this.saveWorkflowAs());
    item("btn-export-api", () => this.exportApi());
    item("btn-undo", () => this.undoEdit());
    item("btn-redo", () => this.redoEdit());
    $("file-input").addEventListener("change", (e) => { if (e.target.files[0]) this.openFile(e.target.files[0]); e.target.value = ""; });
    $("btn-queue").addEventListener("click", () => this.queuePrompt());
    $("btn-interrupt").addEventListener("click", () => this.interrupt());
    $("btn-panel").addEventListener("click", () => {
      $("side-panel").hidden = !$("side-panel").hidden;
      this.resize();
      refreshSidePanel(this);
    });
    $("btn-help").addEventListener("click", () => showHelp());
    this.canvas.getExtraMenuOptions = () => [
      null,
      { content: "Undo (Ctrl+Z)", disabled: !this.undo.stack.canUndo, callback: () => this.undoEdit() },
      { content: "Redo (Ctrl+Shift+Z)", disabled: !this.undo.stack.canRedo, callback: () => this.redoEdit() },
    ];
    document.addEventListener("keydown", (e) => this.onKey(e));
    // Escape leaves a loop body; litegraph swallows Escape on the canvas, so it is caught before it
    document.addEventListener("keydown", (e) => {
      const t = e.target;
      if (e.key !== "Escape" || !this.loops.editing || (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA"))) return;
      if (document.querySelector(".overlay, .graphdialog, .litecontextmenu, #search")) return;
      e.preventDefault();
      this.loops.close();
    }, true);
    // drops anywhere on the page (not only over the canvas) open the file
    document.addEventListener("dragover", (e) => e.preventDefault());
    document.addEventListener("drop", (e) => {
      if (e.defaultPrevented) return;
      e.preventDefault();
      this.onDrop(e);
    });
  }

  /** The page's shortcuts (the help overlay lists them, help.js); litegraph handles its own on the canvas. */
  onKey(e) {
    const t = e.target;
    const inText = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
    const ctrl = e.ctrlKey || e.metaKey;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (ctrl && key === "Enter") { e.preventDefault(); this.queuePrompt(); return; }
    if (document.querySelector(".overlay")) return;          // a dialog is open: its keys only
    if (ctrl && key === "s") { e.preventDefault(); if (e.shiftKey) this.saveWorkflowAs(); else this.saveWorkflow(); return; }
    if (ctrl && key === "o") { e.preventDefault(); document.getElementById("file-input").click(); return; }
    if (inText) return;                                        // text fields keep their own undo and keys
    if (ctrl && !e.altKey && ((key === "z" && e.shiftKey) || (key === "y" && !e.shiftKey))) { e.preventDefault(); this.redoEdit(); }
    else if (ctrl && !e.altKey && key === "z") { e.preventDefault(); this.undoEdit(); }
    else if (ctrl && (key === "b" || key === "m")) {
      e.preventDefault();
      const mode = key === "b" ? MODE_BYPASS : MODE_MUTED;
      for (const node of Object.values(this.canvas.selected_nodes || {})) this.toggleMode(node, mode);
    } else if (!ctrl && !e.altKey && e.key === "?") { e.preventDefault(); showHelp(); }
    else if (!ctrl && !e.altKey && key === ".") { this.fitView(); }
    else if (!ctrl && !e.altKey && key === "g") { this.gallery.toggle(); }
  }

  bindTooltips() {
    this.canvasEl.addEventListener("mousemove", (e) => {
      const [x, y] = this.canvas.convertEventToCanvasOffset(e);
      const node = this.shownGraph.getNodeOnPos(x, y);
      let tip = "";
      if (node) {
        const lx = x - node.pos[0], ly = y - node.pos[1];
        const def = this.objectInfo[node.type] || {};
        const widget = (node.widgets || []).find((w) => w.last_y !== undefined && ly >= w.last_y && ly <= w.last_y + LiteGraph.NODE_WIDGET_HEIGHT);
        const slotIndex = Math.floor(ly / LiteGraph.NODE_SLOT_HEIGHT);
        if (widget && widget.tooltip) tip = widget.tooltip;
        else if (ly >= 0 && lx < node.size[0] / 2 && node.inputs && node.inputs[slotIndex] && node.inputs[slotIndex].tooltip) tip = node.inputs[slotIndex].tooltip;
        else if (ly >= 0 && lx >= node.size[0] / 2 && node.outputs && node.outputs[slotIndex] && node.outputs[slotIndex].tooltip) tip = node.outputs[slotIndex].tooltip;
        else tip = def.description || "";
        const err = this.nodeState(node.id).error;
        if (err) tip = `${err}\n\n${tip}`.trim();
      }
      if (this.canvasEl.title !== tip) this.canvasEl.title = tip;
    });
  }
}
