// Typed wrappers over the backend's commands. Argument and result types come from the generated bindings
// (src/lib/bindings, written by `cargo test -p freezetune-app`); views call these, never `invoke` directly.
import { Channel, invoke } from "@tauri-apps/api/core";
import type { ProbeProgress } from "./bindings/ProbeProgress";
import type { GgufExport } from "./bindings/GgufExport";
import type { GgufProgress } from "./bindings/GgufProgress";
import type { DeviceMemory } from "./bindings/DeviceMemory";
import type { FitSetup } from "./bindings/FitSetup";
import type { FitVerdict } from "./bindings/FitVerdict";
import type { CachedModelView } from "./bindings/CachedModelView";
import type { DatasetPreview } from "./bindings/DatasetPreview";
import type { DeviceOption } from "./bindings/DeviceOption";
import type { DownloadEvent } from "./bindings/DownloadEvent";
import type { ExportFormat } from "./bindings/ExportFormat";
import type { FreezePlan } from "./bindings/FreezePlan";
import type { Timeline } from "./bindings/Timeline";
import type { ProbeReport } from "./bindings/ProbeReport";
import type { FreezeSpec } from "./bindings/FreezeSpec";
import type { IpcError } from "./bindings/IpcError";
import type { ModelSummary } from "./bindings/ModelSummary";
import type { PickKind } from "./bindings/PickKind";
import type { PlanOptions } from "./bindings/PlanOptions";
import type { Preset } from "./bindings/Preset";
import type { PresetListItem } from "./bindings/PresetListItem";
import type { RunConfig } from "./bindings/RunConfig";
import type { RunSummary } from "./bindings/RunSummary";
import type { TokenStatus } from "./bindings/TokenStatus";
import type { TrainEvent } from "./bindings/TrainEvent";
import type { TrainOutcomeView } from "./bindings/TrainOutcomeView";
import type { HubDatasetView } from "./bindings/HubDatasetView";
import type { HubHit } from "./bindings/HubHit";
import type { RunBundleView } from "./bindings/RunBundleView";
import type { Sharding } from "./bindings/Sharding";
import type { BundleEngine } from "./bindings/BundleEngine";
import type { DatasetMapping } from "./bindings/DatasetMapping";
import type { DatasetSpec } from "./bindings/DatasetSpec";
import type { HubKind } from "./bindings/HubKind";
import type { RemoteModelCheck } from "./bindings/RemoteModelCheck";

/** Rejections of every command are `IpcError`s; anything else (a bug, a lost window) is wrapped into one. */
export function asIpcError(e: unknown): IpcError {
  if (e && typeof e === "object" && "kind" in e && "message" in e) {
    const { kind, message } = e as { kind: unknown; message: unknown };
    return { kind: String(kind), message: String(message) };
  }
  return { kind: "app", message: e instanceof Error ? e.message : String(e) };
}

async function call<T>(command: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(command, args);
  } catch (e) {
    throw asIpcError(e);
  }
}

function channel<E>(onEvents: (events: E[]) => void): Channel<E[]> {
  const ch = new Channel<E[]>();
  ch.onmessage = onEvents;
  return ch;
}

