// ComfyUI frontend extensions of custom node packs (their WEB_DIRECTORY scripts, listed by GET
// /extensions), loaded where they only use the surface this canvas provides:
//   import { app } from "../../scripts/app.js"   → this canvas's App (the page's import map points
//   import { api } from "../../scripts/api.js"     these two at /src/comfy_app.js and /src/comfy_api.js)
//   app.registerExtension({ name, init, setup, beforeRegisterNodeDef, nodeCreated })
//   api.addEventListener(type, fn)  (fn gets a CustomEvent whose detail is the message's data)
// A script that fails to import (it needs another ComfyUI module) or a hook that throws is logged
// and skipped; the canvas and the other extensions go on.

export class Extensions {
  constructor(app) {
    this.app = app;
    this.list = [];        // registered extension objects, in registration order
    this.failed = [];      // {url, error} of scripts that did not load
    this.pending = [];     // promises of async beforeRegisterNodeDef hooks
  }

  register(extension) {
    if (!extension || typeof extension.name !== "string" || !extension.name) {
      throw new Error("registerExtension: an extension needs a name");
    }
    if (this.list.some((e) => e.name === extension.name)) {
      throw new Error(`registerExtension: an extension named ${extension.name} is already registered`);
    }
    this.list.push(extension);
  }

  /** Import every script GET /extensions lists (each on its own), then run the init hooks. */
  async load() {
    let urls = [];
    try {
      urls = await this.app.api.json("/extensions");
    } catch (error) {
      console.warn("nodegraph: cannot list the extensions:", error);
      return;
    }
    await Promise.all((urls || []).map(async (url) => {
      try {
        await import(this.app.api.fileUrl(url));
      } catch (error) {
        this.failed.push({ url, error: String(error) });
        console.warn(`nodegraph: extension ${url} did not load (it may need a part of ComfyUI's frontend this canvas does not have):`, error);
      }
    }));
    await this.invoke("init", this.app);
  }

  /** Call `hook` on every extension that has it, one after the other; a failing one is logged. */
  async invoke(hook, ...args) {
    for (const extension of this.list) {
      if (typeof extension[hook] !== "function") continue;
      try {
        await extension[hook](...args);
      } catch (error) {
        console.warn(`nodegraph: extension ${extension.name}: ${hook} failed:`, error);
      }
    }
  }

  /** Call `hook` without waiting (node creation is synchronous); async hooks' promises are kept. */
  invokeNow(hook, ...args) {
    for (const extension of this.list) {
      if (typeof extension[hook] !== "function") continue;
      try {
        const out = extension[hook](...args);
        if (out && typeof out.then === "function") {
          this.pending.push(out.catch((error) => console.warn(`nodegraph: extension ${extension.name}: ${hook} failed:`, error)));
        }
      } catch (error) {
        console.warn(`nodegraph: extension ${extension.name}: ${hook} failed:`, error);
      }
    }
  }

  /** Wait for the async hooks started by invokeNow. */
  async settle() {
    const pending = this.pending;
    this.pending = [];
    await Promise.all(pending);
  }
}
