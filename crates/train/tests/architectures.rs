//! Every trainable architecture reproduces the logits of candle-transformers' inference model on the same weights:
//! qwen2 (tied embeddings, q/k/v biases), qwen3 (q/k norms), mistral, and llama with Llama 3 rope scaling.
//! (llama itself is checked against PyTorch in parity.rs.)

use candle_core::{DType, Device, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::models::{llama, mistral, qwen2, qwen3};
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use std::path::{Path, PathBuf};

const IDS: [u32; 9] = [1, 42, 7, 300, 19, 2, 255, 8, 99];

/// Our decoder's logits at the last position.
fn ours(dir: &Path) -> Vec<f32> {
    let layout = ModelLayout::inspect(dir).unwrap();
    let p = plan(
        &layout,
        &FreezeSpec {
            top: Some(1),
            ..Default::default()
        },
        PlanOptions::default(),
    )
    .unwrap();
    let params = Params::load(dir, &p, &Device::Cpu, DType::F32).unwrap();
    let model = Decoder::new(DecoderConfig::read(dir).unwrap(), &params, &Device::Cpu).unwrap();
    let logits = model
        .forward(&Batch {
            input_ids: vec![IDS.to_vec()],
            lengths: vec![IDS.len()],
        })
        .unwrap();
    logits.get(0).unwrap().get(IDS.len() - 1).unwrap().to_vec1().unwrap()
}

fn vb(dir: &Path) -> VarBuilder<'static> {
    let files: Vec<PathBuf> = vec![dir.join("model.safetensors")];
    unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap() }
}

fn input() -> Tensor {
    Tensor::new(&IDS, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn last(t: Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_close(name: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{name}: vocab sizes differ");
    let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        max < 1e-4 * scale.max(1.0),
        "{name}: logits differ by {max} (scale {scale})"
    );
}

fn synth(family: Family, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = SynthSpec::tiny(family, 3);
    write_checkpoint(dir.path(), &spec).unwrap();
    let mut config = spec.config_json();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn qwen2_with_tied_embeddings_and_biases() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen2");
    let cfg = qwen2::Config {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 256,
        sliding_window: 256,
        max_window_layers: 28,
        tie_word_embeddings: true,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    };
    let mut reference = qwen2::ModelForCausalLM::new(&cfg, vb(&dir)).unwrap();
    assert_close("qwen2", &ours(&dir), &last(reference.forward(&input(), 0).unwrap()));
}

#[test]
fn qwen3_with_qk_norms() {
    let dir = synth(Family::Qwen3, |_| {});
    let cfg = qwen3::Config {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        head_dim: 16,
        attention_bias: false,
        num_key_value_heads: 2,
        max_position_embeddings: 256,
        sliding_window: None,
        max_window_layers: 3,
        tie_word_embeddings: false,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        use_sliding_window: false,
        hidden_act: Activation::Silu,
    };
    let mut reference = qwen3::ModelForCausalLM::new(&cfg, vb(dir.path())).unwrap();
    assert_close(
        "qwen3",
        &ours(dir.path()),
        &last(reference.forward(&input(), 0).unwrap()),
    );
}

#[test]
fn mistral() {
    let dir = synth(Family::Llama, |c| {
        c["model_type"] = "mistral".into();
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    });
    let cfg = mistral::Config {
        vocab_size: 512,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        head_dim: Some(16),
        num_key_value_heads: 2,
        hidden_act: Activation::Silu,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        sliding_window: None,
        use_flash_attn: false,
    };
    let mut reference = mistral::Model::new(&cfg, vb(dir.path())).unwrap();
    assert_close(
        "mistral",
        &ours(dir.path()),
        &last(reference.forward(&input(), 0).unwrap()),
    );
}

#[test]
fn llama_with_llama3_rope_scaling() {
    let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let dir = synth(Family::Llama, |c| {
        c["rope_scaling"] = scaling.clone();
        c["rope_theta"] = 500000.0.into();
    });
    let ours = ours(dir.path());
    let cfg: llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 64, "intermediate_size": 128, "vocab_size": 512, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
        "rope_scaling": scaling, "max_position_embeddings": 256, "tie_word_embeddings": false
    }))
    .unwrap();
    let cfg = cfg.into_config(false);
    let reference = llama::Llama::load(vb(dir.path()), &cfg).unwrap();
    let mut cache = llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
    assert_close(
        "llama3 rope",
        &ours,
        &last(reference.forward(&input(), 0, &mut cache).unwrap()),
    );
}

#[test]
fn phi3_with_fused_projections() {
    let dir = synth(Family::Phi3, |_| {});
    let cfg: candle_transformers::models::phi3::Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 512, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "bos_token_id": 0, "eos_token_id": 2, "rope_scaling": null, "max_position_embeddings": 256,
        "original_max_position_embeddings": null, "partial_rotary_factor": null, "tie_word_embeddings": false
    }))
    .unwrap();
    let mut reference = candle_transformers::models::phi3::Model::new(&cfg, vb(dir.path())).unwrap();
    assert_close(
        "phi3",
        &ours(dir.path()),
        &last(reference.forward(&input(), 0).unwrap()),
    );
}

#[test]
fn gemma_with_offset_norms_scaled_embeddings_and_gelu() {
    let dir = synth(Family::Gemma, |c| {
        c["hidden_activation"] = "gelu_pytorch_tanh".into();
    });
    let cfg: candle_transformers::models::gemma::Config = serde_json::from_value(serde_json::json!({
        "attention_bias": false, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 512, "max_position_embeddings": 256
    }))
    .unwrap();
    let mut reference = candle_transformers::models::gemma::Model::new(false, &cfg, vb(dir.path())).unwrap();
    assert_close(
        "gemma",
        &ours(dir.path()),
        &last(reference.forward(&input(), 0).unwrap()),
    );
}
