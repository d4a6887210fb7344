// ComfyUI frontend extensions of custom node packs (their WEB_DIRECTORY scripts, listed by GET
// /extensions), loaded where they only use the surface this canvas provides:
//   import { app } from "../../scripts/app.js"   → this canvas's App (the page's import map points
//   import { api } from "../../scripts/api.js"     these two at /src/comfy_app.js and /src/comfy_api.js)
//   app.registerExtension({ name, init, setup, beforeRegisterNodeDef, nodeCreated })
//   api.addEventListener(type, fn)  (fn gets a CustomEvent whose detail is the message's data)
//   window.comfyAPI.app.app, window.comfyAPI.api.api  (the same two, as newer extensions read them)
//   app.ui.settings: getSettingValue / setSettingValue / addSetting, kept in this page's localStorage;
//     an extension's `settings: [{id, defaultValue}]` gives the defaults (there is no settings dialog)
// A script is read before it is imported: one that reaches past this surface (see unsupportedUse:
// other parts of window.comfyAPI, app.ui beyond settings, app.extensionManager / app.menu, patches of
// litegraph's classes, which target ComfyUI's own litegraph) is not imported, since it could break
// the canvas's drawing. A script that fails to import (it needs another ComfyUI module) or a hook that
// throws is logged and skipped; the canvas and the other extensions go on.

const SETTINGS_KEY = "nodegraph.extensionSettings";

const BEYOND = [
  [/window\.comfyAPI\.(?!app\b|api\b)(\w+)/, (m) => `window.comfyAPI.${m[1]}`],
  [/\bapp\.ui\.(?!settings\b)(\w+)/, (m) => `app.ui.${m[1]}`],
  [/\bapp\.(extensionManager|menu|dragOverNode|clipspace)\b/, (m) => `app.${m[1]}`],
  [/\b(LGraphCanvas|LGraphNode|LGraph|LiteGraph)\.prototype\.(\w+)\s*=(?!=)/, (m) => `a patch of ${m[1]}.prototype.${m[2]}`],
  [/\b(LGraphCanvas|LiteGraph)\.(\w+)\s*=(?!=)/, (m) => `a patch of ${m[1]}.${m[2]}`],
];

// litegraph declares these canvas callbacks as null; extensions chain them as functions (call the old one)
const CANVAS_CALLBACKS = ["onDrawBackground", "onDrawForeground", "onDrawOverlay", "onNodeMoved",
  "onSelectionChange", "onConnectingChange", "onBeforeChange", "onAfterChange"];

/** What a script's source uses beyond the surface this canvas provides (null: nothing found). */
export function unsupportedUse(source) {
  for (const [pattern, name] of BEYOND) {
    const match = pattern.exec(source);
    if (match) return name(match);
  }
  return null;
}

/** ComfyUI's app.ui.settings, as far as extensions read and write their own values. */
export class ExtensionSettings {
  constructor() {
    this.defaults = new Map();
    try { this.values = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {}; } catch { this.values = {}; }
  }

  addSetting(setting) {
    if (setting && typeof setting.id === "string") this.defaults.set(setting.id, setting.defaultValue);
  }

  getSettingValue(id, fallback = undefined) {
    if (Object.prototype.hasOwnProperty.call(this.values, id)) return this.values[id];
    return this.defaults.has(id) ? this.defaults.get(id) : fallback;
  }

  setSettingValue(id, value) {
    this.values[id] = value;
    try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(this.values)); } catch { /* storage full or off */ }
  }
}

export class Extensions {
  constructor(app) {
    this.app = app;
    this.settings = new ExtensionSettings();
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
    for (const setting of Array.isArray(extension.settings) ? extension.settings : []) this.settings.addSetting(setting);
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
    if (!urls || !urls.length) return;
    for (const name of CANVAS_CALLBACKS) if (this.app.canvas && this.app.canvas[name] === null) this.app.canvas[name] = function () {};
    const comfyAPI = (window.comfyAPI = window.comfyAPI || {});
    comfyAPI.app = { app: this.app };
    comfyAPI.api = { api: this.app.api };
    await Promise.all((urls || []).map(async (url) => {
      try {
        const response = await this.app.api.fetchApi(url);
        if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
        const beyond = unsupportedUse(await response.text());
        if (beyond) {
          this.failed.push({ url, error: `uses ${beyond}, which this canvas does not provide` });
          console.warn(`nodegraph: extension ${url} not loaded: it uses ${beyond}, which this canvas does not provide`);
          return;
        }
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
