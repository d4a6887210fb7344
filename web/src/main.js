// Entry point: start the canvas application once litegraph (a classic script) has loaded.
import { App } from "./app.js";

const app = new App();
window.app = app;
app.start().catch((error) => {
  document.body.dataset.ready = "error";
  console.warn("nodegraph: the canvas could not start:", error);
});
