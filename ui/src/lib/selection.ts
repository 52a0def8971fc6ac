// The layer picker's model: which layers (and which modules of which layers) the user chose, and the FreezeSpec that
// says it to the backend. Pure functions on plain data, so every gesture is unit-tested without a DOM.
import type { FreezeSpec } from "./bindings/FreezeSpec";
import type { ScheduleSpec } from "./bindings/ScheduleSpec";
import { formatIds } from "./ids";

/** `custom`: module names kept verbatim from a saved spec (`self_attn.q_proj`, ...) that no filter button says. */
export type ModuleFilter = "all" | "attention" | "mlp" | "custom";
export type Origin = { kind: "ids" } | { kind: "top"; n: number } | { kind: "bottom"; n: number };

export interface Selection {
  numLayers: number;
  /** Module names inside every layer, in order (`self_attn`, `mlp`, `input_layernorm`, ...). */
  layerModules: string[];
  /** Layers chosen whole (all modules the filter lets through). */
  layers: Set<number>;
  /** Layers with only some modules chosen, by a click on a module cell. */
  partial: Map<number, Set<string>>;
  extra: Set<string>;
  filter: ModuleFilter;
  /** The modules of the `custom` filter. */
  custom: string[];
  /** How the layers were chosen: kept so LLaMA-Factory mode and presets can say "top 2" rather than "6-7". */
  origin: Origin;
  llamafactory: boolean;
  /** The layer schedule that moves the trainable set through the chosen layers; null trains them throughout. */
  schedule: ScheduleSpec | null;
}

export function emptySelection(numLayers: number, layerModules: string[]): Selection {
  return {
    numLayers,
    layerModules: orderModules(layerModules),
    layers: new Set(),
    partial: new Map(),
    extra: new Set(),
    filter: "all",
    custom: [],
    origin: { kind: "ids" },
    llamafactory: false,
    schedule: null,
  };
}

const ATTENTION = /attn|attention/;
const MLP = /mlp|feed_forward|ffn|moe/;
const NORM = /norm|^ln_/;

/** Modules in reading order for a row: attention, then MLP, then the rest (norms) as they came. */
export function orderModules(modules: string[]): string[] {
  const rank = (m: string) => (NORM.test(m) ? 2 : ATTENTION.test(m) ? 0 : MLP.test(m) ? 1 : 2);
  return [...modules].sort((a, b) => rank(a) - rank(b));
}

/** The module names a filter keeps (every module for `all`). */
export function filterModules(layerModules: string[], filter: ModuleFilter): string[] {
  if (filter === "all" || filter === "custom") return layerModules;
  // Norms sit beside both (`post_attention_layernorm`); they belong to neither filter.
  return layerModules.filter((m) => !NORM.test(m) && (filter === "attention" ? ATTENTION : MLP).test(m));
}

/** The modules a whole-layer choice trains under the current filter. */
export function activeModules(s: Selection): string[] {
  return s.filter === "custom" ? s.custom : filterModules(s.layerModules, s.filter);
}

/** The modules of layer `id` the user chose. */
export function chosenModules(s: Selection, id: number): Set<string> {
  if (s.layers.has(id)) return new Set(activeModules(s));
  return new Set(s.partial.get(id) ?? []);
}

/** Whether layer `id` counts as chosen for click, range and paint gestures (whole or in part). */
export function isChosen(s: Selection, id: number): boolean {
  return s.layers.has(id) || (s.partial.get(id)?.size ?? 0) > 0;
}

function edit(s: Selection, f: (next: Selection) => void): Selection {
  const next: Selection = { ...s, layers: new Set(s.layers), partial: new Map(s.partial), extra: new Set(s.extra) };
  f(next);
  return next;
}

function setLayer(next: Selection, id: number, on: boolean) {
  next.partial.delete(id);
  if (on) next.layers.add(id);
  else next.layers.delete(id);
}

/** Click: toggles one layer. */
export function toggleLayer(s: Selection, id: number): Selection {
  const on = !isChosen(s, id);
  return edit(s, (n) => {
    setLayer(n, id, on);
    n.origin = { kind: "ids" };
  });
}

