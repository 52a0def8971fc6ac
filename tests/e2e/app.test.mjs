// The real desktop app under Xvfb, driven through tauri-driver and WebKitWebDriver (started by run.sh). It opens the
// built-in demo, picks layers by clicking and shift-clicking and checks the ids field and the summary against
// `freezetune plan` for the same choice, types ids, saves a preset and finds it with the CLI, trains on the demo
// and watches progress and the loss curve move, stops. Screenshots go to test-results/e2e/.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { Session, sleep } from "./webdriver.mjs";

const ROOT = resolve(import.meta.dirname, "../..");
const APP = process.env.FREEZETUNE_APP;
const CLI = process.env.FREEZETUNE_CLI;
const DRIVER = process.env.WEBDRIVER_URL ?? "http://127.0.0.1:4444";
const SHOTS = resolve(ROOT, "test-results/e2e");
const DATA = process.env.FREEZETUNE_DATA_DIR;
const DEMO_MODEL = join(DATA, "demo/model");

let s;

/** Canonical layer ids ("1-2,5"), as the app writes them. */
const formatIds = (ids) =>
  ids
    .reduce((runs, id) => {
      const last = runs[runs.length - 1];
      if (last && id === last[1] + 1) last[1] = id;
      else runs.push([id, id]);
      return runs;
    }, [])
    .map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`))
    .join(",");
const cli = (...args) => JSON.parse(execFileSync(CLI, args, { encoding: "utf8", env: process.env }));
const ids = async () => s.value(await s.find("layer-ids"));
const settled = () => s.waitFor("layer-picker", async (el) => (await s.attr(el, "data-pending")) === "false");
/// Sets a <select> (or input) by test id as a user's choice does: the value, then a change event.
const choose = (testId, value) =>
  s.execute(
    `const el = document.querySelector('[data-testid="' + arguments[0] + '"]'); el.value = arguments[1];
     el.dispatchEvent(new Event("change", { bubbles: true }));`,
    [testId, value],
  );
async function shot(name) {
  writeFileSync(join(SHOTS, `${name}.png`), await s.screenshot());
  console.log(`screenshot: ${join(SHOTS, `${name}.png`)}`);
}
async function rowStates(n) {
  return s.execute(
    `return Array.from({length: arguments[0]}, (_, i) => document.querySelector('[data-testid="layer-' + i + '"]').dataset.state)`,
    [n],
  );
}

before(async () => {
  assert.ok(APP && CLI && DATA, "run through tests/e2e/run.sh (FREEZETUNE_APP, FREEZETUNE_CLI, FREEZETUNE_DATA_DIR)");
  mkdirSync(SHOTS, { recursive: true });
  s = await Session.start(DRIVER, APP);
  await s.waitFor("nav-layers");
  await s.clickId("nav-layers");
  await s.waitFor("layer-7");
  await settled();
});

after(async () => {
  await s?.end().catch(() => {});
});

describe("FreezeTune desktop app", () => {
  it("opens on the demo model with its run's layers", async () => {
    assert.equal(await ids(), "4-7");
    assert.equal(await s.attrOf("layer-5", "data-state"), "trainable");
    assert.equal(await s.attrOf("layer-0", "data-state"), "frozen");
    assert.equal(await s.attrOf("extra-norm", "data-state"), "trainable");
    await shot("layers");
  });

  it("export for a cluster: the demo run becomes a LLaMA-Factory folder and an Axolotl folder with their freeze selections and its rows", async () => {
    await s.clickId("nav-train");
    await s.waitFor("cluster-export");
    await s.type(await s.find("cluster-gpus"), "2");
    // Exports with the engine chosen; the finished export's folder (a new one each time).
    const exportTo = async (engine, previous) => {
      await choose("cluster-engine", engine);
      await s.clickId("cluster-export-start");
      for (let i = 0; i < 600; i++) {
        const failed = await s.findAll('[data-testid="cluster-export-error"]');
        assert.equal(failed.length, 0, `export failed: ${failed.length ? await s.text(failed[0]) : ""}`);
        const done = await s.findAll('[data-testid="cluster-export-done"]');
        if (done.length && (await s.attr(done[0], "data-dir")) !== previous) return done[0];
        await sleep(100);
      }
      assert.fail(`the ${engine} export neither finished nor failed in 60 s`);
    };
    const done = await exportTo("llamafactory", null);
    const dir = await s.attr(done, "data-dir");
    const yaml = readFileSync(join(dir, "train.yaml"), "utf8");
    assert.match(yaml, /^freeze_trainable_layers: 4$/m, "layers 4-7 of 8 are LLaMA-Factory's last 4");
    assert.match(yaml, /^freeze_extra_modules: norm$/m);
    // LLaMA-Factory matches `norm` inside every layer's norms too: the nearest form, its difference shown.
    assert.match(yaml, /NOT EXACT/);
    assert.match(await s.text(done), /also trains 8 tensor/);
    assert.match(yaml, /^deepspeed: "ds_z3_config.json"$/m);
    const rows = readFileSync(join(dir, "data/train_alpaca.jsonl"), "utf8").trim().split("\n").length;
    const demoRows = readFileSync(join(DATA, "demo/data.jsonl"), "utf8").trim().split("\n").length;
    assert.equal(rows, demoRows, "every demo row, as the run trains on it");
    assert.equal(Number(await s.attr(done, "data-rows")), demoRows);
    assert.match(readFileSync(join(dir, "launch.sh"), "utf8"), /NPROC_PER_NODE=2 llamafactory-cli train train.yaml/);
    await s.execute(
      `document.querySelector('[data-testid="cluster-export-done"]').scrollIntoView({ block: "end", behavior: "instant" })`,
    );
    await sleep(300);
    await shot("cluster-export");
    const axolotl = await exportTo("axolotl", dir);
    const axolotlDir = await s.attr(axolotl, "data-dir");
    assert.match(axolotlDir, /axolotl-1$/);
    const config = readFileSync(join(axolotlDir, "config.yml"), "utf8");
    // Exact patterns: layers 4-7 whole and the final norm alone (not every layer's norms).
    assert.match(config, /^unfrozen_parameters:\n {2}- '\^model\.layers\.\(4\|5\|6\|7\)\.'\n {2}- '\^model\.norm\.weight\$'$/m);
    assert.match(config, /^deepspeed: "ds_z3_config.json"$/m);
    const conversations = readFileSync(join(axolotlDir, "data/train.jsonl"), "utf8").trim().split("\n").length;
    assert.equal(conversations, demoRows, "every demo row as a conversation");
    assert.match(readFileSync(join(axolotlDir, "launch.sh"), "utf8"), /axolotl train config.yml "\$@" -- --num_processes 2/);
    await s.clickId("nav-layers");
    await s.waitFor("layer-7");
  });

  it("click and shift-click agree with `freezetune plan`", async () => {
    await s.clickId("clear-selection");
    await settled();
    await s.clickId("layer-2");
    await settled();
    assert.equal(await ids(), "2");
    await s.shiftClick(await s.find("layer-5"));
    await s.waitFor("layer-ids", async (el) => (await s.value(el)) === "2-5");
    await settled();
    const plan = cli("plan", DEMO_MODEL, "--layers", "2-5", "--extra", "norm", "--json");
    assert.equal(await s.attrOf("trainable-params", "data-value"), String(plan.trainable_params));
    assert.equal(await s.value(await s.find("layer-ids")), plan.trainable_layer_ids);
    assert.deepEqual(await rowStates(8), plan.layers.map((l) => l.state));
  });

  it("typed ids update the rows; bad ids show an error", async () => {
    const field = await s.find("layer-ids");
    await s.type(field, "0,6-7");
    await s.waitFor("layer-0", async (el) => (await s.attr(el, "data-state")) === "trainable");
    await settled();
    assert.deepEqual(await rowStates(8), ["trainable", "frozen", "frozen", "frozen", "frozen", "frozen", "trainable", "trainable"]);
    const plan = cli("plan", DEMO_MODEL, "--layers", "0,6-7", "--extra", "norm", "--json");
    assert.equal(await s.attrOf("trainable-params", "data-value"), String(plan.trainable_params));
    // A valid choice, then keystrokes that make it invalid: the rows keep the last valid choice.
    await s.type(field, "1");
    await s.waitFor("layer-1", async (el) => (await s.attr(el, "data-state")) === "trainable");
    await settled();
    await s.append(field, ",,2");
    await s.waitFor("layer-ids-error", async (el) => /empty entry/.test(await s.text(el)));
    await settled();
    assert.deepEqual(await rowStates(3), ["frozen", "trainable", "frozen"], "bad ids leave the last good choice");
    assert.equal(await s.attrOf("goto-train", "disabled"), "true", "bad ids never reach training");
    await s.type(field, "12");
    await s.waitFor("layer-ids-error", async (el) => /12/.test(await s.text(el)));
    await s.type(field, "0,6-7");
    await s.waitFor("layer-6", async (el) => (await s.attr(el, "data-state")) === "trainable");
    await settled();
    assert.deepEqual(await rowStates(8), ["trainable", "frozen", "frozen", "frozen", "frozen", "frozen", "trainable", "trainable"]);
    assert.equal((await s.findAll('[data-testid="layer-ids-error"]')).length, 0);
  });

  it("a preset saved in the app is seen by the CLI", async () => {
    await s.clickId("nav-presets");
    await s.type(await s.waitFor("preset-name"), "e2e-preset");
    await s.clickId("save-preset");
    await s.waitFor("preset-item");
    await shot("presets");
    const list = cli("preset", "list", "--json");
    const saved = list.find((p) => p.name === "e2e-preset");
    assert.ok(saved, JSON.stringify(list));
    assert.equal(saved.preset.freeze.layers, "0,6-7");
    assert.deepEqual(saved.preset.freeze.extra, ["norm"]);
  });

  it("trains the demo: progress and the loss curve move, then stop", async () => {
    await s.clickId("nav-train");
    await s.clickId("preview-dataset");
    await s.waitFor("dataset-preview");
    assert.equal(await s.attrOf("start-training", "disabled"), null, "start is enabled");
    await s.clickId("start-training");
    const stepOf = async () => Number(await s.attrOf("train-progress", "data-step"));
    await s.waitFor("train-progress", async (el) => Number(await s.attr(el, "data-step")) >= 3, 120000);
    const first = await stepOf();
    const firstPoints = Number(await s.attrOf("loss-chart", "data-points"));
    assert.equal(await s.attrOf("train-progress", "data-total-steps"), "300");
    await sleep(1500);
    await s.waitFor("train-progress", async (el) => Number(await s.attr(el, "data-step")) > first + 2, 60000);
    assert.ok(Number(await s.attrOf("loss-chart", "data-points")) > firstPoints, "the loss curve grew");
    await shot("train");
    // auto on the CPU: f32, or bf16 matmuls on a CPU where they are twice f32's rate (AMD's AVX512-BF16, Intel's
    // AMX), the kernel named.
    assert.match(
      await s.text(await s.find("train-device")),
      /On cpu, (f32 compute with f32 master weights|bf16 compute with f32 master weights — .*bf16 on this CPU: .*\((AVX512-BF16|AMX)\))/,
    );
    await s.execute(`document.querySelector('[data-testid="dtype"]').scrollIntoView({ block: "center" })`);
    await sleep(300);
    await shot("train-device");
    await s.execute("window.scrollTo(0, 0)");
    await s.clickId("stop-training");
    const outcome = await s.waitFor("train-outcome", async () => true, 60000);
    assert.match(await s.text(outcome), /Stopped at step \d+/);
    await shot("train-stopped");
    const stoppedAt = Number(/Stopped at step (\d+)/.exec(await s.text(outcome))[1]);
    await s.clickId("nav-runs");
    await s.waitFor("run-item");
    await s.clickId("run-item");
    await s.waitFor("resume-run");
    await shot("runs");

    // Resume continues from the checkpoint, not from step 1.
    await s.clickId("resume-run");
    await s.waitFor("train-progress", async (el) => Number(await s.attr(el, "data-step")) > stoppedAt + 2, 60000);
    await s.waitFor("stop-training");
    await s.clickId("stop-training");
    await s.waitFor("train-outcome", async (el) => /Stopped at step/.test(await s.text(el)), 60000);
  });

  it("a short run finishes and the fine-tuned model answers in the try-it box", async () => {
    await s.clickId("nav-train");
    await s.type(await s.find("max-steps"), "4");
    await s.clickId("start-training");
    await s.waitFor("train-outcome", async (el) => /Finished after 4 steps/.test(await s.text(el)), 120000);
    await s.clickId("try-generate");
    const answered = async () => {
      const [el] = await s.findAll('[data-testid="try-output"], [data-testid="try-error"]');
      return el ? s.text(el) : null; // "" is an answer too (a reply of just the end-of-turn token)
    };
    let answer = null;
    for (let i = 0; i < 300 && answer === null; i++) {
      answer = await answered();
      if (answer === null) await sleep(100);
    }
    if (answer === null) await shot("try-it-no-answer");
    assert.notEqual(answer, null, "no answer from the try-it box");
    assert.equal((await s.findAll('[data-testid="try-error"]')).length, 0, `try-it failed: ${answer}`);
    await shot("train-finished");
    await s.clickId("nav-model");
    await s.waitFor("model-facts");
    await shot("model");
  });

  it("a training worker killed mid-run (SIGKILL) is reported; the app stays up and the run resumes", async () => {
    await s.clickId("nav-train");
    await s.type(await s.find("max-steps"), "300");
    await s.type(await s.find("save-steps"), "3");
    await s.clickId("start-training");
    await s.waitFor("train-progress", async (el) => Number(await s.attr(el, "data-step")) >= 7, 120000);
    // The worker is the CLI, started with a config file under the app's data folder.
    execFileSync("pkill", ["-KILL", "-f", `train --config ${join(DATA, "worker")}`]);
    const error = await s.waitFor("train-error", async () => true, 30000);
    const message = await s.text(error);
    assert.match(message, /killed by signal 9/, message);
    const saved = Number(/checkpoint at step (\d+)/.exec(message)?.[1]);
    assert.ok(saved >= 3, `the report names the checkpoint: ${message}`);
    await shot("train-worker-killed");
    // The app is still up and answers.
    await s.clickId("nav-layers");
    await settled();
    await s.clickId("nav-runs");
    await s.waitFor("run-item");
    await s.clickId("run-item");
    await s.clickId("resume-run");
    await s.waitFor("train-progress", async (el) => Number(await s.attr(el, "data-step")) > saved + 1, 60000);
    await s.clickId("stop-training");
    await s.waitFor("train-outcome", async (el) => /Stopped at step/.test(await s.text(el)), 60000);
    // The resumed run continued from the checkpoint: its metrics count 1, 2, 3, ... with no step twice.
    const runs = join(DATA, "runs");
    const newest = readdirSync(runs)
      .map((d) => join(runs, d, "metrics.jsonl"))
      .filter((f) => existsSync(f))
      .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
    const steps = readFileSync(newest, "utf8").trim().split("\n").map(JSON.parse).filter((l) => l.loss !== undefined).map((l) => l.step);
    assert.deepEqual(steps, steps.map((_, i) => i + 1), `steps of ${newest}`);
    assert.ok(steps.length > saved + 1);
  });

  it("downloads from the (fake) Hub: progress, cancel, resume, then a gated repo asks for a token", async () => {
    await s.clickId("nav-model");
    const repo = await s.waitFor("download-repo");
    await s.type(repo, "acme/tiny-llama");
    await s.clickId("download-start");
    await s.waitFor("download-progress", async (el) => Number(await s.attr(el, "data-done")) > 0, 30000);
    await shot("download");
    await s.clickId("download-cancel");
    const error = await s.waitFor("download-error", async () => true, 30000);
    assert.match(await s.text(error), /cancel/i);
    await s.clickId("download-start");
    // The finished download opens the model on the Layers screen.
    await s.waitFor("header-model", async (el) => /acme\/tiny-llama/.test(await s.text(el)), 60000);
    await s.waitFor("layer-7");
    await s.clickId("nav-model");
    await s.waitFor("cached-model");
    assert.equal(await s.attrOf("cached-model", "data-repo"), "acme/tiny-llama");
    await s.type(await s.find("download-repo"), "acme/gated-llama");
    await s.clickId("download-start");
    await s.waitFor("hub-token", async () => true, 30000);
    assert.match(await s.text(await s.find("download-error")), /gated|token/i);
    await shot("download-gated");
  });

  it("Hub search says which models train here and fit; a Hub dataset is picked by config and split, downloaded, mapped, mixed and previewed", async () => {
    const rows = () =>
      s.execute(
        `return Array.from(document.querySelectorAll('[data-testid="hub-hit"]'), (li) => ({ ...li.dataset }))`,
      );
    const until = async (what, check, timeoutMs = 30000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await sleep(200);
      }
    };
    await s.clickId("nav-model");
    await s.type(await s.waitFor("hub-search-query"), "acme");
    await s.clickId("hub-search");
    const models = await until("every model row checked", async () => {
      const r = await rows();
      return r.length > 0 && r.every((x) => x.checked) && r;
    });
    assert.deepEqual(models.map((r) => r.repo), ["acme/tiny-llama", "acme/gated-llama"], "models only, most downloaded first");
    const tiny = models[0];
    assert.equal(tiny.trains, "true");
    assert.equal(tiny.fits, "true");
    assert.equal(models[1].checked, "error", "a gated repo without a token cannot be read");
    // The CLI's check of the same repo counts the same need.
    const fromCli = cli("search", "tiny-llama", "--json");
    assert.equal(Number(tiny.need), fromCli[0].check.fit.need_bytes);
    assert.equal(fromCli[0].check.training_unsupported, null);
    await shot("hub-search");

    await choose("hub-search-kind", "dataset");
    await s.clickId("hub-search");
    await until("the dataset row", async () => (await rows()).some((r) => r.repo === "acme/chat-data"));
    await s.clickId("hub-hit-use");
    // The Train screen's picker looks the repo up: its configs and splits as the CLI lists them.
    await s.waitFor("hub-dataset", async () => true, 30000);
    const options = (testId) =>
      s.execute(`return Array.from(document.querySelectorAll('[data-testid="${testId}"] option'), (o) => o.value)`);
    const configs = cli("data", "configs", "acme/chat-data", "--json");
    assert.deepEqual(await options("hub-dataset-config"), configs.map((c) => c.name));
    assert.deepEqual(await options("hub-dataset-split"), configs.find((c) => c.name === "en").splits);
    // What the chosen config downloads: en's train and test files, not fr's.
    assert.match(await s.text(await s.find("hub-dataset-size")), /: 3 data files, .*; config en: 2 files, .* to download/);
    await s.clickId("hub-dataset-download");
    const entries = () =>
      s.execute(`return Array.from(document.querySelectorAll('[data-testid="dataset-entry"]'), (li) => ({ ...li.dataset }))`);
    await until("the en dataset, detected as alpaca", async () => {
      const e = await entries();
      return e.length === 1 && e[0].label === "acme/chat-data (train)" && e[0].formatting === "alpaca";
    });
    // The second config, OpenAI messages: detected as sharegpt with role/content tags.
    await s.type(await s.find("hub-dataset-repo"), "acme/chat-data");
    await s.clickId("hub-dataset-lookup");
    await s.waitFor("hub-dataset-config");
    await choose("hub-dataset-config", "fr");
    assert.match(await s.text(await s.find("hub-dataset-size")), /config fr: 1 file, .* to download/);
    await s.clickId("hub-dataset-download");
    await until("the fr dataset, detected as sharegpt", async () => {
      const e = await entries();
      return e.length === 2 && e[1].label === "acme/chat-data (fr / train)" && e[1].formatting === "sharegpt";
    });
    await choose("dataset-mix", "interleave_under");
    await s.execute(
      `const boxes = document.querySelectorAll('[data-testid="dataset-weight"]');
       [3, 1].forEach((w, i) => { boxes[i].value = String(w); boxes[i].dispatchEvent(new Event("change", { bubbles: true })); });`,
    );
    await until("the shares", async () => {
      const shares = await s.execute(
        `return Array.from(document.querySelectorAll('[data-testid="dataset-share"]'), (e) => e.textContent)`,
      );
      return shares.join(" ") === "75% 25%";
    });
    // Evaluation: nothing, a held-out fraction, or the en config's test split from the same download.
    const evalLabels = () =>
      s.execute(`return Array.from(document.querySelectorAll('[data-testid="eval-choice"] option'), (o) => o.textContent)`);
    const evalShown = () =>
      s.execute(`const el = document.querySelector('[data-testid="eval-choice"]'); return el.options[el.selectedIndex].textContent`);
    assert.deepEqual(await evalLabels(), ["nothing", "a held-out fraction of the training rows", "acme/chat-data (test)"]);
    await choose("eval-choice", "1");
    await s.waitFor("eval-fraction");
    await choose("eval-choice", "2");
    await until("the test split chosen", async () => (await evalShown()) === "acme/chat-data (test)");
    assert.equal(await s.execute(`return document.querySelector('[data-testid="eval-fraction"]') === null`), true);
    await s.clickId("preview-dataset");
    const preview = await s.waitFor("dataset-preview", async () => true, 30000);
    assert.match(await s.text(preview), /line \d+/);
    await s.execute(`document.querySelector('[data-testid="dataset-picker"]').scrollIntoView({ block: "start" })`);
    await shot("dataset-picker");
  });

  it("LLaMA-Factory mode: the rows, the count and the YAML are LLaMA-Factory's, as the CLI computes them", async () => {
    await s.clickId("nav-model");
    await s.clickId("open-demo");
    await s.waitFor("header-model", async (el) => /demo/.test(await s.text(el)));
    await s.waitFor("layer-7");
    const field = await s.find("layer-ids");
    await s.type(field, "1,3");
    await s.waitFor("layer-3", async (el) => (await s.attr(el, "data-state")) === "trainable");
    await settled();
    await s.click(await s.find("llamafactory-mode"));
    const yaml = await s.waitFor("llamafactory-yaml", async (el) => /freeze_trainable_layers_ids/.test(await s.text(el)));
    await settled();
    const lf = ["--freeze-trainable-layers-ids", "1,3", "--freeze-trainable-modules", "all", "--freeze-extra-modules", "norm"];
    const plan = cli("plan", DEMO_MODEL, ...lf, "--json");
    assert.equal(plan.mode, "llamafactory");
    assert.equal(await s.attrOf("trainable-params", "data-value"), String(plan.trainable_params));
    assert.deepEqual(await rowStates(8), plan.layers.map((l) => l.state));
    const expected = execFileSync(CLI, ["export-config", DEMO_MODEL, "--format", "llamafactory", ...lf], { encoding: "utf8" });
    assert.equal((await s.text(yaml)).trim(), expected.trim());
    // Nothing flips back later (focus changes, late answers).
    await sleep(1500);
    assert.equal(await s.attrOf("trainable-params", "data-value"), String(plan.trainable_params));
    await shot("layers-llamafactory");
    await s.click(await s.find("llamafactory-mode"));
    await settled();
  });

  it("layer schedules: a timeline for each kind as the CLI computes it, and a 2-phase run marks its switch", async () => {
    await s.clickId("nav-layers");
    await s.type(await s.find("layer-ids"), "4-7");
    await s.waitFor("layer-4", async (el) => (await s.attr(el, "data-state")) === "trainable");
    await settled();
    const steps = 40;
    for (const kind of ["progressive", "cycle", "sample"]) {
      await choose("schedule-kind", kind);
      await s.waitFor("schedule-timeline", async (el) => (await s.attr(el, "data-kind")) === kind);
      await s.type(await s.find("timeline-steps"), String(steps));
      await choose("timeline-steps", String(steps));
      // Epochs are a run's business; the preview counts steps.
      const every = { progressive: "10", cycle: "5", sample: "8" }[kind];
      await choose("schedule-unit", "steps");
      await s.type(await s.find("schedule-interval"), every);
      await choose("schedule-interval", every);
      await sleep(500);
      const flags = ["--interval", every, "--unit", "steps"];
      const plan = cli("plan", DEMO_MODEL, "--layers", "4-7", "--extra", "norm", "--schedule", kind, ...flags,
        "--steps", String(steps), "--json");
      await s.waitFor("schedule-timeline", async (el) =>
        (await s.attr(el, "data-kind")) === kind && Number(await s.attr(el, "data-phases")) === plan.timeline.phases.length);
      await s.execute(`document.querySelector('[data-testid="schedule-timeline"]').scrollIntoView({ block: "center" })`);
      await sleep(300);
      await shot(`schedule-${kind}`);
    }
    // A cycle over blocks of two layers, switching every 2 steps: a 4-step run has two phases.
    await choose("schedule-kind", "cycle");
    await s.waitFor("schedule-timeline", async (el) => (await s.attr(el, "data-kind")) === "cycle");
    await s.type(await s.find("schedule-interval"), "2");
    await choose("schedule-interval", "2");
    await s.type(await s.find("schedule-group"), "2");
    await choose("schedule-group", "2");
    await s.execute("window.scrollTo(0, 0)");
    await s.clickId("nav-train");
    await s.type(await s.find("max-steps"), "4");
    await s.clickId("start-training");
    await s.waitFor("train-outcome", async (el) => /Finished after 4 steps/.test(await s.text(el)), 120000);
    assert.equal(await s.attrOf("loss-chart", "data-phase-marks"), "1", "one phase switch on the curve");
    await s.execute(`document.querySelector('[data-testid="loss-chart"]').scrollIntoView({ block: "center" })`);
    await sleep(300);
    await shot("schedule-run");
    await s.clickId("nav-runs");
    await s.waitFor("run-item");
    await s.clickId("run-item");
    const timeline = await s.waitFor("run-schedule");
    assert.match(await s.text(timeline), /block cycling over layers 4-7: 2 phases in 4 steps/);
    assert.equal(
      await s.text(await s.find("run-freeze")),
      "layers 4-7 + norm; block cycling (ascending), 2 layer(s) every 2 steps",
      "the run's freeze settings read as words",
    );
    await shot("runs-schedule");
    // Back to no schedule for whatever runs next.
    await s.clickId("nav-layers");
    await choose("schedule-kind", "static");
  });

  it("layer insight: measured bars on the stack, and a suggestion the CLI agrees with", async () => {
    await s.clickId("nav-layers");
    await s.execute(
      `const el = document.querySelector('[data-testid="probe-batches"]'); el.value = "1";
       el.dispatchEvent(new Event("input", { bubbles: true }));`,
    );
    await s.clickId("measure-layers");
    await s.waitFor("probe-summary", async () => true, 120000);
    assert.equal((await s.findAll('[data-testid^="heat-"]')).length, 8, "a bar on every layer");
    const report = cli("probe", "--config", join(DATA, "demo/run.toml"), "--batches", "1", "--suggest", "2", "--json");
    await s.clickId("suggest-layers");
    await s.waitFor("layer-ids", async (el) => (await s.value(el)) === report.suggestion.layers);
    const first = Number(report.suggestion.layers.split(/[,-]/)[0]);
    await s.waitFor(`layer-${first}`, async (el) => (await s.attr(el, "data-state")) === "trainable");
    await settled();
    await shot("layers-insight");
    // Opened again, the model shows its earlier measurement at once (from the cache; nothing is measured).
    await s.clickId("nav-model");
    await s.clickId("open-demo");
    await s.waitFor("layer-7");
    await s.waitFor("heat-7", async () => true, 15000);
    assert.equal((await s.findAll('[data-testid="probe-summary"]')).length, 1);
  });

  it("does it fit: a run too big for this machine gets changes with their estimates, and Apply makes it fit", async () => {
    await s.clickId("nav-train");
    const fit = () => s.attrOf("memory-fit", "data-fits");
    await s.waitFor("memory-fit");
    assert.equal(await fit(), "true", "the demo fits");
    const [cutoff, batch] = [await s.value(await s.find("cutoff-len")), await s.value(await s.find("batch-size"))];
    await s.type(await s.find("batch-size"), "64");
    await s.type(await s.find("cutoff-len"), "65536");
    await s.waitFor("memory-fit", async (el) => (await s.attr(el, "data-fits")) === "false");
    const kinds = await s.execute(
      `return Array.from(document.querySelectorAll('[data-testid="fit-change"]'), (li) => li.dataset.kind + ":" + li.dataset.fits)`,
    );
    assert.equal(kinds[0], "gradient_checkpointing:false", JSON.stringify(kinds));
    assert.ok(kinds.includes("cutoff:true"), `a shorter cutoff fits: ${JSON.stringify(kinds)}`);
    await s.execute(`document.querySelector('[data-testid="memory-fit"]').scrollIntoView({ block: "center" })`);
    await sleep(300);
    await shot("train-fit");
    await s.clickId("apply-cutoff");
    await s.waitFor("memory-fit", async (el) => (await s.attr(el, "data-fits")) === "true");
    assert.ok(Number(await s.value(await s.find("cutoff-len"))) < 65536, "Apply shortened the cutoff");
    await s.type(await s.find("batch-size"), batch);
    await s.type(await s.find("cutoff-len"), cutoff);
    await s.waitFor("memory-fit", async (el) => (await s.attr(el, "data-fits")) === "true");
  });

  it("compare runs: three runs' curves on one chart, and a table with their layer strips", async () => {
    await s.clickId("nav-runs");
    await s.waitFor("run-item");
    const boxes = await s.findAll('[data-testid="compare-run"]');
    assert.ok(boxes.length >= 3, `runs so far: ${boxes.length}`);
    for (const box of boxes.slice(0, 3)) await s.click(box);
    await s.waitFor("run-comparison", async (el) => (await s.attr(el, "data-runs")) === "3");
    await s.waitFor("compare-chart", async (el) => (await s.attr(el, "data-series")) === "3");
    const rows = await s.execute(
      `return Array.from(document.querySelectorAll('[data-testid="compare-row"]'), (r) =>
         [r.dataset.dir, r.querySelector('[data-testid="layer-strip"]')?.dataset.trained ?? null])`,
    );
    assert.equal(rows.length, 3);
    for (const [runDir, trained] of rows) {
      const plan = JSON.parse(readFileSync(join(runDir, "freeze_plan.json"), "utf8"));
      const expected = plan.layers.filter((l) => l.state !== "frozen").map((l) => l.id);
      assert.equal(trained, formatIds(expected), `${runDir}: the strip shows the run's layers`);
    }
    await shot("runs-compare");
  });
  it("export to GGUF: a finished run becomes a GGUF v3 file with an Ollama Modelfile beside it", async () => {
    await s.clickId("nav-runs");
    await s.waitFor("run-item");
    await s.execute(
      `Array.from(document.querySelectorAll('[data-testid="run-item"]')).find((b) => /finished/.test(b.textContent)).click()`,
    );
    await s.waitFor("gguf-export");
    await s.clickId("gguf-start");
    const done = await s.waitFor("gguf-done", async () => true, 60000);
    const path = await s.execute(`return document.querySelector('[data-testid="gguf-done"] code').textContent`);
    assert.match(await s.text(done), /q8_0/);
    const head = readFileSync(path).subarray(0, 8);
    assert.equal(head.subarray(0, 4).toString(), "GGUF");
    assert.equal(head.readUInt32LE(4), 3, "GGUF version 3");
    assert.match(readFileSync(join(dirname(path), "Modelfile"), "utf8"), /^FROM \.\//m);
    await s.execute(`document.querySelector('[data-testid="gguf-done"]').scrollIntoView({ block: "center" })`);
    await shot("runs-gguf");
    // A second export of the same type is not silently replaced.
    await s.clickId("gguf-start");
    await s.waitFor("gguf-error", async (el) => /already exists/.test(await s.text(el)));
    await s.waitFor("gguf-replace");
  });
  it("GGUF import runs in a worker: a crafted file is refused by field name, the app stays up, a sound file opens", async () => {
    // A minimal GGUF v3 whose only metadata is general.alignment = 0 (a division by zero for naive readers).
    const key = Buffer.from("general.alignment");
    const head = Buffer.alloc(24);
    head.write("GGUF", 0);
    head.writeUInt32LE(3, 4);
    head.writeBigUInt64LE(0n, 8); // tensors
    head.writeBigUInt64LE(1n, 16); // metadata entries
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(key.length));
    const value = Buffer.alloc(8);
    value.writeUInt32LE(4, 0); // type u32
    value.writeUInt32LE(0, 4);
    const hostile = join(DATA, "hostile-align0.gguf");
    writeFileSync(hostile, Buffer.concat([head, len, key, value]));
    // The import command as the Model screen calls it (its file picker is a native dialog WebDriver cannot drive).
    const importGguf = (path, taskId) =>
      s.execute(
        `const t = window.__TAURI_INTERNALS__;
         const ch = "__CHANNEL__:" + t.transformCallback(() => {});
         return t.invoke("import_gguf", { path: arguments[0], taskId: arguments[1], onEvent: ch })
           .then((ok) => ({ ok }), (err) => ({ err }));`,
        [path, taskId],
      );
    const refused = await importGguf(hostile, "e2e-import-hostile");
    assert.ok(refused.err, `the crafted file is refused: ${JSON.stringify(refused)}`);
    assert.equal(refused.err.kind, "bad_input", JSON.stringify(refused.err));
    assert.match(refused.err.message, /general\.alignment/);
    assert.ok(!existsSync(join(DATA, "imported/hostile-align0")), "a refused import writes nothing");
    // The window is still there and answers.
    await s.clickId("nav-runs");
    await s.waitFor("run-item");
    const exported = readdirSync(join(DATA, "runs"))
      .map((run) => join(DATA, "runs", run, "gguf"))
      .filter((dir) => existsSync(dir))
      .flatMap((dir) => readdirSync(dir).filter((f) => f.endsWith(".gguf")).map((f) => join(dir, f)))[0];
    assert.ok(exported, "the export test left a GGUF file");
    const opened = await importGguf(exported, "e2e-import-sound");
    assert.ok(opened.ok, `the exported file imports: ${JSON.stringify(opened)}`);
    assert.equal(opened.ok.architecture, "LlamaForCausalLM");
    assert.ok(existsSync(join(opened.ok.path, "config.json")), opened.ok.path);
  });
});
