// The output gallery: every image the runs of this page made (saved and preview images, from the
// `executed` messages), newest first. A click opens an image in a viewer, from which it opens in a new
// tab at full size or its run's workflow is loaded back onto the canvas.

import { el, overlay } from "./dialogs.js";
import { isVideoFile } from "./media.js";

/** The thumbnail of a gallery item: a muted looping video for video files, else the image. */
function thumbnail(item, name) {
  if (isVideoFile(item.image.filename)) {
    return el("video", { src: item.url, muted: true, loop: true, autoplay: true, playsInline: true, title: name });
  }
  return el("img", { src: item.url, alt: name, loading: "lazy" });
}

export const GALLERY_LIMIT = 500;

export class Gallery {
  constructor(app) {
    this.app = app;
    this.items = [];                 // {url, image, promptId, nodeId, added}
    this.urls = new Set();
    this.panel = document.getElementById("gallery-panel");
    this.list = document.getElementById("gallery-list");
    this.button = document.getElementById("btn-gallery");
    this.button.addEventListener("click", () => this.toggle());
    this.render();
  }

  get open() { return !this.panel.hidden; }

  toggle(show = !this.open) {
    this.panel.hidden = !show;
    this.button.classList.toggle("active", show);
    this.app.resize();
  }

  /** Images of one `executed` message (records as /view takes them). */
  add(images, { promptId = null, nodeId = null } = {}) {
    let added = 0;
    for (const image of images || []) {
      if (!image || !image.filename) continue;
      const url = this.app.api.viewUrl(image);
      if (this.urls.has(url)) continue;
      this.urls.add(url);
      this.items.unshift({ url, image, promptId, nodeId: nodeId == null ? null : String(nodeId), added: Date.now() });
      added++;
    }
    while (this.items.length > GALLERY_LIMIT) this.urls.delete(this.items.pop().url);
    if (added) this.render();
  }

  render() {
    this.button.textContent = `Gallery (${this.items.length})`;
    this.list.innerHTML = "";
    if (!this.items.length) {
      this.list.appendChild(el("div", { className: "empty", textContent: "No images yet: the images your runs make appear here." }));
      return;
    }
    for (const item of this.items) {
      const name = item.image.subfolder ? `${item.image.subfolder}/${item.image.filename}` : item.image.filename;
      this.list.appendChild(el("button", {
        type: "button", className: `gallery-item gallery-${item.image.type || "output"}`,
        title: `${name} (node ${item.nodeId ?? "?"})`, dataset: { url: item.url, promptId: item.promptId || "" },
        onclick: () => this.view(item),
      }, thumbnail(item, name)));
    }
  }

  /** The viewer: the image as large as the window allows, with its file name and two actions. */
  view(item) {
    const name = item.image.subfolder ? `${item.image.subfolder}/${item.image.filename}` : item.image.filename;
    const content = el("div", { className: "viewer" },
      isVideoFile(item.image.filename)
        ? el("video", { className: "viewer-image", src: item.url, controls: true, loop: true, autoplay: true, muted: true })
        : el("img", { className: "viewer-image", src: item.url, alt: name }),
      el("div", { className: "viewer-bar" },
         el("span", { className: "viewer-name", textContent: `${name} · ${item.image.type || "output"}` }),
         el("a", { className: "viewer-open", href: item.url, target: "_blank", rel: "noopener", textContent: "Open image ↗" }),
         el("button", { type: "button", className: "viewer-load", textContent: "Load its workflow",
                        disabled: !item.promptId, onclick: () => { viewer.close(); this.app.loadRunWorkflow(item.promptId); } })));
    const viewer = overlay("gallery-viewer", content, { label: name });
    return viewer;
  }
}
