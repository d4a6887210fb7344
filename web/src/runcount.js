// The run counter: how many of a prompt's nodes are done, out of how many it will run.
//
// The total starts as the prompt's node count and grows when the server reports nodes the prompt did
// not have: loops and other expansions run nodes with ids of their own (`loop.0.r1.show`), reported in
// `executing`, `execution_cached` and `node_finished` like any other. A node counts once however many
// messages name it, and only nodes seen are done, so the counter never shows more done than total.
// At the end of a successful run, prompt nodes that were never needed (an untaken lazy branch) leave
// the total: a finished run reads N/N.

export class RunCounter {
  constructor(nodeIds = []) {
    this.seen = new Set(nodeIds.map(String));
    this.done = new Set();
    this.running = new Set();
    this.status = null;       // "success" | "error" | "interrupted" once the run ended
    this.reportsFinish = false;
  }

  get total() { return Math.max(this.seen.size, 1); }

  /** The prompt's own node ids (known once POST /prompt answered, maybe after its first messages). */
  expect(nodeIds) {
    if (this.status) return;   // ended already: what ran is the total
    for (const id of nodeIds) this.seen.add(String(id));
  }

  /** A node starts (an `executing` message with a node id). A server that sends no `node_finished`
   * runs one node at a time: the node before it is done. */
  started(id) {
    id = String(id);
    if (!this.reportsFinish) this.finishAll();
    this.seen.add(id);
    if (!this.done.has(id)) this.running.add(id);
  }

  /** A node finished (`node_finished`, whether it ran or came from the cache). */
  finished(id) {
    this.reportsFinish = true;
    this.markDone([id]);
  }

  /** Nodes served from the cache (`execution_cached`). */
  cached(ids) {
    this.markDone(ids);
  }

  markDone(ids) {
    for (const raw of ids) {
      const id = String(raw);
      this.seen.add(id);
      this.done.add(id);
      this.running.delete(id);
    }
  }

  finishAll() {
    this.markDone([...this.running]);
  }

  /** The run ended (`executing` with no node, or its execution_* message). */
  ended(status) {
    if (status === "success") {
      this.finishAll();
      for (const id of [...this.seen]) if (!this.done.has(id)) this.seen.delete(id);
    }
    this.running.clear();
    if (!this.status) this.status = status;
  }

  /** Done nodes plus the running ones' step progress (0..1 each), as a fraction of the total. */
  fraction(stepProgress = 0) {
    return Math.min((this.done.size + Math.min(Math.max(stepProgress, 0), this.running.size)) / this.total, 1);
  }

  text(stepProgress = 0) {
    return `${this.done.size}/${this.total} nodes · ${Math.round(this.fraction(stepProgress) * 100)}%`;
  }
}
