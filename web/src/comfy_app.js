// What `import { app } from "../../scripts/app.js"` gives a pack's frontend extension on this canvas
// (the page's import map points ComfyUI's /scripts/app.js here): the canvas's App, which has
// registerExtension, graph, canvas and api. See extensions.js for what is supported.
export const app = window.app;
export default app;
