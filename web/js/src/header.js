// The run page's header: status badge, progress line (step, epoch, steps/s, elapsed),
// who stopped the run and when, and the stop button.
import { request } from "./live.js";
import { STOP } from "./protocol.js";
import { clock, duration, num } from "./format.js";

// Recent (step, wall) pairs of the loss the training speed is measured over.
const SPEED_WINDOW = 50;
const ACTIVE = new Set(["running", "stopping"]);

export class RunHeader {
  constructor(run) {
    this.run = run;
    this.badge = document.getElementById("status");
    this.progress = document.getElementById("progress");
    this.stoppedBy = document.getElementById("stopped-by");
    this.button = document.getElementById("stop");
    this.dialog = document.getElementById("stop-dialog");
    this.tokenField = document.getElementById("stop-token-field");
    this.tokenInput = document.getElementById("stop-token");
    // Not a submit button: Enter in the token field submits with the form's first one.
    document.getElementById("stop-cancel").addEventListener("click", () => this.dialog.close("cancel"));
    this.tokenRequired = document.body.dataset.tokenRequired === "true";
    this.socket = null;
    this.state = "unknown";
    this.step = 0;
    this.epoch = null;
    this.started = null;
    this.ended = null;
    this.heard = null;  // wall of the last event stored: where a lost run's elapsed time stops
    this.speed = null;
    this.recent = [];
    this.button.addEventListener("click", () => this.askToStop());
  }

  load(run) {
    this.showSweep(run.info.config || {});
    const p = run.progress || {};
    this.started = run.info.started;
    this.step = p.step ?? run.info.last_step;
    this.epoch = p.epoch ?? null;
    this.speed = p.steps_per_s ?? null;
    this.recent = [];
    this.ended = run.end ? run.end.wall : null;
    this.heard = run.info.updated;
    this.setState(run.status ? run.status.state : run.info.status, run.status);
    if (run.end) this.setState(run.end.state, run.status);
    // lost is the server's word on the run's row, newer than any event of the run
    if (run.info.status === "lost") this.setState("lost", { reason: run.info.lost_reason, wall: run.info.lost_at });
    this.render();
  }

  // A sweep's trial links back to its sweep, beside the run's name.
  showSweep(config) {
    const place = document.getElementById("sweep-link");
    if (!place || typeof config.sweep !== "string" || !Number.isInteger(config.trial)) return;
    const link = document.createElement("a");
    link.href = `/sweeps/${encodeURIComponent(config.sweep)}`;
    link.textContent = `trial ${config.trial} of sweep ${config.sweep}`;
    place.replaceChildren(link);
    place.hidden = false;
  }

  // The server marked the run lost (its training process went silent) or running again
  // (it came back): {status, reason, at}; no event of the run carries this.
  liveness(message) {
    this.setState(message.status, message.status === "lost" ? { reason: message.reason, wall: message.at } : null);
    this.render();
  }

  runStarted(event) {
    this.started = event.wall;
    this.ended = null;
    this.render();
  }

  scalars(event) {
    this.step = Math.max(this.step, event.step);
    this.heard = Math.max(this.heard ?? event.wall, event.wall);
    const values = event.data.values;
    if ("epoch" in values) this.epoch = values.epoch;
    if ("loss" in values) {
      this.recent.push([event.step, event.wall]);
      if (this.recent.length > SPEED_WINDOW) this.recent.shift();
      const [s0, w0] = this.recent[0], [s1, w1] = this.recent[this.recent.length - 1];
      if (w1 > w0 && s1 > s0) this.speed = (s1 - s0) / (w1 - w0);
    }
  }

  lifecycle(event) {
    if (event.kind === "run_end") this.ended = event.wall;
    this.setState(event.data.state, event.kind === "status" ? { ...event.data, wall: event.wall } : null);
    this.render();
  }

  // `status` (a status event's data, with its wall) says who and why; run_end says neither,
  // so it leaves the line of the status before it.
  setState(state, status) {
    this.state = state;
    this.badge.textContent = state;
    this.badge.className = `badge ${state}`;
    this.button.disabled = state !== "running";
    this.button.hidden = state !== "running" && state !== "stopping";  // an ended run has nothing to stop
    if (state === "running") {
      this.stoppedBy.textContent = "";
    } else if (status && (status.by || status.reason)) {
      const who = status.by ? `by ${status.by}` : "";
      const when = status.wall ? `at ${clock(status.wall)}` : "";
      const why = status.reason ? `: ${status.reason}` : "";
      this.stoppedBy.textContent = `${state} ${who} ${when}${why}`.replace(/\s+/g, " ").trim();
    }
  }

  tick() {
    if (ACTIVE.has(this.state)) this.render();
  }

  render() {
    const end = this.ended ?? (ACTIVE.has(this.state) ? Date.now() / 1000 : this.state === "lost" ? this.heard : null);
    const parts = [`step ${this.step.toLocaleString()}`];
    if (this.epoch !== null && this.epoch !== undefined) parts.push(`epoch ${num(this.epoch)}`);
    if (this.speed) parts.push(`${num(this.speed, 3)} steps/s`);
    if (this.started && end) parts.push(`elapsed ${duration(end - this.started)}`);
    this.progress.textContent = parts.join(" · ");
  }

  // The page's own modal, not window.confirm and window.prompt: a token typed into a
  // prompt shows in clear, and a browser may suppress a page's repeated native dialogs.
  confirmStop() {
    this.tokenField.hidden = !this.tokenRequired;
    this.tokenInput.required = this.tokenRequired;
    this.tokenInput.value = "";
    this.dialog.returnValue = "";
    return new Promise((resolve) => {
      this.dialog.addEventListener("close", () => resolve(this.dialog.returnValue === "stop"), { once: true });
      this.dialog.showModal();
    });
  }

  async askToStop() {
    if (!this.socket || this.dialog.open) return;
    if (!(await this.confirmStop())) return;  // cancelled, or closed with Escape
    const token = this.tokenRequired ? this.tokenInput.value : null;
    this.tokenInput.value = "";
    this.button.disabled = true;
    try {
      const reply = await request(this.socket, STOP, { run: this.run, reason: "stopped from the dashboard", token });
      if (!reply.ok) throw new Error(reply.error);
      this.stoppedBy.textContent = "stop sent; waiting for the training process…";
    } catch (err) {
      this.button.disabled = this.state !== "running";
      this.stoppedBy.textContent = `could not stop: ${err.message}`;
    }
  }
}
