// Keyboard help: the `?` overlay listing every shortcut of the canvas (ours and litegraph's own).

import { el, overlay } from "./dialogs.js";

/** [keys, what they do], in groups; the one list the overlay shows. */
export const SHORTCUTS = [
  ["Run", [
    ["Ctrl+Enter", "Queue the workflow"],
  ]],
  ["Workflow", [
    ["Ctrl+S", "Save (asks for a name the first time)"],
    ["Ctrl+Shift+S", "Save as… (a new file name)"],
    ["Ctrl+O", "Open a workflow file (.json or a generated .png)"],
  ]],
  ["Edit", [
    ["Ctrl+Z", "Undo"],
    ["Ctrl+Shift+Z / Ctrl+Y", "Redo"],
    ["Ctrl+C / Ctrl+V", "Copy / paste the selected nodes (Ctrl+Shift+V keeps their input links)"],
    ["Delete / Backspace", "Remove the selected nodes"],
    ["Ctrl+A", "Select every node"],
    ["Ctrl+B", "Bypass the selected nodes (or un-bypass)"],
    ["Ctrl+M", "Mute the selected nodes (or un-mute)"],
    ["Double-click", "Search nodes to add where you clicked"],
  ]],
  ["View", [
    [".", "Fit the whole workflow in view"],
    ["Space + drag, or drag the background", "Pan"],
    ["Mouse wheel", "Zoom"],
    ["G", "Show or hide the output gallery"],
    ["?", "This help"],
    ["Esc", "Close a dialog; leave a loop body for the workflow"],
  ]],
];

export function showHelp() {
  const body = el("div", { className: "help" }, el("h3", { textContent: "Keyboard shortcuts" }));
  for (const [group, rows] of SHORTCUTS) {
    const table = el("table", { className: "help-keys" });
    for (const [keys, what] of rows) {
      const kbds = keys.split(" / ").flatMap((k, i) => [i ? " / " : "", el("kbd", { textContent: k })]);
      table.appendChild(el("tr", {}, el("td", { className: "help-key" }, ...kbds), el("td", { textContent: what })));
    }
    body.append(el("h4", { textContent: group }), table);
  }
  return overlay("help-overlay", body, { label: "Keyboard shortcuts" });
}