/** Shift-click or drag: sets every layer between `from` and `to` (inclusive) to `on`. */
export function setRange(s: Selection, from: number, to: number, on: boolean): Selection {
  const [lo, hi] = from <= to ? [from, to] : [to, from];
  return edit(s, (n) => {
    for (let id = Math.max(0, lo); id <= Math.min(hi, s.numLayers - 1); id++) setLayer(n, id, on);
    n.origin = { kind: "ids" };
  });
}

/** Click on a module cell: toggles that module of that layer only. */
export function toggleModule(s: Selection, id: number, module: string): Selection {
  const modules = chosenModules(s, id);
  if (modules.has(module)) modules.delete(module);
  else modules.add(module);
  const full = activeModules(s);
  return edit(s, (n) => {
    n.origin = { kind: "ids" };
    if (modules.size === 0) setLayer(n, id, false);
    else if (full.every((m) => modules.has(m)) && modules.size === full.length) setLayer(n, id, true);
    else {
      n.layers.delete(id);
      n.partial.set(id, modules);
    }
  });
}

export function topN(s: Selection, k: number): Selection {
  const n = clampCount(k, s.numLayers);
  return edit(s, (next) => {
    next.layers = new Set(Array.from({ length: n }, (_, i) => s.numLayers - n + i));
    next.partial = new Map();
    next.origin = { kind: "top", n };
  });
}

export function bottomN(s: Selection, k: number): Selection {
  const n = clampCount(k, s.numLayers);
  return edit(s, (next) => {
    next.layers = new Set(Array.from({ length: n }, (_, i) => i));
    next.partial = new Map();
    next.origin = { kind: "bottom", n };
  });
}

function clampCount(k: number, numLayers: number): number {
  return Math.max(0, Math.min(numLayers, Math.floor(Number.isFinite(k) ? k : 0)));
}

/** Sets the layers from ids the backend has checked. */
export function setIds(s: Selection, ids: number[]): Selection {
  return edit(s, (n) => {
    n.layers = new Set(ids);
    n.partial = new Map();
    n.origin = { kind: "ids" };
  });
}

/** Every layer's chosen modules become the ones it did not have. */
export function invert(s: Selection): Selection {
  const full = activeModules(s);
  let next = edit(s, (n) => {
    n.layers = new Set();
    n.partial = new Map();
    n.origin = { kind: "ids" };
  });
  for (let id = 0; id < s.numLayers; id++) {
    const had = chosenModules(s, id);
    const rest = full.filter((m) => !had.has(m));
    if (rest.length === full.length) next.layers.add(id);
    else if (rest.length > 0) next.partial.set(id, new Set(rest));
  }
  return next;
}

export function clearLayers(s: Selection): Selection {
  return edit(s, (n) => {
    n.layers = new Set();
    n.partial = new Map();
    n.origin = { kind: "ids" };
  });
}

export function toggleExtra(s: Selection, name: string): Selection {
  return edit(s, (n) => {
    if (n.extra.has(name)) n.extra.delete(name);
    else n.extra.add(name);
  });
}

export function setFilter(s: Selection, filter: ModuleFilter): Selection {
  return edit(s, (n) => {
    n.filter = filter;
    n.partial = new Map([...s.partial].map(([id, mods]) => [id, new Set([...mods])]));
  });
}

/** Canonical ids of every chosen layer, whole or partial: what the ids field shows. */
export function idsText(s: Selection): string {
  return formatIds([...s.layers, ...[...s.partial].filter(([, m]) => m.size > 0).map(([id]) => id)]);
}

