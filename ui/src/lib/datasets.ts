// The Train screen's dataset list over a run's `[data]`: a run names either one `train` file (the old form, which
// the demo and older configs use) or `[[data.datasets]]`; the picker shows both as a list of datasets and writes
// the list form as soon as the user changes it, so a config never holds both.
import type { DataFormat } from "./bindings/DataFormat";
import type { DataSection } from "./bindings/DataSection";
import type { DatasetSpec } from "./bindings/DatasetSpec";
import type { Formatting } from "./bindings/Formatting";

/** A dataset of the old single-file form, as a list entry: the same file, read the same way. */
export function legacySpec(train: string, format: DataFormat): DatasetSpec {
  const spec: DatasetSpec = { path: train, files: [], columns: {}, tags: {} };
  // `messages` (OpenAI role / content) has no formatting of its own in the list form: detection reads it.
  if (format !== "auto" && format !== "messages") spec.formatting = format;
  return spec;
}

/** The run's datasets as one list (the old `train` file as its only entry). */
export function datasetList(data: DataSection): DatasetSpec[] {
  if (data.datasets.length > 0) return data.datasets;
  return data.train ? [legacySpec(data.train, data.format)] : [];
}

/** Writes `list` into `data` in the list form (or clears it). */
export function setDatasets(data: DataSection, list: DatasetSpec[]): void {
  data.train = "";
  data.format = "auto";
  data.datasets = list;
}

export function localSpec(path: string): DatasetSpec {
  return { path, files: [], columns: {}, tags: {} };
}

/** A Hub dataset downloaded into `snapshot`, read as `config` / `split`. */
export function hubSpec(repo: string, snapshot: string, config: string | null, split: string | null): DatasetSpec {
  const spec: DatasetSpec = { hub: repo, path: snapshot, files: [], columns: {}, tags: {} };
  if (config) spec.config = config;
  if (split) spec.split = split;
  return spec;
}

/** How a list row names its dataset. */
export function describeSpec(spec: DatasetSpec): string {
  if (spec.hub) {
    const parts = [spec.config, spec.split].filter(Boolean).join(" / ");
    return parts ? `${spec.hub} (${parts})` : spec.hub;
  }
  if (spec.dataset_info && spec.name) return `${spec.name} from ${spec.dataset_info}`;
  return spec.path ?? "?";
}

/** The column roles each formatting reads, in the order the mapping editor shows them. */
export function columnRoles(formatting: Formatting | undefined): (keyof DatasetSpec["columns"])[] {
  switch (formatting) {
    case "sharegpt":
      return ["messages", "system", "tools"];
    case "text":
      return ["prompt"];
    case "tokenized":
      return [];
    default:
      return ["prompt", "query", "response", "history", "system"];
  }
}

/** Mixing weights as shares of 1 (the loader normalises them the same way); equal when none has one; `null` when
 * only some have one, which the loader refuses. */
export function shares(list: DatasetSpec[]): number[] | null {
  const given = list.filter((d) => d.weight != null).length;
  if (given !== 0 && given !== list.length) return null;
  const weights = list.map((d) => d.weight ?? 1);
  if (weights.some((w) => !(w > 0))) return null;
  const total = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => w / total);
}
