import { describe, expect, it } from "vitest";
import { formatIds, parseCanonical } from "./ids";
import {
  bottomN,
  chosenModules,
  clearLayers,
  emptySelection,
  filterModules,
  fromSpec,
  idsText,
  invert,
  setFilter,
  setIds,
  setRange,
  toggleExtra,
  toggleLayer,
  toggleModule,
  topN,
  toSpec,
} from "./selection";

const MODULES = ["self_attn", "mlp", "input_layernorm", "post_attention_layernorm"];
const base = () => emptySelection(8, MODULES);

describe("layer ids", () => {
  it("formats canonically, like the Rust grammar", () => {
    expect(formatIds([15, 1, 2, 10, 11, 12, 13, 14, 20])).toBe("1-2,10-15,20");
    expect(formatIds([3])).toBe("3");
    expect(formatIds([])).toBe("");
    expect(formatIds([4, 4, 5])).toBe("4-5");
  });
  it("reads canonical text back", () => {
    expect(parseCanonical("1-2,10-12,20")).toEqual([1, 2, 10, 11, 12, 20]);
    expect(parseCanonical("")).toEqual([]);
    expect(() => parseCanonical("1,,2")).toThrow(/not canonical/);
  });
});

describe("picker gestures", () => {
  it("click toggles, shift-click fills a range, drag paints", () => {
    let s = toggleLayer(base(), 1);
    expect(idsText(s)).toBe("1");
    s = setRange(s, 1, 5, true);
    expect(idsText(s)).toBe("1-5");
    s = toggleLayer(s, 3);
    expect(idsText(s)).toBe("1-2,4-5");
    s = setRange(s, 5, 2, false);
    expect(idsText(s)).toBe("1");
    s = setRange(s, -3, 99, true);
    expect(idsText(s)).toBe("0-7");
  });

  it("module cells make partial layers and whole layers again", () => {
    let s = toggleModule(base(), 2, "mlp");
    expect(s.layers.has(2)).toBe(false);
    expect([...chosenModules(s, 2)]).toEqual(["mlp"]);
    expect(idsText(s)).toBe("2");
    s = setIds(s, [5]);
    s = toggleModule(s, 5, "mlp");
    expect([...chosenModules(s, 5)].sort()).toEqual(["input_layernorm", "post_attention_layernorm", "self_attn"]);
    s = toggleModule(s, 5, "mlp");
    expect(s.layers.has(5)).toBe(true);
    expect(s.partial.has(5)).toBe(false);
    s = toggleModule(toggleModule(s, 1, "mlp"), 1, "mlp");
    expect(s.partial.has(1)).toBe(false);
    expect(s.layers.has(1)).toBe(false);
  });

  it("presets, invert and clear", () => {
    expect(idsText(topN(base(), 2))).toBe("6-7");
    expect(idsText(bottomN(base(), 3))).toBe("0-2");
    expect(idsText(topN(base(), 99))).toBe("0-7");
    expect(idsText(topN(base(), -1))).toBe("");
    const inv = invert(setIds(base(), [0, 1, 7]));
    expect(idsText(inv)).toBe("2-6");
    const partInv = invert(toggleModule(base(), 3, "mlp"));
    expect([...chosenModules(partInv, 3)].sort()).toEqual(["input_layernorm", "post_attention_layernorm", "self_attn"]);
    expect(idsText(clearLayers(toggleExtra(topN(base(), 2), "norm")))).toBe("");
  });

  it("rows show attention, then MLP, then norms", () => {
    expect(emptySelection(2, ["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"]).layerModules).toEqual([
      "self_attn",
      "mlp",
      "input_layernorm",
      "post_attention_layernorm",
    ]);
  });

  it("module filters pick attention or MLP modules", () => {
    expect(filterModules(MODULES, "attention")).toEqual(["self_attn"]);
    expect(filterModules(MODULES, "mlp")).toEqual(["mlp"]);
    expect(filterModules(["attn", "ffn", "ln_1"], "mlp")).toEqual(["ffn"]);
    expect(filterModules(MODULES, "all")).toEqual(MODULES);
  });
});