/** The FreezeSpec the backend plans. */
export function toSpec(s: Selection): FreezeSpec {
  const filter = s.filter === "all" ? [] : activeModules(s);
  const extra = [...s.extra].sort();
  if (s.llamafactory) {
    const lf: NonNullable<FreezeSpec["llamafactory"]> = {
      freeze_trainable_modules: filter.length ? filter.join(",") : "all",
    };
    if (s.origin.kind === "top") lf.freeze_trainable_layers = s.origin.n;
    else if (s.origin.kind === "bottom") lf.freeze_trainable_layers = -s.origin.n;
    else lf.freeze_trainable_layers_ids = [...s.layers].sort((a, b) => a - b).join(",");
    if (extra.length) lf.freeze_extra_modules = extra.join(",");
    return withSchedule({ llamafactory: lf }, s);
  }
  const spec: FreezeSpec = {};
  if (s.origin.kind === "top" && s.partial.size === 0) spec.top = s.origin.n;
  else if (s.origin.kind === "bottom" && s.partial.size === 0) spec.bottom = s.origin.n;
  else if (s.layers.size > 0) spec.layers = formatIds(s.layers);
  else spec.no_layers = true;
  if ((spec.top === 0 || spec.bottom === 0) && s.layers.size === 0) {
    delete spec.top;
    delete spec.bottom;
    spec.no_layers = true;
  }
  if (filter.length) spec.modules = filter;
  if (s.partial.size) {
    // Every chosen name is kept, in row order, including sub-paths the row has no cell for.
    const order = (m: string) => (s.layerModules.includes(m) ? s.layerModules.indexOf(m) : s.layerModules.length);
    spec.layer_modules = Object.fromEntries(
      [...s.partial]
        .filter(([, mods]) => mods.size > 0)
        .sort(([a], [b]) => a - b)
        .map(([id, mods]) => [String(id), [...mods].sort((a, b) => order(a) - order(b) || a.localeCompare(b))]),
    );
  }
  if (extra.length) spec.extra = extra;
  return withSchedule(spec, s);
}

function withSchedule(spec: FreezeSpec, s: Selection): FreezeSpec {
  if (s.schedule && s.schedule.kind !== "static") spec.schedule = { ...s.schedule };
  return spec;
}

/** A selection from a saved spec (a preset): the inverse of `toSpec` for the specs the picker writes. */
export function fromSpec(base: Selection, spec: FreezeSpec, ids: number[]): Selection {
  let s = emptySelection(base.numLayers, base.layerModules);
  s.extra = new Set(spec.extra ?? []);
  s.schedule = spec.schedule ? { ...spec.schedule } : null;
  const lf = spec.llamafactory;
  if (lf) {
    s.llamafactory = true;
    // LLaMA-Factory's own default is the last 2 layers.
    const k = lf.freeze_trainable_layers ?? 2;
    const lfIds = lf.freeze_trainable_layers_ids;
    if (lfIds == null) s = k >= 0 ? topN(s, k) : bottomN(s, -k);
    else s = setIds(s, idListIds(lfIds).filter((i) => i >= 0 && i < base.numLayers));
    s.extra = new Set((lf.freeze_extra_modules ?? "").split(",").map((x) => x.trim()).filter(Boolean));
    const mods = (lf.freeze_trainable_modules ?? "all").split(",").map((x) => x.trim());
    setGuessedFilter(s, base.layerModules, mods);
    return s;
  }
  if (spec.top != null) s = topN(s, spec.top);
  else if (spec.bottom != null) s = bottomN(s, spec.bottom);
  else if (spec.all_layers) s = setIds(s, Array.from({ length: base.numLayers }, (_, i) => i));
  else s = setIds(s, ids);
  setGuessedFilter(s, base.layerModules, spec.modules ?? []);
  for (const [id, mods] of Object.entries(spec.layer_modules ?? {})) {
    if (mods && mods.length) s.partial.set(Number(id), new Set(mods));
  }
  return s;
}

/** LLaMA-Factory's ids as it reads them: `"1,3"`, `[1, 3]` or `3`. */
export function idListIds(ids: number | number[] | string): number[] {
  if (typeof ids === "number") return [ids];
  if (Array.isArray(ids)) return ids;
  return ids
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean)
    .map(Number)
    .filter(Number.isInteger);
}

/** The filter button that says `modules`, or `custom` with the names kept as they are. */
function setGuessedFilter(s: Selection, layerModules: string[], modules: string[]) {
  if (modules.length === 0 || modules.includes("all")) {
    s.filter = "all";
    return;
  }
  const same = (f: ModuleFilter) => {
    const want = filterModules(layerModules, f);
    return want.length === modules.length && want.every((m) => modules.includes(m));
  };
  s.filter = same("attention") ? "attention" : same("mlp") ? "mlp" : "custom";
  s.custom = s.filter === "custom" ? [...modules] : [];
}
