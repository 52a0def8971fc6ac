import { describe, expect, it } from "vitest";
import type { DataSection } from "./bindings/DataSection";
import { datasetList, describeSpec, hubSpec, legacySpec, localSpec, setDatasets, shares } from "./datasets";

const section = (over: Partial<DataSection>): DataSection => ({
  train: "",
  datasets: [],
  mix: "concat",
  format: "auto",
  eval: null,
  eval_split: 0,
  cutoff_len: 1024,
  train_on_prompt: false,
  ...over,
});

describe("the dataset list", () => {
  it("shows the old single train file as its one entry, read with the same format", () => {
    const list = datasetList(section({ train: "/d/a.jsonl", format: "alpaca" }));
    expect(list).toEqual([{ path: "/d/a.jsonl", formatting: "alpaca", files: [], columns: {}, tags: {} }]);
    expect(datasetList(section({ train: "/d/m.jsonl", format: "messages" }))[0].formatting).toBeUndefined();
    expect(datasetList(section({}))).toEqual([]);
  });

  it("writes the list form and never leaves train beside it", () => {
    const data = section({ train: "/d/a.jsonl", format: "sharegpt" });
    setDatasets(data, [...datasetList(data), localSpec("/d/b.parquet")]);
    expect(data.train).toBe("");
    expect(data.format).toBe("auto");
    expect(data.datasets.map((d) => d.path)).toEqual(["/d/a.jsonl", "/d/b.parquet"]);
    expect(data.datasets[0].formatting).toBe("sharegpt");
  });

  it("names Hub datasets by repo, config and split", () => {
    const spec = hubSpec("org/chat", "/hub/datasets--org--chat/snapshots/abc", "en", "train");
    expect(spec.path).toBe("/hub/datasets--org--chat/snapshots/abc");
    expect(describeSpec(spec)).toBe("org/chat (en / train)");
    expect(describeSpec(hubSpec("org/chat", "/s", null, null))).toBe("org/chat");
    expect(legacySpec("/x.json", "text").formatting).toBe("text");
  });

  it("turns weights into shares as the loader does, and flags a partial set", () => {
    const a = localSpec("/a");
    const b = localSpec("/b");
    expect(shares([a, b])).toEqual([0.5, 0.5]);
    expect(shares([{ ...a, weight: 3 }, { ...b, weight: 1 }])).toEqual([0.75, 0.25]);
    expect(shares([{ ...a, weight: 3 }, b])).toBeNull();
    expect(shares([{ ...a, weight: 0 }, { ...b, weight: 1 }])).toBeNull();
  });
});