export const newTaskId = (prefix: string): string =>
  `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

export const api = {
  openDemoModel: () => call<ModelSummary>("open_demo_model"),
  openModel: (path: string) => call<ModelSummary>("open_model", { path }),
  listCachedModels: () => call<CachedModelView[]>("list_cached_models"),
  downloadModel: (repo: string, endpoint: string | null, taskId: string, onEvents: (e: DownloadEvent[]) => void) =>
    call<ModelSummary>("download_model", { repo, endpoint, taskId, onEvent: channel(onEvents) }),
  searchHub: (kind: HubKind, query: string, endpoint: string | null) =>
    call<HubHit[]>("search_hub", { kind, query, endpoint }),
  checkHubModel: (repo: string, endpoint: string | null, device: DeviceMemory, cpu: boolean) =>
    call<RemoteModelCheck>("check_hub_model", { repo, endpoint, device, cpu }),
  inspectHubDataset: (repo: string, endpoint: string | null) =>
    call<HubDatasetView>("inspect_hub_dataset", { repo, endpoint }),
  /** Fetches the data files of `config` (the default one when null), every split of it, and no other config's. */
  downloadDataset: (
    repo: string,
    config: string | null,
    split: string | null,
    files: string[],
    endpoint: string | null,
    taskId: string,
    onEvents: (e: DownloadEvent[]) => void,
  ) =>
    call<string>("download_dataset", {
      repo,
      config,
      split,
      files,
      endpoint,
      taskId,
      onEvent: channel(onEvents),
    }),
  cancelTask: (taskId: string) => call<boolean>("cancel_task", { taskId }),
  getTokenStatus: () => call<TokenStatus>("get_token_status"),
  setHubToken: (token: string) => call<TokenStatus>("set_hub_token", { token }),
  clearHubToken: () => call<TokenStatus>("clear_hub_token"),
  pickPath: (kind: PickKind) => call<string | null>("pick_path", { kind }),

  planFreeze: (modelPath: string, spec: FreezeSpec, options: PlanOptions) =>
    call<FreezePlan>("plan_freeze", { modelPath, spec, options }),
  planTimeline: (
    modelPath: string,
    spec: FreezeSpec,
    options: PlanOptions,
    totalSteps: number,
    stepsPerEpoch: number,
    seed: number,
  ) => call<Timeline>("plan_timeline", { modelPath, spec, options, totalSteps, stepsPerEpoch, seed }),
  checkFit: (modelPath: string, spec: FreezeSpec, setup: FitSetup, device: DeviceMemory) =>
    call<FitVerdict>("check_fit", { modelPath, spec, setup, device }),
  previewExport: (modelPath: string, spec: FreezeSpec, format: ExportFormat) =>
    call<string>("preview_export", { modelPath, spec, format }),
  checkIds: (text: string, numLayers: number) => call<string>("check_layer_ids", { text, numLayers }),
  exportConfig: (modelPath: string, spec: FreezeSpec, format: ExportFormat) =>
    call<string | null>("export_config", { modelPath, spec, format }),

  listPresets: () => call<PresetListItem[]>("list_presets"),
  savePreset: (preset: Preset, replace: boolean) => call<string>("save_preset", { preset, replace }),
  loadPreset: (name: string) => call<Preset>("load_preset", { name }),
  renamePreset: (from: string, to: string) => call<void>("rename_preset", { from, to }),
  duplicatePreset: (from: string, to: string) => call<void>("duplicate_preset", { from, to }),
  deletePreset: (name: string) => call<void>("delete_preset", { name }),
  importPreset: (path: string, name: string | null) => call<Preset>("import_preset", { path, name }),
  exportPreset: (name: string) => call<string | null>("export_preset", { name }),

  listDevices: () => call<DeviceOption[]>("list_devices"),
  defaultRun: (modelPath: string) => call<RunConfig>("default_run", { modelPath }),
  previewDataset: (config: RunConfig, n: number) => call<DatasetPreview>("preview_dataset", { config, n }),
  detectDataset: (spec: DatasetSpec) => call<DatasetMapping>("detect_dataset", { spec }),
  exportRun: (config: RunConfig, engine: BundleEngine, gpus: number, sharding: Sharding) =>
    call<RunBundleView>("export_run", { config, engine, gpus, sharding }),
  exportRunDir: (runDir: string, engine: BundleEngine, gpus: number, sharding: Sharding) =>
    call<RunBundleView>("export_run_dir", { runDir, engine, gpus, sharding }),
  trainModel: (config: RunConfig, resume: boolean, taskId: string, onEvents: (e: TrainEvent[]) => void) =>
    call<TrainOutcomeView>("train_model", { config, resume, taskId, onEvent: channel(onEvents) }),
  listRuns: () => call<RunSummary[]>("list_runs"),
  cachedProbe: (config: RunConfig, batches: number) => call<ProbeReport>("cached_probe", { config, batches }),
  probeLayers: (config: RunConfig, batches: number, taskId: string, onProgress: (p: ProbeProgress) => void) => {
    const ch = new Channel<ProbeProgress>();
    ch.onmessage = onProgress;
    return call<ProbeReport>("probe_layers", { config, batches, taskId, onEvent: ch });
  },
  exportGguf: (runDir: string, kind: string, modelfile: boolean, force: boolean, taskId: string, onProgress: (p: GgufProgress) => void) => {
    const ch = new Channel<GgufProgress>();
    ch.onmessage = onProgress;
    return call<GgufExport>("export_gguf", { runDir, kind, modelfile, force, taskId, onEvent: ch });
  },
  importGguf: (path: string, taskId: string, onProgress: (p: GgufProgress) => void) => {
    const ch = new Channel<GgufProgress>();
    ch.onmessage = onProgress;
    return call<ModelSummary>("import_gguf", { path, taskId, onEvent: ch });
  },
  readRunMetrics: (runDir: string) => call<TrainEvent[]>("read_run_metrics", { runDir }),
  openFolder: (path: string) => call<void>("open_folder", { path }),
  generateText: (modelPath: string, prompt: string, maxNewTokens: number) =>
    call<string>("generate_text", { modelPath, prompt, maxNewTokens }),
};
