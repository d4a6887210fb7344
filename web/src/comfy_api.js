// What `import { api } from "../../scripts/api.js"` gives a pack's frontend extension on this canvas
// (the page's import map points ComfyUI's /scripts/api.js here): the canvas's API client, an
// EventTarget whose events are the server's WebSocket messages (detail: the message's data), with
// fetchApi(path, options) and clientId. See extensions.js for what is supported.
export const api = window.app.api;
export default api;
