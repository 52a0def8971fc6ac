//! Trying a model: greedy or temperature sampling with a KV cache on FreezeTune's own decoder (so every trainable
//! architecture generates the same way it trains), the prompt wrapped in the chat template.

use crate::error::{Result, TrainError};
use crate::model::Decoder;
use crate::params::Params;
use crate::template::{ChatFormatter, Message};
use crate::DecoderConfig;
use candle_core::Device;
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub seed: u64,
    /// Use the chat template (when the model has one); otherwise the prompt is fed as plain text.
    pub chat: bool,
}

pub struct Generator {
    pub model: Decoder,
    formatter: ChatFormatter,
    stop: Vec<u32>,
}

impl Generator {
    pub fn load(model_dir: &Path, device: &Device) -> Result<Generator> {
        let layout = ModelLayout::inspect(model_dir)?;
        let frozen = plan(
            &layout,
            &FreezeSpec {
                no_layers: true,
                ..Default::default()
            },
            PlanOptions::default(),
        )?;
        // The same dtype rule as training's `auto`: f32 on the CPU, the GPU's half type elsewhere.
        let dtype = crate::device::compute_dtype("auto", device, crate::device::checkpoint_dtype(&layout));
        let params = Params::load(model_dir, &frozen, device, dtype)?;
        let model = Decoder::new(DecoderConfig::read(model_dir)?, &params, device)?;
        let formatter = ChatFormatter::load(model_dir)?;
        let mut stop: Vec<u32> = formatter.eos_id.into_iter().collect();
        if let Ok(text) = std::fs::read_to_string(model_dir.join("generation_config.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                match &v["eos_token_id"] {
                    serde_json::Value::Number(n) => stop.extend(n.as_u64().map(|n| n as u32)),
                    serde_json::Value::Array(a) => stop.extend(a.iter().filter_map(|n| n.as_u64().map(|n| n as u32))),
                    _ => {}
                }
            }
        }
        Ok(Generator { model, formatter, stop })
    }

    /// The prompt's token ids (rendered as a user turn when `chat`).
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let text = if chat && self.formatter.has_template() {
            self.formatter.render(
                &[Message {
                    role: "user".into(),
                    content: prompt.into(),
                }],
                true,
            )?
        } else {
            prompt.to_string()
        };
        let (ids, _) = self.formatter.encode(&text)?;
        if ids.is_empty() {
            return Err(TrainError::Config {
                path: "prompt".into(),
                reason: "the prompt is empty".into(),
            });
        }
        Ok(ids)
    }

    /// New token ids after the prompt, stopping at an end token or `max_new_tokens`.
    pub fn generate_ids(&self, prompt_ids: &[u32], o: &GenerateOptions) -> Result<Vec<u32>> {
        let mut cache = self.model.new_cache();
        let mut rng = freezetune_core::synth::Rng(o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut logits = self.model.forward_cached(prompt_ids, &mut cache)?;
        let mut out = Vec::new();
        for _ in 0..o.max_new_tokens {
            let l: Vec<f32> = logits.to_vec1().map_err(|e| TrainError::Candle {
                context: "logits".into(),
                source: e,
            })?;
            let next = pick(&l, o.temperature, &mut rng);
            if self.stop.contains(&next) {
                break;
            }
            out.push(next);
            logits = self.model.forward_cached(&[next], &mut cache)?;
        }
        Ok(out)
    }

    pub fn generate(&self, prompt: &str, o: &GenerateOptions) -> Result<String> {
        let ids = self.prompt_ids(prompt, o.chat)?;
        Ok(self.formatter.decode(&self.generate_ids(&ids, o)?))
    }

    pub fn model(&self) -> &Decoder {
        &self.model
    }
}

fn pick(logits: &[f32], temperature: f64, rng: &mut freezetune_core::synth::Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut r = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r <= 0.0 {
            return i as u32;
        }
    }
    argmax()
}
