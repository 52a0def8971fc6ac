//! Frozen layers held quantized (`quantize_frozen`), end to end. A small llama (hidden 256, so q4_k's 256-value
//! blocks apply) is first trained whole on patterned sequences until its weights carry what it learned; then its top
//! two layers train for 20 AdamW steps with the frozen layers dense, in q8_0 and in q4_k. Quantization moves every
//! frozen layer's output (the losses differ), but the losses stay within 1% (q8_0) and 3% (q4_k) of the dense run;
//! `final/` copies the frozen tensors from the input byte for byte; a tensor that starts training mid-run gets its
//! exact values from the checkpoint, not the quantized ones. AdamW with 8-bit moments stays within 1% of AdamW on the
//! same run.

use candle_core::{DType, Device};
use freezetune_core::events::TrainEvent;
use freezetune_core::quant::QuantizeFrozen;
use freezetune_core::run_config::RunConfig;
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_train::params::Params;
use freezetune_train::train;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

mod common;
use common::tensor_bytes;

fn spec() -> SynthSpec {
    SynthSpec {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kv_heads: 2,
        ..SynthSpec::tiny(Family::Llama, 4)
    }
}

/// Arithmetic progressions modulo the vocabulary: each row's start and stride are its own, so the next token
/// depends on the context (the stride) and the current token.
fn write_data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let rows: Vec<String> = (0..32u32)
        .map(|r| {
            let (start, stride) = (r * 37 % 512, 1 + r % 5);
            let ids: Vec<u32> = (0..48).map(|i| (start + stride * i) % 512).collect();
            serde_json::json!({ "input_ids": ids, "labels": ids }).to_string()
        })
        .collect();
    std::fs::write(&path, rows.join("\n")).unwrap();
    path
}

fn config(dir: &Path, model: &Path, freeze: &str, steps: u64, lr: f64, quantize: QuantizeFrozen) -> RunConfig {
    config_with(dir, model, freeze, steps, lr, quantize, "adamw")
}

fn config_with(
    dir: &Path,
    model: &Path,
    freeze: &str,
    steps: u64,
    lr: f64,
    quantize: QuantizeFrozen,
    optimizer: &str,
) -> RunConfig {
    let data = write_data(dir);
    let text = format!(
        "[model]\npath = {model:?}\nquantize_frozen = {q:?}\n[freeze]\n{freeze}\n[data]\ntrain = {data:?}\n\
         format = \"tokenized\"\n[training]\nbatch_size = 8\nshuffle = false\nlr_scheduler = \"constant\"\n\
         optimizer = {optimizer:?}\nlearning_rate = {lr}\nmax_steps = {steps}\nsave_steps = 0\n[runtime]\n\
         device = \"cpu\"\n[output]\ndir = {out:?}\n",
        q = quantize.name(),
        out = dir.join("run"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::read(&path).unwrap()
}

/// Trains `config`; returns the step losses and the Started event.
fn run(config: &RunConfig) -> (Vec<f64>, TrainEvent) {
    let events = Mutex::new(Vec::new());
    train(
        config,
        false,
        &|e| events.lock().unwrap().push(e),
        &AtomicBool::new(false),
    )
    .unwrap();
    let events = events.into_inner().unwrap();
    let losses = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    let started = events
        .into_iter()
        .find(|e| matches!(e, TrainEvent::Started { .. }))
        .unwrap();
    (losses, started)
}

/// The small llama after 60 steps of full training (its `final/`), in `dir`.
fn trained_model(dir: &Path) -> PathBuf {
    let init = dir.join("init");
    write_checkpoint(&init, &spec()).unwrap();
    let work = dir.join("pretrain");
    std::fs::create_dir_all(&work).unwrap();
    let (losses, _) = run(&config(
        &work,
        &init,
        "all_layers = true\nextra = [\"embed_tokens\", \"norm\", \"lm_head\"]",
        60,
        3e-3,
        QuantizeFrozen::None,
    ));
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last < 0.5 * first,
        "the base model learned the patterns: loss {first} -> {last}"
    );
    work.join("run/final")
}

fn max_relative_gap(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs())
        .fold(0.0, f64::max)
}

