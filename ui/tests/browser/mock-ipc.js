// A stand-in for the Tauri backend inside a plain browser page (injected before the app loads): an 80-layer model,
// a planner for the specs the picker sends, presets in memory, and a training run that streams events. It follows
// the commands' contracts closely enough to drive the UI; the real backend is covered by the WebDriver tests.
(() => {
  const N = 80;
  const GiB = 1024 ** 3;
  const MODULES = ["self_attn", "mlp", "input_layernorm", "post_attention_layernorm"];
  const PARAMS = { self_attn: 4096 * 4096 * 4, mlp: 3 * 4096 * 14336, input_layernorm: 4096, post_attention_layernorm: 4096 };
  const EXTRA = { embed_tokens: 128256 * 4096, norm: 4096, lm_head: 128256 * 4096 };
  const layerParams = Object.values(PARAMS).reduce((a, b) => a + b, 0);
  const total = N * layerParams + Object.values(EXTRA).reduce((a, b) => a + b, 0);
  const model = {
    path: "/mock/demo/model", name: "Mock 80-layer llama", source: "demo", architecture: "LlamaForCausalLM",
    model_type: "llama", num_layers: N, total_params: total, weight_bytes: total * 2, tie_word_embeddings: false,
    multimodal: false, layer_modules: MODULES, extra_modules: ["embed_tokens", "norm", "lm_head"],
    training_unsupported: null, warnings: [],
    // Gemma 3's pattern: five sliding-window layers, then one with full attention.
    layer_kinds: Array.from({ length: N }, (_, i) => ((i + 1) % 6 === 0 ? "full" : "sliding 1024")),
  };
  const err = (kind, message) => ({ kind, message });

  function parseIds(text, n) {
    if (!text.trim()) throw err("bad_layer_ids", 'no layer ids given; write ids and ranges like "1,2,10-15"');
    const ids = new Set();
    text.split(",").forEach((raw, i) => {
      const t = raw.trim();
      if (!t) throw err("bad_layer_ids", `empty entry #${i + 1}; remove the extra comma`);
      const m = /^(\d+)(?:\s*-\s*(\d+))?$/.exec(t);
      if (!m) throw err("bad_layer_ids", `"${t}" is not a layer id; use whole numbers and ranges like "1,2,10-15"`);
      const lo = +m[1], hi = m[2] === undefined ? lo : +m[2];
      if (lo > hi) throw err("bad_layer_ids", `range "${t}" runs backwards; write ${hi}-${lo}`);
      if (hi >= n) throw err("layer_out_of_range", `layer ${hi} does not exist: this model has ${n} layers (0-${n - 1})`);
      for (let k = lo; k <= hi; k++) ids.add(k);
    });
    return [...ids].sort((a, b) => a - b);
  }
  function fmt(ids) {
    const s = [...ids].sort((a, b) => a - b), parts = [];
    for (let i = 0; i < s.length; ) { let j = i; while (j + 1 < s.length && s[j + 1] === s[j] + 1) j++; parts.push(i === j ? `${s[i]}` : `${s[i]}-${s[j]}`); i = j + 1; }
    return parts.join(",");
  }

  function plan(spec) {
    const chosen = new Map();
    let mods = MODULES, extra = spec.extra ?? [], ids = [];
    const lf = spec.llamafactory;
    if (lf) {
      const k = lf.freeze_trainable_layers ?? 2;
      ids = lf.freeze_trainable_layers_ids != null ? String(lf.freeze_trainable_layers_ids).split(",").filter(Boolean).map(Number)
        : k > 0 ? Array.from({ length: k }, (_, i) => N - k + i) : Array.from({ length: -k }, (_, i) => i);
      if (lf.freeze_trainable_modules && lf.freeze_trainable_modules !== "all") mods = lf.freeze_trainable_modules.split(",");
      extra = (lf.freeze_extra_modules ?? "").split(",").filter(Boolean);
    } else {
      if (spec.top != null) ids = Array.from({ length: spec.top }, (_, i) => N - spec.top + i);
      else if (spec.bottom != null) ids = Array.from({ length: spec.bottom }, (_, i) => i);
      else if (spec.layers != null) ids = parseIds(spec.layers, N);
      else if (spec.all_layers) ids = Array.from({ length: N }, (_, i) => i);
      if (spec.modules?.length) mods = spec.modules;
    }
    for (const id of ids) chosen.set(id, new Set(mods));
    for (const [id, m] of Object.entries(spec.layer_modules ?? {})) {
      const set = chosen.get(+id) ?? new Set();
      m.forEach((x) => set.add(x));
      chosen.set(+id, set);
    }
    const state = (t, p) => (t === 0 ? "frozen" : t === p ? "trainable" : "partial");
    const layers = Array.from({ length: N }, (_, id) => {
      const set = chosen.get(id) ?? new Set();
      const modules = MODULES.map((name) => {
        const on = set.has(name);
        return { name, path: `model.layers.${id}.${name}`, state: on ? "trainable" : "frozen", trainable_params: on ? PARAMS[name] : 0, params: PARAMS[name] };
      });
      const t = modules.reduce((a, m) => a + m.trainable_params, 0);
      return { id, state: state(t, layerParams), trainable_params: t, params: layerParams, modules };
    });
    const extra_modules = Object.entries(EXTRA).map(([name, p]) => ({ name, path: name, state: extra.includes(name) ? "trainable" : "frozen", trainable_params: extra.includes(name) ? p : 0, params: p }));
    const trainable_params = layers.reduce((a, l) => a + l.trainable_params, 0) + extra_modules.reduce((a, m) => a + m.trainable_params, 0);
    const warnings = trainable_params === 0 ? [{ code: "nothing_trainable", message: "nothing is trainable: choose layers or extra modules" }] : [];
    return {
      mode: lf ? "llamafactory" : "native", trainable: [], trainable_params, total_params: total,
      trainable_percent: (100 * trainable_params) / total, trainable_layer_ids: fmt(layers.filter((l) => l.trainable_params > 0).map((l) => l.id)),
      layers, extra_modules, warnings,
      memory: { batch_size: 1, seq_len: 512, frozen_weight_bytes: (total - trainable_params) * 2, trainable_weight_bytes: trainable_params * 4, gradient_bytes: trainable_params * 4, optimizer_bytes: trainable_params * 8, update_bytes: 0, activation_bytes: 1 << 30, backward_from_layer: ids[0] ?? null, total_bytes: total * 2 + trainable_params * 14 + (1 << 30), cpu_activation_bytes: 1 << 29, cpu_total_bytes: total * 2 + trainable_params * 14 + (1 << 29) },
    };
  }

  const presets = new Map([
    ["hub-preset", { schema_version: 1, name: "hub-preset", model: { repo: "acme/not-downloaded" }, freeze: { top: 4 } }],
  ]);
  const callbacks = new Map();
  let nextId = 1;
  const running = new Map();
  const runConfig = {
    model: { path: model.path, dtype: "auto" }, freeze: {},
    data: { train: "/mock/demo/data.jsonl", datasets: [], mix: "concat", format: "alpaca", eval: null, eval_split: 0.1, cutoff_len: 64, train_on_prompt: false },
    training: { optimizer: "adamw", learning_rate: 0.01, weight_decay: 0, no_decay_for_bias_and_norm: true, adam_beta1: 0.9, adam_beta2: 0.999, adam_epsilon: 1e-8, lr_scheduler: "cosine", warmup_steps: 0, batch_size: 8, gradient_accumulation_steps: 1, max_grad_norm: 1, epochs: 1, max_steps: 300, seed: 42, shuffle: true, save_steps: 0, eval_steps: 100, gradient_checkpointing: false },
    runtime: { device: "auto", threads: 0, op_threads: 0 }, output: { dir: "/mock/runs/demo-1" },
  };

  let tokenSet = false;
  // "org/gated" needs a token; anything else streams 10 progress events of 10 MiB and finishes unless cancelled.
  function download(args) {
    const ch = args.onEvent.id;
    let index = 0;
    const send = (batch) => callbacks.get(ch)?.({ message: batch, index: index++ });
    if (args.repo === "org/gated" && !tokenSet) {
      return Promise.reject(err("gated", "org/gated is gated: accept its terms on the Hub and add a token"));
    }
    const total = 100 * 1024 * 1024;
    send([{ event: "resolved", repo: args.repo, revision: "main", commit: "abc", files: [], total_bytes: total }]);
    return new Promise((resolve, reject) => {
      let done = 0;
      running.set(args.taskId, false);
      const timer = setInterval(() => {
        if (running.get(args.taskId)) {
          clearInterval(timer);
          running.delete(args.taskId);
          send([{ event: "cancelled", partial_bytes: done }]);
          return reject(err("cancelled", `the download was cancelled; ${done} bytes are kept and a new download resumes them`));
        }
        done += total / 10;
        send([{ event: "progress", file: "model.safetensors", file_bytes: done, file_size: total, done_bytes: done, total_bytes: total, bytes_per_second: 50 * 1024 * 1024, eta_seconds: (total - done) / (50 * 1024 * 1024) }]);
        if (done >= total) {
          clearInterval(timer);
          running.delete(args.taskId);
          resolve(model);
        }
      }, 150);
    });
  }

  function train(args) {
    const ch = args.onEvent.id;
    let index = 0;
    const send = (batch) => callbacks.get(ch)?.({ message: batch, index: index++ });
    const total = args.config.training.max_steps || 300;
    return new Promise((resolve) => {
      let step = 0;
      send([{ event: "started", run_dir: args.config.output.dir, total_steps: total, trainable_parameters: 0, examples: 54, eval_examples: 6, truncated: 0, skipped: 0, device: "cpu", dtype: args.config.model.dtype === "auto" ? "f32" : args.config.model.dtype, device_note: "auto picked the CPU: this build has no GPU backend (CUDA or Metal)", frozen_weight_bytes: 4.16 * GiB, ...(args.config.model.quantize_frozen && args.config.model.quantize_frozen !== "none" ? { quantized_tensors: 210, quantize_frozen: args.config.model.quantize_frozen } : {}) }]);
      const timer = setInterval(() => {
        const batch = [];
        for (let k = 0; k < 3 && step < total; k++) {
          step++;
          batch.push({ event: "step", step, epoch: step / 7, loss: 6 * Math.exp(-step / 60) + 0.5, lr: 0.01, grad_norm: 1, tokens: 400, tokens_per_second: 4000, elapsed_s: step * 0.05 });
          if (step % 20 === 0) batch.push({ event: "eval", step, eval_loss: 6 * Math.exp(-step / 70) + 0.7 });
        }
        send(batch);
        const stop = running.get(args.taskId);
        if (step >= total || stop) {
          clearInterval(timer);
          running.delete(args.taskId);
          send([stop ? { event: "stopped", step, checkpoint: "/mock/ckpt" } : { event: "finished", step, final_dir: "/mock/final" }]);
          resolve({ run_dir: args.config.output.dir, steps: step, final_dir: stop ? null : "/mock/final", last_loss: 1 });
        }
      }, 100);
      running.set(args.taskId, false);
    });
  }

  const handlers = {
    open_demo_model: () => model,
    open_model: () => model,
    default_run: () => structuredClone(runConfig),
    detect_dataset: () => ({ formatting: "alpaca", columns: {}, tags: {}, keys: ["instruction", "input", "output"] }),
    list_cached_models: () => [],
    get_token_status: () => ({ present: tokenSet, source: tokenSet ? "the OS keyring" : null }),
    set_hub_token: (a) => {
      tokenSet = a.token.startsWith("hf_");
      if (!tokenSet) throw err("bad_token", "a Hugging Face token starts with hf_");
      return { present: true, source: "the OS keyring" };
    },
    download_model: (a) => download(a),
    pick_path: (a) => (a.kind === "gguf_file" ? "/mock/Qwen3-0.6B-Q8_0.gguf" : null),
    // A GGUF import: progress per tensor (slow enough to see), then the model it became.
    import_gguf: (a) => {
      let index = 0;
      const send = (p) => callbacks.get(a.onEvent.id)?.({ message: p, index: index++ });
      return new Promise((resolve) => {
        let done = 0;
        const timer = setInterval(() => {
          send({ done, total: 10, tensor: `blk.${done}.attn_q.weight` });
          if (++done > 10) {
            clearInterval(timer);
            resolve({ ...model, path: "/mock/data/imported/Qwen3-0.6B-Q8_0" });
          }
        }, 60);
      });
    },
    check_layer_ids: (a) => fmt(parseIds(a.text, a.numLayers)),
    plan_freeze: (a) => plan(a.spec),
    // The verdict as core's `fit` shapes it: the plan's estimate against the device; if it does not fit, a change
    // that does not help enough and one that does.
    check_fit: (a) => {
      const m = plan(a.spec).memory;
      // Quantized frozen layers: the mock's frozen weights at a seventh (q4_k) or a quarter (q8_0).
      const held = { none: 1, q8_0: 17 / 64, q4_k: 9 / 64 }[a.setup.quantize_frozen ?? "none"];
      const full = a.setup.cpu ? m.cpu_total_bytes : m.total_bytes;
      const need = Math.round(full - m.frozen_weight_bytes * (1 - held));
      const available = a.device.available_bytes;
      const change = (change, text, need_bytes) => ({ change, text, need_bytes, fits: need_bytes <= available });
      return {
        device: a.device.name, need_bytes: need, available_bytes: available, fits: need <= available,
        changes: need <= available ? [] : [
          change({ kind: "gradient_checkpointing" }, "turn on gradient checkpointing (same result, about a third slower)", need - (1 << 28)),
          ...(a.setup.quantize_frozen === "q4_k" ? [] : [change({ kind: "quantize_frozen", format: "q4_k" }, "hold the frozen layers' matrices as q4_k (quantize_frozen; their matmuls use the quantized weights, trainable tensors stay f32)", Math.round(full - m.frozen_weight_bytes * (55 / 64)))]),
          change({ kind: "layers", layers: "78-79" }, "train only layers 78-79 (the top of the selection: the backward pass stops sooner)", available - GiB),
        ],
      };
    },
    preview_export: (a) => `finetuning_type: freeze\nfreeze_trainable_layers_ids: ${JSON.stringify(a.spec.llamafactory?.freeze_trainable_layers_ids ?? "")}\n`,
    list_devices: () => [
      { id: "auto", label: "Auto (best available)", backend: "auto", total_memory: 64 * GiB, free_memory: 48 * GiB, available: true, note: "auto picks cuda:0 (NVIDIA H200)" },
      { id: "cpu", label: "CPU — Mock CPU (8 threads)", backend: "cpu", total_memory: 64 * GiB, free_memory: 48 * GiB, available: true, note: null },
      { id: "cuda:0", label: "cuda:0 — NVIDIA H200 (140 GiB)", backend: "cuda", total_memory: 140 * GiB, free_memory: 139 * GiB, available: true, note: null },
      { id: "metal", label: "Apple Metal GPU", backend: "metal", total_memory: null, free_memory: null, available: false, note: "Metal: Apple GPUs only (macOS)" },
    ],
    preview_dataset: () => ({ format: "alpaca", examples: [{ line: 1, text: "x", tokens: 20, learned_tokens: 6, truncated: false, marked: "<|im_start|>user\nWhat is 1 plus 2?<|im_end|>\n<|im_start|>assistant\n[[1 plus 2 is 3.<|im_end|>]]" }] }),
    train_model: train,
    cancel_task: (a) => (running.has(a.taskId) ? (running.set(a.taskId, true), true) : false),
    list_runs: () => [],
    read_run_metrics: () => [],
    list_presets: () => [...presets.values()].map((p) => ({ name: p.name, path: `/mock/presets/${p.name}.toml`, preset: p, error: null })),
    save_preset: (a) => {
      if (presets.has(a.preset.name) && !a.replace) throw err("preset_exists", `preset "${a.preset.name}" exists`);
      presets.set(a.preset.name, a.preset);
      return `/mock/presets/${a.preset.name}.toml`;
    },
    delete_preset: (a) => void presets.delete(a.name),
    rename_preset: (a) => {
      const p = presets.get(a.from);
      if (!p) throw err("preset_not_found", `no preset named "${a.from}"`);
      presets.delete(a.from);
      presets.set(a.to, { ...p, name: a.to });
    },
    duplicate_preset: (a) => {
      if (presets.has(a.to)) throw err("preset_exists", `preset "${a.to}" exists`);
      presets.set(a.to, { ...presets.get(a.from), name: a.to });
    },
  };

  window.__MOCK_CALLS__ = [];
  window.__TAURI_INTERNALS__ = {
    transformCallback(cb) { const id = nextId++; callbacks.set(id, cb); return id; },
    unregisterCallback(id) { callbacks.delete(id); },
    async invoke(cmd, args) {
      window.__MOCK_CALLS__.push(cmd);
      const h = handlers[cmd];
      if (!h) throw err("not_mocked", `command ${cmd} is not mocked`);
      return h(args ?? {});
    },
  };
})();
