// Undo and redo: a bounded history of the graph's serialized state.
//
// A snapshot is taken whenever the graph may have changed: a node added or removed, a link made or
// broken, a widget edited, a node moved or resized (litegraph's afterChange), and after each mouse or
// key release on the page. Taking one compares the serialized graph with the newest snapshot and keeps
// it only when it differs, so one gesture is one step however many hooks fired. The view (zoom, pan)
// is not part of a snapshot: undo never moves the camera. Each snapshot also points at its workflow's
// document (`app.document`, holding the name): loading a workflow starts a new document, so undoing a
// load brings the previous workflow back with its name, while a save-as renames the document for all
// of its steps.

export const HISTORY_LIMIT = 100;

/** The graph's state as a comparable string: serialized, without the view and the execution order
 * (litegraph recomputes `order` by itself; it is no edit). */
export function stateKey(workflow) {
  const copy = { ...workflow, extra: { ...(workflow.extra || {}) } };
  delete copy.extra.ds;
  copy.nodes = (workflow.nodes || []).map((node) => {
    const { order, ...rest } = node;   // eslint-disable-line no-unused-vars
    return rest;
  });
  return JSON.stringify(copy);
}

/** A bounded list of snapshots with a cursor: the data structure, knowing nothing of litegraph. */
export class SnapshotStack {
  constructor(limit = HISTORY_LIMIT) {
    this.limit = Math.max(2, limit);
    this.items = [];    // {key, workflow, document}: document is shared by the steps of one workflow
    this.index = -1;    // the snapshot the graph shows now
  }

  get current() { return this.index >= 0 ? this.items[this.index] : null; }
  get canUndo() { return this.index > 0; }
  get canRedo() { return this.index >= 0 && this.index < this.items.length - 1; }

  reset(snapshot) {
    this.items = [snapshot];
    this.index = 0;
  }

  /** Keep `snapshot` as the newest step (dropping the redo branch); false when nothing changed. */
  push(snapshot) {
    const current = this.current;
    if (current && current.key === snapshot.key && current.document === snapshot.document) return false;
    this.items.splice(this.index + 1);
    this.items.push(snapshot);
    if (this.items.length > this.limit) this.items.splice(0, this.items.length - this.limit);
    this.index = this.items.length - 1;
    return true;
  }

  /** Replace the current snapshot (a change that is no step of its own, e.g. a node grown for an image). */
  replace(snapshot) {
    if (this.index < 0) this.reset(snapshot);
    else this.items[this.index] = snapshot;
  }

  undo() {
    if (!this.canUndo) return null;
    this.index -= 1;
    return this.current;
  }

  redo() {
    if (!this.canRedo) return null;
    this.index += 1;
    return this.current;
  }
}

/** The canvas's undo history: takes snapshots of `app`'s graph and restores them. */
export class GraphHistory {
  constructor(app, limit = HISTORY_LIMIT) {
    this.app = app;
    this.stack = new SnapshotStack(limit);
    this.restoring = false;
    this._timer = null;
    this.listeners = [];
  }

  snapshot() {
    const workflow = this.app.workflow();
    return { key: stateKey(workflow), workflow, document: this.app.document };
  }

  /** Start a new history from the graph as it is. */
  reset() {
    this.stack.reset(this.snapshot());
    this.changed();
  }

  /** Litegraph is in the middle of a gesture (dragging a node, a link, the canvas, a resize). */
  busy() {
    const c = this.app.canvas;
    return !!(c && (c.node_dragged || c.connecting_node || c.resizing_node || c.dragging_rectangle
                    || c.node_widget || c.dragging_canvas));
  }

  /** Record the graph if it changed since the newest snapshot; returns whether a step was added. */
  check() {
    if (this.restoring || !this.app.graph || this.busy()) return false;
    const added = this.stack.push(this.snapshot());
    if (added) this.changed();
    return added;
  }

  /** Check once the current event has been handled (many hooks may fire for one gesture). */
  schedule() {
    if (this.restoring || this._timer !== null) return;
    this._timer = setTimeout(() => { this._timer = null; this.check(); }, 0);
  }

  /** Fold the graph's current state into the newest snapshot without making a step. */
  absorb() {
    if (this.restoring || this.busy()) return;
    if (this._timer !== null) return;   // a user edit is pending: it will be recorded with this
    this.stack.replace(this.snapshot());
  }

  undo() {
    this.check();                        // an edit not recorded yet is the step undone
    const target = this.stack.undo();
    if (target) this.restore(target);
    return !!target;
  }

  redo() {
    this.check();                        // an edit after the undo drops the redo branch
    const target = this.stack.redo();
    if (target) this.restore(target);
    return !!target;
  }

  restore(snapshot) {
    this.restoring = true;
    try {
      this.app.restoreSnapshot(snapshot.workflow, snapshot.document);
    } finally {
      this.restoring = false;
    }
    // what the graph serializes to after configure() becomes this step's state (no phantom step)
    this.stack.replace({ ...snapshot, key: stateKey(this.app.workflow()) });
    this.changed();
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  changed() {
    for (const listener of this.listeners) listener(this);
  }
}