#[test]
fn quantized_frozen_layers_train_within_tolerance_and_export_the_original_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained_model(dir.path());
    let top2 = "top = 2";
    let mut losses = Vec::new();
    for q in [QuantizeFrozen::None, QuantizeFrozen::Q8_0, QuantizeFrozen::Q4K] {
        let work = dir.path().join(q.name());
        std::fs::create_dir_all(&work).unwrap();
        let (l, started) = run(&config(&work, &model, top2, 20, 1e-3, q));
        let TrainEvent::Started {
            quantized_tensors,
            frozen_weight_bytes,
            ..
        } = started
        else {
            unreachable!()
        };
        // Layers 0 and 1 frozen: q, k, v, o, gate, up and down of each; and the embeddings and lm_head (q8_0).
        assert_eq!(
            quantized_tensors,
            if q == QuantizeFrozen::None { 0 } else { 16 },
            "{q:?}"
        );
        eprintln!("{q:?}: frozen {frozen_weight_bytes} bytes, losses {l:?}");
        let exported = tensor_bytes(&work.join("run/final/model.safetensors"));
        let input = tensor_bytes(&model.join("model.safetensors"));
        let frozen = [
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
        ];
        for name in frozen
            .into_iter()
            .chain(["model.embed_tokens.weight", "lm_head.weight"])
        {
            assert_eq!(exported[name], input[name], "{q:?}: {name} copied from the input");
        }
        losses.push(l);
    }
    let (dense, q8, q4) = (&losses[0], &losses[1], &losses[2]);
    assert!(dense.last().unwrap() < &dense[0], "the top layers learn: {dense:?}");
    let (gap8, gap4) = (max_relative_gap(q8, dense), max_relative_gap(q4, dense));
    eprintln!("largest relative loss gap over 20 steps: q8_0 {gap8:.2e}, q4_k {gap4:.2e}");
    assert!(
        gap8 > 0.0 && gap4 > gap8,
        "quantization changed the frozen layers' outputs: {gap8} {gap4}"
    );
    assert!(gap8 < 0.01, "q8_0 within 1% of the dense run: {gap8}");
    assert!(gap4 < 0.03, "q4_k within 3% of the dense run: {gap4}");

    // AdamW with 8-bit moments against AdamW, the same 20 steps.
    let work = dir.path().join("adamw8bit");
    std::fs::create_dir_all(&work).unwrap();
    let (adam8, _) = run(&config_with(
        &work,
        &model,
        top2,
        20,
        1e-3,
        QuantizeFrozen::None,
        "adamw8bit",
    ));
    let gap = max_relative_gap(&adam8, dense);
    eprintln!("adamw8bit: largest relative loss gap to AdamW over 20 steps {gap:.2e}; losses {adam8:?}");
    assert!(gap > 0.0, "8-bit moments changed the updates");
    assert!(gap < 0.01, "adamw8bit within 1% of AdamW: {gap}");
}

#[test]
fn a_quantized_tensor_that_starts_training_gets_its_exact_values_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &spec()).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight".to_string();
    let mut params = Params::load_quantized(dir.path(), &[], &Device::Cpu, DType::F32, QuantizeFrozen::Q4K).unwrap();
    assert_eq!(params.quantized_count(), 4 * 7 + 2);
    let dense = Params::load_with(dir.path(), &[], &Device::Cpu, DType::F32).unwrap();
    assert!(
        params.frozen_bytes() * 4 < dense.frozen_bytes(),
        "q4_k holds the projections in about 1/7"
    );
    params.set_trainable(std::slice::from_ref(&name)).unwrap();
    assert_eq!(params.quantized_count(), 4 * 7 + 1);
    let master = params.vars[&name]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let original = dense
        .get(&name)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(master, original);
    // Frozen again: kept dense with its trained values, never quantized again.
    params.set_trainable(&[]).unwrap();
    assert_eq!(params.quantized_count(), 4 * 7 + 1);
    assert!(params.trained_value(&name).is_some());
}

/// A tied model (Qwen2's layout) looks its tokens up in, and computes its logits from, one quantized matrix.
#[test]
fn a_tied_model_uses_its_quantized_embeddings_at_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let spec = SynthSpec {
        hidden: 256,
        intermediate: 512,
        ..SynthSpec::tiny(Family::Qwen2, 2)
    };
    assert!(spec.tied);
    write_checkpoint(&model, &spec).unwrap();
    let mut losses = Vec::new();
    for q in [QuantizeFrozen::None, QuantizeFrozen::Q8_0] {
        let work = dir.path().join(q.name());
        std::fs::create_dir_all(&work).unwrap();
        let (l, started) = run(&config(&work, &model, "top = 1", 3, 1e-3, q));
        let TrainEvent::Started { quantized_tensors, .. } = started else {
            unreachable!()
        };
        // Layer 0's seven projections and the one vocabulary matrix.
        assert_eq!(quantized_tensors, if q == QuantizeFrozen::None { 0 } else { 8 });
        losses.push(l);
    }
    let gap = max_relative_gap(&losses[1], &losses[0]);
    assert!(gap > 0.0 && gap < 0.01, "q8_0 within 1% of the dense run: {gap}");
}

