// App-wide state shared by the screens: the open model, the picker's selection and the backend's plan for it, the
// run being set up or watched. Screens read and change it only through the functions here.
import type { DownloadEvent } from "./bindings/DownloadEvent";
import type { FreezePlan } from "./bindings/FreezePlan";
import type { IpcError } from "./bindings/IpcError";
import type { ModelSummary } from "./bindings/ModelSummary";
import type { PlanOptions } from "./bindings/PlanOptions";
import type { RunConfig } from "./bindings/RunConfig";
import type { ProbeProgress } from "./bindings/ProbeProgress";
import type { ProbeReport } from "./bindings/ProbeReport";
import type { ScheduleSpec } from "./bindings/ScheduleSpec";
import type { Timeline } from "./bindings/Timeline";
import type { TrainEvent } from "./bindings/TrainEvent";
import type { TrainOutcomeView } from "./bindings/TrainOutcomeView";
import { parseCanonical } from "./ids";
import { api, asIpcError, newTaskId } from "./ipc";
import { emptySelection, fromSpec, idsText, setIds, toSpec, type Selection } from "./selection";

export type Screen = "model" | "layers" | "train" | "runs" | "presets";
const SCREENS: Screen[] = ["model", "layers", "train", "runs", "presets"];

function savedScreen(): Screen {
  const s = globalThis.localStorage?.getItem("freezetune.screen") as Screen | null;
  return s && SCREENS.includes(s) ? s : "layers";
}

export type StepEvent = Extract<TrainEvent, { event: "step" }>;
export type EvalEvent = Extract<TrainEvent, { event: "eval" }>;
export type PhaseEvent = Extract<TrainEvent, { event: "phase" }>;

export const app = $state({
  screen: savedScreen(),
  model: null as ModelSummary | null,
  modelError: null as IpcError | null,
  loadingModel: false,
  selection: null as Selection | null,
  plan: null as FreezePlan | null,
  planError: null as IpcError | null,
  planPending: false,
  /** The ids field's text: canonical after a click, what the user typed while typing. */
  idsField: "",
  idsError: null as string | null,
  options: { batch_size: 1, seq_len: 512 } as PlanOptions,
  run: null as RunConfig | null,
  notice: null as string | null,
  /** The layer schedule's timeline for `timelineSteps` steps, when the selection has a schedule. */
  timeline: null as Timeline | null,
  timelineError: null as IpcError | null,
  timelineSteps: 200,
});

/** The layer probe of the open model on the run's data (Layers screen). */
export const insight = $state({
  report: null as ProbeReport | null,
  running: false,
  /** Passes done of all (a forward pass per batch, then a backward pass per batch) while it runs. */
  progress: null as ProbeProgress | null,
  taskId: null as string | null,
  /** Batches to measure on (kept across screens, so an earlier result is found again). */
  batches: 4,
  /** Model, data and batches last looked up in the cache, so each is looked up once. */
  cachedKey: null as string | null,
  error: null as IpcError | null,
  signal: "gradient" as "gradient" | "influence",
});

/** Measures the open model's layers on the run's training data, in a worker, with progress; `cancelMeasure` stops it. */
export async function measureLayers(batches: number) {
  if (!app.run || insight.running) return;
  insight.running = true;
  insight.error = null;
  insight.progress = null;
  const taskId = newTaskId("probe");
  insight.taskId = taskId;
  try {
    insight.report = await api.probeLayers($state.snapshot(app.run), batches, taskId, (p) => (insight.progress = p));
    if (insight.report.ranked_by_gradient == null) insight.signal = "influence";
  } catch (e) {
    const err = asIpcError(e);
    // A cancel is the user's own doing, not an error to show.
    if (err.kind !== "stopped") insight.error = err;
  } finally {
    insight.running = false;
    insight.taskId = null;
    insight.progress = null;
  }
}

/** Shows the result measured before on this model, data and settings, if there is one (nothing is measured). */
export async function showCachedMeasure(batches: number) {
  if (!app.run?.data.train || insight.running) return;
  // Every setting the probe's cache key holds (data section, batch size, device) plus the batch count.
  const key = JSON.stringify([app.model?.path, app.run.data, app.run.training?.batch_size, app.run.runtime?.device, batches]);
  if (insight.cachedKey === key) return;
  insight.cachedKey = key;
  try {
    const report = await api.cachedProbe($state.snapshot(app.run), batches);
    if (insight.cachedKey !== key || insight.running) return;
    insight.report = report;
    if (report.ranked_by_gradient == null) insight.signal = "influence";
  } catch {
    // Not measured yet: nothing to show until the user measures.
  }
}

export async function cancelMeasure() {
  // A cancel before the backend registered the task finds nothing to stop; the probe then just finishes.
  if (insight.taskId) await api.cancelTask(insight.taskId).catch(() => false);
}

