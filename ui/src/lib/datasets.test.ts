import { describe, expect, it } from "vitest";
import type { DataSection } from "./bindings/DataSection";
import {
  currentEval,
  datasetList,
  describeSpec,
  evalChoices,
  followEval,
  hubSpec,
  legacySpec,
  localSpec,
  setDatasets,
  setEval,
  shares,
} from "./datasets";

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

describe("the evaluation set", () => {
  const chat = hubSpec("org/chat", "/hub/snap", "en", "train");
  chat.formatting = "sharegpt";
  const known = new Map([["org/chat|en", ["train", "test", "validation"]]]);

  it("offers nothing, a held-out fraction and the other splits of a Hub dataset, read from the same download", () => {
    const data = section({ datasets: [chat, localSpec("/d/a.jsonl")] });
    const labels = evalChoices(data, known).map((c) => c.label);
    expect(labels).toEqual([
      "nothing",
      "a held-out fraction of the training rows",
      "org/chat (en / test)",
      "org/chat (en / validation)",
    ]);
    expect(currentEval(data)).toEqual({ kind: "none" });
  });

  it("writes one evaluation source at most: a split, a fraction or nothing", () => {
    const data = section({ datasets: [{ ...chat, limit: 100, weight: 2 }], eval_split: 0.2 });
    setEval(data, { kind: "split", entry: 0, split: "test" });
    expect(data.eval_split).toBe(0);
    expect(data.eval_datasets).toEqual([{ ...chat, split: "test" }]);
    expect(data.eval_datasets![0].formatting).toBe("sharegpt");
    expect(currentEval(data)).toEqual({ kind: "split", entry: 0, split: "test" });
    setEval(data, { kind: "fraction" });
    expect(data.eval_datasets).toEqual([]);
    expect(data.eval_split).toBe(0.1);
    setEval(data, { kind: "none" });
    expect([data.eval_split, data.eval_datasets, data.eval]).toEqual([0, [], null]);
  });

  it("keeps what a run already names that the screen cannot build, and shows it", () => {
    const data = section({ datasets: [chat], eval: "/d/held.jsonl" });
    expect(currentEval(data)).toEqual({ kind: "given" });
    expect(evalChoices(data, new Map()).at(-1)!.label).toBe("the file /d/held.jsonl");
    setEval(data, { kind: "given" });
    expect(data.eval).toBe("/d/held.jsonl");
    // A split chosen before the splits were known (a reopened run) is still offered.
    const reopened = section({ datasets: [chat], eval_datasets: [{ ...chat, split: "test" }] });
    expect(evalChoices(reopened, new Map()).at(-1)!.label).toBe("org/chat (en / test)");
  });

  it("follows its training entry: a mapping edit is copied again, a removal takes it away", () => {
    const data = section({ datasets: [localSpec("/d/a.jsonl"), chat] });
    setEval(data, { kind: "split", entry: 1, split: "test" });
    const before = JSON.parse(JSON.stringify(data.datasets));
    data.datasets = [{ ...chat, columns: { messages: "turns" } }];
    followEval(data, before);
    expect(data.eval_datasets).toEqual([{ ...chat, columns: { messages: "turns" }, split: "test" }]);
    expect(currentEval(data)).toEqual({ kind: "split", entry: 0, split: "test" });
    const kept = JSON.parse(JSON.stringify(data.datasets));
    data.datasets = [];
    followEval(data, kept);
    expect([data.eval_datasets, data.eval_split]).toEqual([[], 0]);
  });
});