describe("specs", () => {
  it("native specs say what was chosen", () => {
    expect(toSpec(topN(base(), 2))).toEqual({ top: 2 });
    expect(toSpec(bottomN(base(), 1))).toEqual({ bottom: 1 });
    expect(toSpec(base())).toEqual({ no_layers: true });
    let s = toggleExtra(setIds(base(), [1, 2, 4]), "norm");
    s = setFilter(s, "mlp");
    expect(toSpec(s)).toEqual({ layers: "1-2,4", modules: ["mlp"], extra: ["norm"] });
    s = toggleModule(setIds(base(), [0]), 3, "self_attn");
    expect(toSpec(s)).toEqual({ layers: "0", layer_modules: { "3": ["self_attn"] } });
    // A top-N choice edited by a module cell is no longer "top N".
    const edited = toSpec(toggleModule(topN(base(), 2), 7, "mlp"));
    expect(edited.layers).toBe("6");
    expect(Object.keys(edited.layer_modules ?? {})).toEqual(["7"]);
  });

  it("LLaMA-Factory specs use LLaMA-Factory's arguments", () => {
    const lf = (s: ReturnType<typeof base>) => toSpec({ ...s, llamafactory: true });
    expect(lf(topN(base(), 2))).toEqual({ llamafactory: { freeze_trainable_layers: 2, freeze_trainable_modules: "all" } });
    expect(lf(bottomN(base(), 3)).llamafactory?.freeze_trainable_layers).toBe(-3);
    expect(lf(toggleExtra(setFilter(setIds(base(), [1, 3]), "attention"), "norm"))).toEqual({
      llamafactory: { freeze_trainable_layers_ids: "1,3", freeze_trainable_modules: "self_attn", freeze_extra_modules: "norm" },
    });
  });

  it("a spec read back gives the same spec", () => {
    const cases = [
      topN(base(), 3),
      bottomN(base(), 2),
      toggleExtra(setFilter(setIds(base(), [1, 2, 6]), "mlp"), "embed_tokens"),
      toggleModule(setIds(base(), [0, 1]), 4, "mlp"),
      { ...topN(base(), 2), llamafactory: true },
      { ...toggleExtra(setIds(base(), [2, 5]), "norm"), llamafactory: true },
      { ...topN(base(), 4), schedule: { kind: "cycle" as const, interval: 5, group: 2 } },
      { ...setIds(base(), [1, 2, 3]), schedule: { kind: "sample" as const, gamma: 2, always: ["embed_tokens"] } },
    ];
    for (const s of cases) {
      const spec = toSpec(s);
      const ids = [...s.layers].sort((a, b) => a - b);
      expect(toSpec(fromSpec(base(), spec, ids))).toEqual(spec);
    }
  });
});

describe("layer schedules", () => {
  it("travel with the spec, survive gestures, and a static one says nothing", () => {
    const s = { ...topN(base(), 2), schedule: { kind: "progressive" as const, lr_decay: 2.6 } };
    expect(toSpec(s)).toEqual({ top: 2, schedule: { kind: "progressive", lr_decay: 2.6 } });
    expect(toSpec(setFilter(s, "mlp")).schedule).toEqual({ kind: "progressive", lr_decay: 2.6 });
    expect(toSpec({ ...s, llamafactory: true }).schedule?.kind).toBe("progressive");
    expect(toSpec({ ...s, schedule: { kind: "static" } }).schedule).toBeUndefined();
    expect(toSpec({ ...s, schedule: null }).schedule).toBeUndefined();
  });
});

describe("saved specs the picker has no button for", () => {
  it("keeps sub-path modules instead of widening to every tensor", () => {
    const spec = { layers: "1-2", modules: ["self_attn.q_proj"], layer_modules: { "5": ["mlp.down_proj"] } };
    const s = fromSpec(base(), spec, [1, 2]);
    expect(s.filter).toBe("custom");
    expect(toSpec(s)).toEqual(spec);
    // A click on a whole layer trains the same custom modules.
    expect(toSpec(toggleLayer(s, 3)).layers).toBe("1-3");
    expect(toSpec(toggleLayer(s, 3)).modules).toEqual(["self_attn.q_proj"]);
  });

  it("reads LLaMA-Factory ids in every spelling, and its default of two layers", () => {
    const lf = (args: Record<string, unknown>) => fromSpec(base(), { llamafactory: args }, []);
    expect(idsText(lf({ freeze_trainable_layers_ids: "1,3" }))).toBe("1,3");
    expect(idsText(lf({ freeze_trainable_layers_ids: [2, 4] }))).toBe("2,4");
    expect(idsText(lf({ freeze_trainable_layers_ids: 6 }))).toBe("6");
    expect(idsText(lf({}))).toBe("6-7");
    expect(idsText(lf({ freeze_trainable_layers: -3 }))).toBe("0-2");
  });

  it("never sends an empty module list for a layer", () => {
    const s = toggleModule(toggleModule(base(), 2, "mlp"), 2, "mlp");
    expect(toSpec(s).layer_modules).toBeUndefined();
  });
});