/// Qwen3.5 MoE's stacked experts held quantized one expert at a time (`quantize_frozen`): with its top layer
/// training and the embeddings too (so the gradient passes back through every frozen layer), the loss and every
/// gradient equal those of the same model whose frozen matrices were rounded through q8_0 and held dense. So the
/// node dequantizes each expert's own blocks, in its forward and backward passes.
#[test]
fn stacked_experts_held_quantized_compute_what_their_rounded_values_compute() {
    use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
    use freezetune_train::loss::causal_lm_loss;
    use freezetune_train::{Batch, Decoder, DecoderConfig};
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen3_5_moe");
    let layout = ModelLayout::inspect(&src).unwrap();
    // The embeddings train too, so the gradient passes back through the quantized experts' backward.
    let top = FreezeSpec {
        top: Some(1),
        extra: vec!["embed_tokens".into()],
        ..Default::default()
    };
    let p = plan(&layout, &top, PlanOptions::default()).unwrap();
    let quantize = QuantizeFrozen::Q8_0;
    // The reference checkpoint: each frozen tensor quantize_frozen holds in blocks, rounded through them.
    let rounded = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), rounded.path().join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut stacked = 0;
    for (name, t) in tensors.iter_mut() {
        let Some(format) = quantize.format_for(name, t.dims()).filter(|_| !p.is_trainable(name)) else {
            continue;
        };
        stacked += usize::from(t.rank() == 3);
        let q = freezetune_train::quant::quantize(t, format, &Device::Cpu).unwrap();
        *t = freezetune_train::quant::dequantize(&q, DType::F32).unwrap();
    }
    assert_eq!(
        stacked, 6,
        "three frozen layers' gate_up and down stacks are held in blocks"
    );
    candle_core::safetensors::save(&tensors, rounded.path().join("model.safetensors")).unwrap();
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 120 + 3).collect();
    let batch = Batch {
        lengths: vec![ids.len()],
        input_ids: vec![ids.clone()],
    };
    let labels = vec![ids.iter().map(|&v| v as i64).collect::<Vec<_>>()];
    let run = |dir: &Path, quantize: QuantizeFrozen| {
        let params = Params::load_quantized(dir, &p.trainable, &Device::Cpu, DType::F32, quantize).unwrap();
        let model = Decoder::new(DecoderConfig::read(dir).unwrap(), &params, &Device::Cpu).unwrap();
        let (loss, _) = causal_lm_loss(&model.forward_logits(&batch).unwrap(), &labels).unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<(String, Vec<f32>)> = params
            .vars
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    grads.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads, params.quantized_count())
    };
    let (held, held_grads, count) = run(&src, quantize);
    let (dense, dense_grads, none) = run(rounded.path(), QuantizeFrozen::None);
    assert!(count > stacked && none == 0, "{count} tensors held quantized");
    assert!((held - dense).abs() <= 1e-6 * dense.abs(), "loss {held} vs {dense}");
    for ((name, a), (_, b)) in held_grads.iter().zip(&dense_grads) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-5 * scale.max(1e-6),
            "{name}: gradient differs by {diff} (max {scale})"
        );
    }
}

/// A frozen table read only by row (an untied model's token embeddings) stays in its bf16 checkpoint's dtype while
/// the run computes in f32: half the memory, and the same loss and gradients as the f32 copy, since each row read
/// is cast exactly. A tied model's embeddings are its head's matrix and are held in the compute dtype.
#[test]
fn a_frozen_lookup_table_stays_in_its_checkpoint_dtype() {
    use freezetune_train::loss::causal_lm_loss;
    use freezetune_train::{Batch, Decoder, DecoderConfig};
    let embed = "model.embed_tokens.weight".to_string();
    let top = "model.layers.1.mlp.down_proj.weight".to_string();
    let run = |dir: &Path, trainable: &[String]| {
        let params = Params::load_with(dir, trainable, &Device::Cpu, DType::F32).unwrap();
        let ids: Vec<u32> = (0..24).map(|i| (i * 11 + 5) % 500).collect();
        let batch = Batch {
            lengths: vec![ids.len()],
            input_ids: vec![ids.clone()],
        };
        let labels = vec![ids.iter().map(|&v| v as i64).collect::<Vec<_>>()];
        let model = Decoder::new(DecoderConfig::read(dir).unwrap(), &params, &Device::Cpu).unwrap();
        let (loss, _) = causal_lm_loss(&model.forward_logits(&batch).unwrap(), &labels).unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads
            .get(&params.vars[&top])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let table = params.get(&embed).unwrap().dtype();
        (loss.to_scalar::<f32>().unwrap(), grad, table)
    };
    for tied in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            dtype: freezetune_core::safetensors::DType::BF16,
            tied,
            ..SynthSpec::tiny(Family::Llama, 2)
        };
        write_checkpoint(dir.path(), &spec).unwrap();
        let (loss, grad, table) = run(dir.path(), std::slice::from_ref(&top));
        let want = if tied { DType::F32 } else { DType::BF16 };
        assert_eq!(table, want, "tied: {tied}");
        // The same values as an f32 master: the embeddings trained (their gradient is not compared).
        let (f32_loss, f32_grad, f32_table) = run(dir.path(), &[top.clone(), embed.clone()]);
        assert_eq!(f32_table, DType::F32);
        assert_eq!(loss, f32_loss, "tied: {tied}");
        assert_eq!(grad, f32_grad, "tied: {tied}");
    }
}
