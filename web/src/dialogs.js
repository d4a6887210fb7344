// Small modal dialogs of the page: a one-line text question (the save-as file name) and overlays
// closed with Escape or a click outside them (keyboard help, the gallery's image viewer).

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

export { el };

/** An overlay holding `content`; Escape, the ✕ or a click on the backdrop closes it. Returns
 * `{element, close}`; `onClose` runs once. */
export function overlay(id, content, { onClose = null, label = "" } = {}) {
  document.getElementById(id)?.remove();
  const box = el("div", { className: "dialog-box", role: "dialog", ariaLabel: label },
                 el("button", { type: "button", className: "dialog-close", title: "Close (Esc)", textContent: "✕",
                                onclick: () => close() }),
                 content);
  const backdrop = el("div", { id, className: "overlay", onmousedown: (e) => { if (e.target === backdrop) close(); } }, box);
  const onKey = (e) => {
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); close(); }
  };
  let closed = false;
  function close() {
    if (closed) return;
    closed = true;
    document.removeEventListener("keydown", onKey, true);
    backdrop.remove();
    if (onClose) onClose();
  }
  document.addEventListener("keydown", onKey, true);
  document.body.appendChild(backdrop);
  return { element: backdrop, box, close };
}

/** Ask for one line of text. Resolves with the trimmed text, or null when cancelled or left empty. */
export function askText({ id = "ask-dialog", title, label, value = "", okText = "OK", hint = "" }) {
  return new Promise((resolve) => {
    let answer = null;
    const input = el("input", { type: "text", id: `${id}-input`, value, spellcheck: false, autocomplete: "off" });
    const form = el("form", { className: "ask-form", onsubmit: (e) => {
      e.preventDefault();
      answer = input.value.trim() || null;
      dialog.close();
    } },
      el("h3", { textContent: title }),
      el("label", { textContent: label }, input),
      hint ? el("div", { className: "ask-hint", textContent: hint }) : "",
      el("div", { className: "ask-buttons" },
         el("button", { type: "button", className: "ask-cancel", textContent: "Cancel", onclick: () => dialog.close() }),
         el("button", { type: "submit", className: "ask-ok primary", textContent: okText })));
    const dialog = overlay(id, form, { label: title, onClose: () => resolve(answer) });
    input.focus();
    // select the name without its extension, as file dialogs do
    const dot = value.toLowerCase().endsWith(".json") ? value.length - 5 : value.length;
    input.setSelectionRange(0, dot);
  });
}
