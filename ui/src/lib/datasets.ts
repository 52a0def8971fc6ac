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

/** What a run evaluates on, as the Train screen offers it. `split` is another split of training entry `entry` (a
 * Hub dataset), read from the same download; `given` keeps eval datasets or an eval file the run already names. */
export type EvalChoice =
  | { kind: "none" }
  | { kind: "fraction" }
  | { kind: "split"; entry: number; split: string }
  | { kind: "given" };

/** A Hub entry's key in the map of known splits: its repo and config. */
export function splitsKey(spec: DatasetSpec): string {
  return `${spec.hub ?? ""}|${spec.config ?? ""}`;
}

/** The choices for `data`: none, a held-out fraction, each other known split of each Hub training entry (`known`
 * maps `splitsKey` to the config's splits, as its lookup listed them), and what the run names already. */
export function evalChoices(data: DataSection, known: Map<string, string[]>): { choice: EvalChoice; label: string }[] {
  const out: { choice: EvalChoice; label: string }[] = [
    { choice: { kind: "none" }, label: "nothing" },
    { choice: { kind: "fraction" }, label: "a held-out fraction of the training rows" },
  ];
  data.datasets.forEach((spec, entry) => {
    if (!spec.hub || !spec.path) return;
    const own = spec.split ?? "train";
    for (const split of known.get(splitsKey(spec)) ?? []) {
      if (split !== own) out.push({ choice: { kind: "split", entry, split }, label: describeSpec({ ...spec, split }) });
    }
  });
  const current = currentEval(data);
  if (current.kind === "split" && !out.some((o) => sameChoice(o.choice, current))) {
    out.push({ choice: current, label: describeSpec(data.eval_datasets![0]) });
  }
  if (current.kind === "given") out.push({ choice: current, label: givenLabel(data) });
  return out;
}

function givenLabel(data: DataSection): string {
  if (data.eval) return `the file ${data.eval}`;
  return (data.eval_datasets ?? []).map(describeSpec).join(" + ");
}

/** What `data` evaluates on now. */
export function currentEval(data: DataSection): EvalChoice {
  const evals = data.eval_datasets ?? [];
  if (data.eval) return { kind: "given" };
  if (evals.length === 1 && evals[0].hub && evals[0].split) {
    const entry = data.datasets.findIndex(
      (d) => d.hub === evals[0].hub && d.path === evals[0].path && (d.config ?? null) === (evals[0].config ?? null),
    );
    if (entry >= 0) return { kind: "split", entry, split: evals[0].split };
  }
  if (evals.length > 0) return { kind: "given" };
  return data.eval_split > 0 ? { kind: "fraction" } : { kind: "none" };
}

export function sameChoice(a: EvalChoice, b: EvalChoice): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === "split" && b.kind === "split") return a.entry === b.entry && a.split === b.split;
  return true;
}

/** Sets `data` to evaluate on `choice`: one evaluation source at most, as the loader requires. A fraction starts
 * at `fraction` when none is set. */
export function setEval(data: DataSection, choice: EvalChoice, fraction = 0.1): void {
  if (choice.kind === "given") return;
  data.eval = null;
  data.eval_datasets = [];
  if (choice.kind !== "fraction") data.eval_split = 0;
  if (choice.kind === "fraction" && !(data.eval_split > 0)) data.eval_split = fraction;
  if (choice.kind === "split") {
    // The same download, another split, with the training entry's mapping; read whole (no row limit, no weight).
    const evalSpec = plainCopy(data.datasets[choice.entry]);
    evalSpec.split = choice.split;
    delete evalSpec.weight;
    delete evalSpec.limit;
    // The training entry's `files` globs pick its own split's files.
    evalSpec.files = [];
    data.eval_datasets = [evalSpec];
  }
}

/** After the training list changed from `previous`: an eval split of an entry follows that entry (copied again,
 * with its current mapping), or goes when the entry goes. */
export function followEval(data: DataSection, previous: DatasetSpec[]): void {
  const was = currentEval({ ...data, datasets: previous });
  if (was.kind !== "split") return;
  const owner = previous[was.entry];
  const now = data.datasets.findIndex(
    (d) => d.hub === owner.hub && d.path === owner.path && (d.config ?? null) === (owner.config ?? null),
  );
  setEval(data, now >= 0 ? { kind: "split", entry: now, split: was.split } : { kind: "none" });
}

/** A deep copy that also works on the screen's reactive proxies. */
function plainCopy<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}
