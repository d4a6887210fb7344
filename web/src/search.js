// The node search box (double-click on empty canvas): matches display names, class names and
// categories; Enter adds the highlighted node where you clicked.

export function rankNodes(info, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  const out = [];
  for (const [type, def] of Object.entries(info)) {
    const name = (def.display_name || type).toLowerCase();
    const hay = `${name} ${type.toLowerCase()} ${(def.category || "").toLowerCase()}`;
    if (!words.every((w) => hay.includes(w))) continue;
    let score = 0;
    if (words.length) {
      const q = words.join(" ");
      if (name === q || type.toLowerCase() === q) score -= 100;
      else if (name.startsWith(q) || type.toLowerCase().startsWith(q)) score -= 50;
      else if (name.includes(q)) score -= 20;
    }
    out.push({ type, def, score });
  }
  out.sort((a, b) => a.score - b.score || (a.def.display_name || a.type).localeCompare(b.def.display_name || b.type));
  return out;
}

export class SearchBox {
  constructor(app) {
    this.app = app;
    this.el = null;
  }

  close() {
    if (this.el) this.el.remove();
    this.el = null;
    this.app.canvasEl.focus();
  }

  open(event) {
    this.close();
    const app = this.app;
    const canvasPos = app.canvas.convertEventToCanvasOffset(event);
    const wrap = document.getElementById("canvas-wrap");
    const rect = wrap.getBoundingClientRect();
    const el = document.createElement("div");
    el.id = "search";
    el.innerHTML = `<input type="text" placeholder="Search nodes…" aria-label="Search nodes"><div class="results"></div>`;
    el.style.left = `${Math.min(Math.max(event.clientX - rect.left - 20, 0), rect.width - 310)}px`;
    el.style.top = `${Math.min(Math.max(event.clientY - rect.top - 10, 0), rect.height - 340)}px`;
    wrap.appendChild(el);
    this.el = el;
    const input = el.querySelector("input");
    const results = el.querySelector(".results");
    let items = [];
    let selected = 0;
    const render = () => {
      items = rankNodes(app.objectInfo, input.value).slice(0, 60);
      selected = Math.min(selected, Math.max(items.length - 1, 0));
      results.innerHTML = "";
      items.forEach((item, i) => {
        const row = document.createElement("div");
        row.className = "result" + (i === selected ? " selected" : "");
        row.dataset.type = item.type;
        row.title = item.def.description || "";
        const name = document.createElement("span");
        name.textContent = item.def.display_name || item.type;
        const cat = document.createElement("span");
        cat.className = "cat";
        cat.textContent = item.def.category || "";
        row.append(name, cat);
        row.addEventListener("mousedown", (e) => { e.preventDefault(); choose(i); });
        results.appendChild(row);
      });
    };
    const choose = (i) => {
      const item = items[i];
      this.close();
      if (item) app.addNode(item.type, canvasPos);
    };
    input.addEventListener("input", () => { selected = 0; render(); });
    input.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown") { selected = Math.min(selected + 1, items.length - 1); render(); e.preventDefault(); }
      else if (e.key === "ArrowUp") { selected = Math.max(selected - 1, 0); render(); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); choose(selected); }
      else if (e.key === "Escape") { e.preventDefault(); this.close(); }
      e.stopPropagation();
    });
    input.addEventListener("blur", () => setTimeout(() => { if (this.el === el) this.close(); }, 150));
    render();
    setTimeout(() => input.focus(), 0);
  }
}
