import { describe, expect, it } from "vitest";
import { describeFreeze } from "./describe";

describe("describeFreeze", () => {
  it("says a native choice in words", () => {
    expect(describeFreeze({ top: 2 })).toBe("top 2 layers");
    expect(describeFreeze({ layers: "4-7", extra: ["norm"] })).toBe("layers 4-7 + norm");
    expect(describeFreeze({ all_layers: true, modules: ["mlp"] })).toBe("all layers (mlp only)");
    expect(describeFreeze({ layers: "1", layer_modules: { "3": ["self_attn"] } })).toBe("layers 1 + layer 3 self_attn");
  });

  it("says LLaMA-Factory's arguments and schedules", () => {
    expect(describeFreeze({ llamafactory: { freeze_trainable_layers: -3, freeze_extra_modules: "norm" } })).toBe(
      "LLaMA-Factory: first 3 layers + norm",
    );
    expect(describeFreeze({ layers: "4-7", schedule: { kind: "cycle", interval: 2, group: 2 } })).toBe(
      "layers 4-7; block cycling (ascending), 2 layer(s) every 2 steps",
    );
    expect(describeFreeze({ all_layers: true, schedule: { kind: "progressive", lr_decay: 2.6 } })).toBe(
      "all layers; gradual unfreezing, 1 layer(s) every epoch, LR ÷2.6 per group",
    );
    expect(describeFreeze({ top: 4, schedule: { kind: "sample", optimizer_state: "reset" } })).toBe(
      "top 4 layers; layer sampling, 2 layer(s) every 20 steps, optimizer state reset",
    );
    expect(describeFreeze({ top: 4, schedule: { kind: "static" } })).toBe("top 4 layers");
  });
});
