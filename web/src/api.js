// The server's HTTP and WebSocket API (the same routes headless ComfyUI clients use).
// The auth token, when the page was opened with ?token=…, goes in an Authorization header on fetch
// and in the `token` query on the WebSocket and on image URLs (browsers send no headers there).

export const PREVIEW_IMAGE = 1;
export const TEXT_FRAME = 3;
export const PREVIEW_IMAGE_WITH_METADATA = 4;

// What this canvas understands, announced as the first WebSocket message (ComfyUI's handshake): image
// frames with their node id, live previews for every run, and nodegraph's own messages (node_finished).
// A client that announces nothing gets what ComfyUI sends by default: none of these.
export const CLIENT_FEATURES = {
  supports_preview_metadata: true,
  nodegraph_previews: true,
  nodegraph_events: true,
};

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  return Math.random().toString(16).slice(2) + Date.now().toString(16);
}

export class Api extends EventTarget {
  constructor(location = window.location) {
    super();
    const params = new URLSearchParams(location.search);
    this.token = params.get("token") || null;
    this.base = `${location.protocol}//${location.host}`;
    this.clientId = sessionStorage.getItem("nodegraph.clientId") || newClientId();
    sessionStorage.setItem("nodegraph.clientId", this.clientId);
    this.socket = null;
    this.connected = false;
    this._retry = 0;
    this._closed = false;
  }

  url(path, query = {}) {
    const u = new URL(path, this.base);
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) u.searchParams.set(k, v);
    return u.toString();
  }

  /** A URL the browser fetches by itself (<img>, links): the token goes in the query. */
  fileUrl(path, query = {}) {
    return this.url(path, this.token ? { ...query, token: this.token } : query);
  }

  viewUrl(image, extra = {}) {
    return this.fileUrl("/view", { filename: image.filename, subfolder: image.subfolder || "",
                                   type: image.type || "output", ...extra });
  }

  async fetchApi(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (this.token) headers.set("Authorization", `Bearer ${this.token}`);
    let body = options.body;
    if (options.json !== undefined) {
      headers.set("Content-Type", "application/json");
      body = JSON.stringify(options.json);
    }
    return fetch(this.url(path, options.query || {}), { method: options.method || "GET", headers, body });
  }

  async json(path, options = {}) {
    const response = await this.fetchApi(path, options);
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = text; }
    if (!response.ok) {
      const message = body && body.error ? (body.error.message || body.error.type) : `${response.status}`;
      throw new ApiError(response.status, body, `${path}: ${message}`);
    }
    return body;
  }

  objectInfo() { return this.json("/object_info"); }
  queue() { return this.json("/queue"); }
  /** GET /history (ComfyUI's); includeCancelled adds the jobs deleted from the queue before they ran. */
  history(maxItems = 50, { includeCancelled = false } = {}) {
    return this.json("/history", { query: { max_items: maxItems, include_cancelled: includeCancelled ? 1 : undefined } });
  }
  historyItem(promptId) { return this.json(`/history/${encodeURIComponent(promptId)}`); }
  interrupt() { return this.json("/interrupt", { method: "POST", json: {} }); }
  deleteQueued(ids) { return this.json("/queue", { method: "POST", json: { delete: ids } }); }
  listWorkflows() { return this.json("/workflows"); }
  workflow(name) { return this.json(`/workflows/${encodeURIComponent(name)}`); }

  /** POST /prompt. Resolves with the server's answer; a 400 rejects with ApiError (body has node_errors).
   *  `workflowName` (the file the workflow was opened from) goes in extra_data.workflow_name: the
   *  server keeps it in the run's history record. */
  queuePrompt(prompt, workflow, workflowName = null) {
    const extra_data = { extra_pnginfo: { workflow } };
    if (workflowName) extra_data.workflow_name = workflowName;
    return this.json("/prompt", { method: "POST", json: { prompt, client_id: this.clientId, extra_data } });
  }

  async uploadImage(file, { overwrite = false, subfolder = "" } = {}) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", "input");
    if (subfolder) form.append("subfolder", subfolder);
    if (overwrite) form.append("overwrite", "true");
    return this.json("/upload/image", { method: "POST", body: form });
  }

  // -- WebSocket ---------------------------------------------------------------------------------

  connect() {
    this._closed = false;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({ clientId: this.clientId });
    if (this.token) query.set("token", this.token);
    const socket = new WebSocket(`${scheme}//${location.host}/ws?${query}`);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "feature_flags", data: CLIENT_FEATURES }));
      this._retry = 0;
      this.connected = true;
      this.emit("connection", { connected: true });
    });
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.connected = false;
      this.emit("connection", { connected: false });
      if (!this._closed) {
        const delay = Math.min(5000, 250 * 2 ** this._retry++);
        setTimeout(() => { if (!this._closed) this.connect(); }, delay);
      }
    });
    socket.addEventListener("message", (event) => this._onMessage(event.data));
  }

  close() {
    this._closed = true;
    if (this.socket) this.socket.close();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _onMessage(data) {
    if (data instanceof ArrayBuffer) {
      this._onBinary(data);
      return;
    }
    let message;
    try { message = JSON.parse(data); } catch { return; }
    if (!message || typeof message.type !== "string") return;
    this.emit(message.type, message.data || {});
    this.emit("message", message);
  }

  _onBinary(buffer) {
    const view = new DataView(buffer);
    if (buffer.byteLength < 8) return;
    const event = view.getUint32(0);
    if (event === PREVIEW_IMAGE) {
      const format = view.getUint32(4);
      const blob = new Blob([buffer.slice(8)], { type: format === 2 ? "image/png" : "image/jpeg" });
      this.emit("b_preview", { blob, nodeId: null });
    } else if (event === PREVIEW_IMAGE_WITH_METADATA) {
      const length = view.getUint32(4);
      let meta = {};
      try { meta = JSON.parse(new TextDecoder().decode(buffer.slice(8, 8 + length))); } catch { /* bad frame */ }
      const blob = new Blob([buffer.slice(8 + length)], { type: meta.image_type || "image/jpeg" });
      this.emit("b_preview", { blob, nodeId: meta.display_node_id || meta.node_id || null });
    } else if (event === TEXT_FRAME) {
      const length = view.getUint32(4);
      const nodeId = new TextDecoder().decode(buffer.slice(8, 8 + length));
      const text = new TextDecoder().decode(buffer.slice(8 + length));
      this.emit("b_text", { nodeId, text });
    }
  }
}