/** Chooses the `k` layers the probe ranks highest by the chosen signal. */
export function suggestLayers(k: number) {
  const r = insight.report;
  const s = app.selection;
  if (!r || !s) return;
  const ranked = insight.signal === "gradient" ? (r.ranked_by_gradient ?? []) : r.ranked_by_influence;
  setSelection(setIds(s, ranked.slice(0, Math.max(1, k))));
}

export const training = $state({
  taskId: null as string | null,
  running: false,
  stopping: false,
  runDir: null as string | null,
  totalSteps: 0,
  steps: [] as StepEvent[],
  evals: [] as EvalEvent[],
  phases: [] as PhaseEvent[],
  outcome: null as TrainOutcomeView | null,
  error: null as IpcError | null,
  started: null as Extract<TrainEvent, { event: "started" }> | null,
});

export function go(screen: Screen) {
  app.screen = screen;
  globalThis.localStorage?.setItem("freezetune.screen", screen);
}

/** Opens a model (the demo when `path` is null) and starts a fresh selection: the top two layers. */
let openSeq = 0;

/** Opens a model (the demo when `path` is null) and starts a fresh selection: the top two layers. Only the last
 * open wins: the model, its run settings and its selection are set together, never from two different models. */
export async function openModel(path: string | null) {
  const seq = ++openSeq;
  app.loadingModel = true;
  app.modelError = null;
  try {
    const model = path === null ? await api.openDemoModel() : await api.openModel(path);
    const run = await api.defaultRun(model.path);
    let s = emptySelection(model.num_layers, model.layer_modules);
    // The demo's own run config says what it trains; other models start with their top two layers.
    if (run.freeze && Object.keys(run.freeze).length > 0) {
      const ids = run.freeze.layers ? parseCanonical(await api.checkIds(run.freeze.layers, model.num_layers)) : [];
      s = fromSpec(s, run.freeze, ids);
    } else {
      s = fromSpec(s, { top: Math.min(2, model.num_layers) }, []);
    }
    if (seq !== openSeq) return;
    app.model = model;
    app.plan = null;
    insight.report = null;
    insight.cachedKey = null;
    app.run = run;
    if ((run.training?.max_steps ?? 0) > 0) app.timelineSteps = run.training!.max_steps;
    app.options = { batch_size: run.training?.batch_size ?? 1, seq_len: run.data.cutoff_len ?? 512 };
    setSelection(s);
  } catch (e) {
    if (seq === openSeq) app.modelError = asIpcError(e);
  } finally {
    if (seq === openSeq) app.loadingModel = false;
  }
}

let planSeq = 0;

/** Replaces the selection, rewrites the ids field canonically, and asks the backend for the plan. */
export function setSelection(s: Selection) {
  // A gesture supersedes ids still being checked from the field.
  idsSeq++;
  app.selection = s;
  app.idsField = idsText(s);
  app.idsError = null;
  void replan();
}

export async function replan() {
  const s = app.selection;
  const model = app.model;
  if (!s || !model) return;
  const seq = ++planSeq;
  app.planPending = true;
  try {
    const plan = await api.planFreeze(model.path, toSpec(s), $state.snapshot(app.options));
    if (seq !== planSeq) return;
    app.plan = plan;
    app.planError = null;
    await retimeline(seq);
  } catch (e) {
    if (seq !== planSeq) return;
    app.planError = asIpcError(e);
  } finally {
    if (seq === planSeq) app.planPending = false;
  }
}

/** The schedule's timeline for the current selection (none without a schedule); `seq` drops stale answers. */
async function retimeline(seq: number) {
  const s = app.selection;
  const model = app.model;
  if (!s?.schedule || s.schedule.kind === "static" || !model) {
    app.timeline = null;
    app.timelineError = null;
    return;
  }
  try {
    const t = app.run?.training;
    const timeline = await api.planTimeline(
      model.path,
      toSpec(s),
      $state.snapshot(app.options),
      app.timelineSteps,
      Math.max(1, Math.ceil(app.timelineSteps / Math.max(1, Math.ceil(t?.epochs ?? 1)))),
      t?.seed ?? 42,
    );
    if (seq !== planSeq) return;
    app.timeline = timeline;
    app.timelineError = null;
  } catch (e) {
    if (seq !== planSeq) return;
    app.timeline = null;
    app.timelineError = asIpcError(e);
  }
}

/** Sets (or, with null, removes) the selection's layer schedule. */
export function setSchedule(schedule: ScheduleSpec | null) {
  if (app.selection) setSelection({ ...app.selection, schedule });
}

/** The number of steps the Layers screen draws the timeline for. */
export function setTimelineSteps(steps: number) {
  app.timelineSteps = Math.max(1, Math.round(steps) || 1);
  void replan();
}

let idsSeq = 0;

