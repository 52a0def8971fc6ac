// A saved freeze choice (a run's or a preset's `[freeze]` table) as a line a person reads, never as raw JSON.
import type { FreezeSpec } from "./bindings/FreezeSpec";
import type { ScheduleSpec } from "./bindings/ScheduleSpec";

function layers(spec: FreezeSpec): string {
  if (spec.top != null) return `top ${spec.top} layer${spec.top === 1 ? "" : "s"}`;
  if (spec.bottom != null) return `bottom ${spec.bottom} layer${spec.bottom === 1 ? "" : "s"}`;
  if (spec.all_layers) return "all layers";
  if (spec.layers != null) return `layers ${spec.layers}`;
  return "no layers";
}

function schedule(s: ScheduleSpec): string {
  const every = (fallback: number, unit: string) => {
    const n = s.interval ?? fallback;
    const u = s.unit ?? unit;
    return n === 1 ? `every ${u.replace(/s$/, "")}` : `every ${n} ${u}`;
  };
  const state = s.optimizer_state ? `, optimizer state ${s.optimizer_state}` : "";
  switch (s.kind) {
    case "progressive":
      return `gradual unfreezing, ${s.group ?? 1} layer(s) ${every(1, "epochs")}${s.lr_decay ? `, LR ÷${s.lr_decay} per group` : ""}${state}`;
    case "cycle":
      return `block cycling (${s.order ?? "ascending"}), ${s.group ?? 1} layer(s) ${every(50, "steps")}${state}`;
    case "sample":
      return `layer sampling, ${s.gamma ?? 2} layer(s) ${every(20, "steps")}${state}`;
    default:
      return "";
  }
}

export function describeFreeze(spec: FreezeSpec): string {
  const parts: string[] = [];
  const lf = spec.llamafactory;
  if (lf) {
    const ids = lf.freeze_trainable_layers_ids;
    const k = lf.freeze_trainable_layers ?? 2;
    parts.push(
      ids != null
        ? `LLaMA-Factory: layers ${Array.isArray(ids) ? ids.join(",") : String(ids)}`
        : `LLaMA-Factory: ${k >= 0 ? "last" : "first"} ${Math.abs(k)} layers`,
    );
    if (lf.freeze_trainable_modules && lf.freeze_trainable_modules !== "all") parts.push(`modules ${lf.freeze_trainable_modules}`);
    if (lf.freeze_extra_modules) parts.push(`+ ${lf.freeze_extra_modules.split(",").join(", ")}`);
  } else {
    parts.push(layers(spec));
    if (spec.modules?.length) parts.push(`(${spec.modules.join(", ")} only)`);
    for (const [id, mods] of Object.entries(spec.layer_modules ?? {})) parts.push(`+ layer ${id} ${(mods ?? []).join(", ")}`);
    if (spec.extra?.length) parts.push(`+ ${spec.extra.join(", ")}`);
  }
  const text = parts.join(" ");
  return spec.schedule && spec.schedule.kind !== "static" ? `${text}; ${schedule(spec.schedule)}` : text;
}
