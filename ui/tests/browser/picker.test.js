// The built UI (ui/dist) in Debian's chromium through playwright-core, with the backend replaced by mock-ipc.js.
// Checks the picker's gestures on an 80-layer model, the ids field both ways, the train monitor and presets, and
// saves a screenshot of each screen under ui/test-results/playwright/.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import { chromium } from "playwright-core";

const DIST = resolve(import.meta.dirname, "../../dist");
const SHOTS = resolve(import.meta.dirname, "../../test-results/playwright");
const CHROMIUM = process.env.CHROMIUM_PATH ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };

let server, browser, page, base;

before(async () => {
  assert.ok(existsSync(join(DIST, "index.html")), "build the UI first (npm run build)");
  assert.ok(CHROMIUM, "chromium not found; install Debian's chromium or set CHROMIUM_PATH");
  mkdirSync(SHOTS, { recursive: true });
  server = createServer((req, res) => {
    const path = join(DIST, new URL(req.url, "http://x").pathname.replace(/^\/$/, "/index.html"));
    if (!path.startsWith(DIST) || !existsSync(path)) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" }).end(readFileSync(path));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.addInitScript({ path: resolve(import.meta.dirname, "mock-ipc.js") });
  await page.goto(base);
  await page.evaluate(() => localStorage.setItem("freezetune.screen", "layers"));
  await page.reload();
  await page.getByTestId("layer-79").waitFor();
});

after(async () => {
  await browser?.close();
  server?.close();
});

const ids = () => page.getByTestId("layer-ids").inputValue();
const state = (id) => page.getByTestId(`layer-${id}`).getAttribute("data-state");
const settled = () => page.waitForSelector('[data-testid="layer-picker"][data-pending="false"]');

describe("layer picker on an 80-layer model", () => {
  it("opens on the demo with the top two layers and draws every layer", async () => {
    await settled();
    assert.equal(await page.locator('[data-testid^="layer-"][role="option"]').count(), 80);
    assert.equal(await ids(), "78-79");
    assert.equal(await state(79), "trainable");
    assert.equal(await state(0), "frozen");
    // The stack reads like the model: lm_head on top, the final norm, the layers from the last down, embeddings.
    const order = await page.locator('[data-testid="layer-picker"] [data-testid]').evaluateAll((els) =>
      els.map((e) => e.dataset.testid).filter((id) => !/^layer-\d+-/.test(id)),
    );
    assert.deepEqual(order.slice(0, 4), ["extra-lm_head", "extra-norm", "layer-79", "layer-78"]);
    assert.equal(order.at(-1), "extra-embed_tokens");
    await page.screenshot({ path: join(SHOTS, "layers.png"), fullPage: false });
  });

  it("opens compact on a tall stack: the 80 layers in one screen's height, with the same gestures", async () => {
    assert.equal(await page.getByTestId("layer-picker").getAttribute("data-dense"), "true");
    const height = async () => {
      const top = await page.getByTestId("layer-79").boundingBox();
      const bottom = await page.getByTestId("layer-0").boundingBox();
      return bottom.y + bottom.height - top.y;
    };
    const compact = await height();
    assert.ok(compact < 900 * 0.85, `the compact stack is ${compact}px tall`);
    await page.getByTestId("layer-40").click();
    await settled();
    assert.equal(await ids(), "40,78-79");
    await page.getByTestId("layer-40").click();
    await settled();
    await page.getByTestId("layer-picker").scrollIntoViewIfNeeded();
    await page.screenshot({ path: join(SHOTS, "layers-compact.png"), fullPage: false });
    await page.getByTestId("compact-view").uncheck();
    assert.equal(await page.getByTestId("layer-picker").getAttribute("data-dense"), "false");
    assert.ok((await height()) > 2 * compact, "the full view is the tall one");
    await page.evaluate(() => window.scrollTo(0, 0));
  });

  it("click toggles, shift-click fills a range, and the ids field follows", async () => {
    await page.getByTestId("clear-selection").click();
    await page.getByTestId("layer-5").click();
    await settled();
    assert.equal(await ids(), "5");
    await page.getByTestId("layer-10").click({ modifiers: ["Shift"] });
    await settled();
    assert.equal(await ids(), "5-10");
    assert.equal(await state(7), "trainable");
    await page.getByTestId("layer-7").click();
    await settled();
    assert.equal(await ids(), "5-6,8-10");
    const value = Number(await page.getByTestId("trainable-params").getAttribute("data-value"));
    assert.equal(value, 5 * (4 * 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096));
  });

  it("dragging paints rows", async () => {
    await page.getByTestId("clear-selection").click();
    await page.getByTestId("layer-28").scrollIntoViewIfNeeded();
    const from = await page.getByTestId("layer-30").boundingBox();
    const to = await page.getByTestId("layer-26").boundingBox();
    await page.mouse.move(from.x + 20, from.y + from.height / 2);
    await page.mouse.down();
    await page.mouse.move(to.x + 20, to.y + to.height / 2, { steps: 8 });
    await page.mouse.up();
    await settled();
    assert.equal(await ids(), "26-30");
  });

  it("typing ids updates the rows; bad ids show an error and change nothing", async () => {
    await page.getByTestId("layer-ids").fill("1,2,10-15");
    await settled();
    assert.equal(await state(12), "trainable");
    assert.equal(await state(30), "frozen");
    await page.getByTestId("layer-ids").fill("1,,2");
    await page.getByTestId("layer-ids-error").waitFor();
    assert.match(await page.getByTestId("layer-ids-error").textContent(), /empty entry/);
    assert.equal(await state(12), "trainable");
    await page.getByTestId("layer-ids").fill("3,99");
    assert.match(await page.getByTestId("layer-ids-error").textContent(), /99/);
    await page.getByTestId("layer-ids").fill("3");
    await settled();
    assert.equal(await page.getByTestId("layer-ids-error").count(), 0);
    assert.equal(await state(12), "frozen");
  });

  it("keyboard: space toggles, shift+arrows extend", async () => {
    await page.getByTestId("clear-selection").click();
    await page.getByTestId("layer-40").focus();
    await page.keyboard.press("Space");
    await page.keyboard.press("Shift+ArrowUp");
    await page.keyboard.press("Shift+ArrowUp");
    await settled();
    assert.equal(await ids(), "40-42");
  });

  it("presets, invert, module cells and extra modules", async () => {
    await page.getByTestId("preset-n").fill("4");
    await page.getByTestId("preset-bottom").click();
    await settled();
    assert.equal(await ids(), "0-3");
    await page.getByTestId("preset-top").click();
    await settled();
    assert.equal(await ids(), "76-79");
    await page.getByTestId("invert-selection").click();
    await settled();
    assert.equal(await ids(), "0-75");
    await page.getByTestId("clear-selection").click();
    await page.getByTestId("layer-3-mlp").click();
    await settled();
    assert.equal(await state(3), "partial");
    assert.equal(await page.getByTestId("layer-3-mlp").getAttribute("data-state"), "trainable");
    assert.equal(await page.getByTestId("layer-3-self_attn").getAttribute("data-state"), "frozen");
    await page.getByTestId("extra-norm").click();
    await settled();
    assert.equal(await page.getByTestId("extra-norm").getAttribute("data-state"), "trainable");
  });

  it("tags each layer's attention kind and picks only the full-attention layers", async () => {
    // The mock model mixes five sliding-window layers with one full-attention layer, as Gemma 3 does.
    assert.equal(await page.getByTestId("kind-5").getAttribute("data-kind"), "full");
    assert.equal(await page.getByTestId("kind-4").getAttribute("data-kind"), "sliding");
    await page.getByTestId("pick-full-attention").click();
    await settled();
    const full = Array.from({ length: 13 }, (_, k) => 6 * k + 5).join(",");
    assert.equal(await ids(), full);
    assert.equal(await state(5), "trainable");
    assert.equal(await state(6), "frozen");
    await page.getByTestId("layer-5").scrollIntoViewIfNeeded();
    await page.screenshot({ path: join(SHOTS, "layers-kinds.png"), fullPage: false });
  });

  it("stays responsive: a click on an 80-layer model re-renders quickly (printed, not asserted)", async () => {
    const ms = await page.evaluate(async () => {
      const row = document.querySelector('[data-testid="layer-50"]');
      const t = performance.now();
      for (let i = 0; i < 20; i++) {
        row.dispatchEvent(new MouseEvent("mousedown", { bubbles: true, button: 0 }));
        window.dispatchEvent(new MouseEvent("mouseup"));
        await new Promise((r) => requestAnimationFrame(() => r()));
      }
      return (performance.now() - t) / 20;
    });
    console.log(`picker: ${ms.toFixed(1)} ms per click including a frame (80 layers, mocked backend)`);
  });
});

describe("train, presets and the other screens", () => {
  it("starts a run, shows progress and the loss curve, and stops it", async () => {
    await page.getByTestId("layer-ids").fill("70-79");
    await settled();
    await page.getByTestId("nav-train").click();
    await page.getByTestId("preview-dataset").click();
    await page.getByTestId("dataset-preview").waitFor();
    await page.getByTestId("dtype").selectOption("bf16");
    assert.match(await page.getByTestId("auto-note").textContent(), /auto picks cuda:0 \(NVIDIA H200\)/);
    // The mock's plan needs far more than the mock CPU has; on the GPU it fits.
    await page.getByTestId("device").selectOption("cpu");
    await page.waitForSelector('[data-testid="memory-fit"][data-fits="false"]');
    assert.match(await page.getByTestId("memory-fit").textContent(), /this machine has 48\.0 GiB free —\s+does not fit/);
    assert.equal(await page.locator('[data-testid="fit-change"][data-fits="true"]').count(), 2, "fewer layers and q4_k frozen layers fit");
    await page.getByTestId("memory-fit").scrollIntoViewIfNeeded();
    await page.screenshot({ path: join(SHOTS, "train-fit.png"), fullPage: false });
    // Quantized frozen layers are offered; Apply sets the Train screen's control and the need is asked again.
    assert.equal(await page.getByTestId("quantize-frozen").inputValue(), "none");
    const before = await page.getByTestId("memory-fit").textContent();
    await page.getByTestId("apply-quantize_frozen").click();
    assert.equal(await page.getByTestId("quantize-frozen").inputValue(), "q4_k");
    await page.waitForFunction((b) => document.querySelector('[data-testid="memory-fit"]')?.textContent !== b, before);
    assert.equal(await page.locator('[data-testid="fit-change"][data-kind="quantize_frozen"]').count(), 0, "nothing lighter");
    await page.getByTestId("quantize-frozen").scrollIntoViewIfNeeded();
    await page.screenshot({ path: join(SHOTS, "train-quantized.png"), fullPage: false });
    await page.getByTestId("device").selectOption("cuda:0");
    await page.waitForSelector('[data-testid="memory-fit"][data-fits="true"]');
    assert.match(await page.getByTestId("memory-fit").textContent(), /cuda:0 has 139 GiB free — fits/);
    await page.getByTestId("start-training").click();
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="train-progress"]')?.dataset.step) >= 30);
    const points = Number(await page.getByTestId("loss-chart").getAttribute("data-points"));
    assert.ok(points >= 30, `${points} points`);
    assert.equal(await page.getByTestId("train-progress").getAttribute("data-total-steps"), "300");
    assert.match(await page.getByTestId("train-device").textContent(), /On cpu, bf16 compute with f32 master weights/);
    assert.match(await page.getByTestId("train-device").textContent(), /Frozen weights 4\.16 GiB, 210 matrices held as q4_k/);
    await page.screenshot({ path: join(SHOTS, "train.png") });
    await page.screenshot({ path: join(SHOTS, "train-full.png"), fullPage: true });
    await page.getByTestId("stop-training").click();
    await page.getByTestId("train-outcome").waitFor();
    assert.match(await page.getByTestId("train-outcome").textContent(), /Stopped at step/);
  });

  it("saves a preset and lists it", async () => {
    await page.getByTestId("nav-presets").click();
    await page.getByTestId("preset-name").fill("top-ten");
    await page.getByTestId("save-preset").click();
    await page.locator('[data-testid="preset-item"][data-name="top-ten"]').waitFor();
    await page.screenshot({ path: join(SHOTS, "presets.png") });
    // Saving under a taken name asks before replacing.
    await page.getByTestId("save-preset").click();
    assert.match(await page.getByTestId("preset-error").textContent(), /exists; press Save again/);
  });

  it("loads a preset back into the picker, renames and duplicates it", async () => {
    await page.getByTestId("nav-layers").click();
    await page.getByTestId("layer-ids").fill("3");
    await settled();
    await page.getByTestId("nav-presets").click();
    const row = page.locator('[data-testid="preset-item"][data-name="top-ten"]');
    await row.getByTestId("load-preset").click();
    await page.getByTestId("layer-ids").waitFor();
    await settled();
    assert.equal(await ids(), "70-79");
    await page.getByTestId("nav-presets").click();
    await row.getByRole("button", { name: "Duplicate" }).click();
    await row.getByRole("button", { name: "OK" }).click();
    await page.locator('[data-testid="preset-item"][data-name="top-ten-copy"]').waitFor();
    await page.locator('[data-testid="preset-item"][data-name="top-ten-copy"]').getByRole("button", { name: "Rename" }).click();
    await page.getByLabel("New name").fill("bottom-copy");
    await page.getByRole("button", { name: "OK" }).click();
    await page.locator('[data-testid="preset-item"][data-name="bottom-copy"]').waitFor();
    assert.equal(await page.locator('[data-testid="preset-item"][data-name="top-ten-copy"]').count(), 0);
    // A preset of a Hub model that is not downloaded says so.
    await page.locator('[data-testid="preset-item"][data-name="hub-preset"]').getByTestId("load-preset").click();
    assert.match(await page.getByTestId("preset-error").textContent(), /acme\/not-downloaded is not downloaded/);
  });

  it("downloads with progress, cancels, and asks for a token for a gated repo", async () => {
    await page.getByTestId("nav-model").click();
    await page.getByTestId("download-repo").fill("org/model");
    await page.getByTestId("download-start").click();
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="download-progress"]')?.dataset.done) > 0);
    await page.screenshot({ path: join(SHOTS, "download.png") });
    await page.getByTestId("download-cancel").click();
    await page.getByTestId("download-error").waitFor();
    assert.match(await page.getByTestId("download-error").textContent(), /cancelled/);
    await page.getByTestId("download-repo").fill("org/gated");
    await page.getByTestId("download-start").click();
    await page.getByTestId("hub-token").waitFor();
    await page.getByTestId("hub-token").fill("hf_secret");
    await page.getByTestId("save-token").click();
    // The retry succeeds and the app opens the model on the Layers screen.
    await page.getByTestId("layer-picker").waitFor({ timeout: 10000 });
  });

  it("opens a GGUF file: import progress, then the model opens on the Layers screen", async () => {
    await page.getByTestId("nav-model").click();
    await page.getByTestId("open-gguf").click();
    await page.waitForFunction(() => /importing: [1-9]/.test(document.querySelector('[data-testid="gguf-import-progress"]')?.textContent ?? ""));
    await page.screenshot({ path: join(SHOTS, "model-gguf-import.png") });
    await page.getByTestId("layer-picker").waitFor({ timeout: 10000 });
    assert.ok(await page.evaluate(() => window.__MOCK_CALLS__.includes("import_gguf")));
  });

  it("LLaMA-Factory mode shows the YAML; model, runs screens render", async () => {
    await page.getByTestId("nav-layers").click();
    await page.getByTestId("llamafactory-mode").check();
    await page.getByTestId("llamafactory-yaml").waitFor();
    assert.match(await page.getByTestId("llamafactory-yaml").textContent(), /freeze_trainable_layers_ids/);
    await page.getByTestId("llamafactory-mode").uncheck();
    await page.getByTestId("nav-model").click();
    await page.getByTestId("model-facts").waitFor();
    await page.screenshot({ path: join(SHOTS, "model.png") });
    await page.getByTestId("nav-runs").click();
    await page.screenshot({ path: join(SHOTS, "runs.png") });
    await page.emulateMedia({ colorScheme: "dark" });
    await page.getByTestId("nav-layers").click();
    await page.screenshot({ path: join(SHOTS, "layers-dark.png") });
  });
});