/** The user typed in the ids field: the backend checks it; good text updates the rows, bad text shows its error. */
export async function typeIds(text: string) {
  app.idsField = text;
  const s = app.selection;
  const model = app.model;
  if (!s || !model) return;
  const seq = ++idsSeq;
  const choose = (ids: number[]) => {
    // The selection as it is now: a click on a filter or an extra module while the ids were being checked stays.
    const now = app.selection ?? s;
    app.idsError = null;
    app.selection = setIds(now, ids);
    return replan();
  };
  if (text.trim() === "") return choose([]);
  try {
    const canonical = await api.checkIds(text, model.num_layers);
    if (seq === idsSeq) await choose(parseCanonical(canonical));
  } catch (e) {
    if (seq === idsSeq) app.idsError = asIpcError(e).message;
  }
}

/** Whether the current choice may be trained: ids valid, a plan, something trainable. */
export function trainable(): boolean {
  return !app.idsError && !app.planError && !!app.plan && app.plan.trainable_params > 0;
}

function onTrainEvents(events: TrainEvent[]) {
  for (const e of events) {
    if (e.event === "started") {
      training.started = e;
      training.totalSteps = e.total_steps;
      training.runDir = e.run_dir;
    } else if (e.event === "step") training.steps.push(e);
    else if (e.event === "eval") training.evals.push(e);
    else if (e.event === "phase") training.phases.push(e);
  }
}

/** Starts (or resumes from the checkpoint at `fromStep`) `config`; resolves when the run ends, stops or fails. */
export async function startTraining(config: RunConfig, resume: boolean, fromStep: number | null = null) {
  const taskId = newTaskId("train");
  Object.assign(training, {
    taskId,
    running: true,
    stopping: false,
    runDir: config.output.dir,
    totalSteps: 0,
    steps: [],
    evals: [],
    phases: [],
    outcome: null,
    error: null,
    started: null,
  });
  if (resume) {
    // The chart continues from what the run already logged.
    // Steps logged after the checkpoint are redone (the trainer drops them from metrics.jsonl), so they are not
    // drawn twice or counted as progress.
    const past = await api.readRunMetrics(config.output.dir).catch(() => []);
    // A phase that begins at the checkpoint is entered again (and reported again) by the resumed run.
    const kept = (e: TrainEvent) =>
      fromStep == null || !("step" in e) || (e.event === "phase" ? e.step < fromStep : e.step <= fromStep);
    onTrainEvents(past.filter(kept));
  }
  try {
    training.outcome = await api.trainModel(config, resume, taskId, onTrainEvents);
  } catch (e) {
    training.error = asIpcError(e);
  } finally {
    training.running = false;
    training.stopping = false;
    training.taskId = null;
  }
}

export async function stopTraining() {
  const taskId = training.taskId;
  if (!taskId) return;
  training.stopping = true;
  // Stop pressed in the first instant can reach the backend before the run has registered its task: ask again.
  while (training.running && training.taskId === taskId && !(await api.cancelTask(taskId))) {
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The memory estimate's sizes are the run's batch size and cutoff: editing one edits the other. */
export function setPlanSizes(batch: number, seq: number) {
  app.options = { batch_size: batch, seq_len: seq };
  if (app.run?.training) app.run.training.batch_size = batch;
  if (app.run) app.run.data.cutoff_len = seq;
  void replan();
}

/** The Hub download in progress (kept here, not in the Model screen, so leaving the screen loses nothing). */
export const download = $state({
  taskId: null as string | null,
  repo: "",
  done: 0,
  total: 0,
  speed: 0,
  eta: null as number | null,
  file: "",
  note: "",
  error: null as IpcError | null,
});

function onDownloadEvents(events: DownloadEvent[]) {
  for (const e of events) {
    if (e.event === "resolved") download.total = e.total_bytes;
    else if (e.event === "progress") {
      download.done = e.done_bytes;
      download.total = e.total_bytes;
      download.speed = e.bytes_per_second;
      download.eta = e.eta_seconds ?? null;
      download.file = e.file;
    } else if (e.event === "retrying") download.note = `retrying ${e.file} (${e.reason})`;
    else if (e.event === "file_started") download.note = e.resumed_from > 0 ? `resuming ${e.file}` : "";
  }
}

/** Downloads `repo` and opens it; the Layers screen is shown only if the user is still on the Model screen. */
export async function startDownload(repo: string, endpoint: string | null) {
  if (download.taskId) return;
  const taskId = newTaskId("download");
  Object.assign(download, { taskId, repo, done: 0, total: 0, speed: 0, eta: null, file: "", note: "", error: null });
  try {
    const model = await api.downloadModel(repo, endpoint, taskId, onDownloadEvents);
    download.taskId = null;
    await openModel(model.path);
    if (app.screen === "model" && !app.modelError) go("layers");
  } catch (e) {
    download.error = asIpcError(e);
  } finally {
    download.taskId = null;
  }
}

/** A Hub dataset the user chose on the Model screen's search, for the Train screen's picker to look up. */
export const pendingDataset = $state({ repo: "", endpoint: null as string | null });

export async function cancelDownload() {
  if (download.taskId) await api.cancelTask(download.taskId);
}