//! The layer probe: on batches of the user's own data, which layers change the hidden state and which the loss
//! pulls on. Per layer l (hidden states h_l entering it, h_{l+1} leaving it, over the batches' real tokens):
//!
//! - Block Influence (ShortGPT): BI_l = 1 − mean cos(h_l, h_{l+1}); 0 for a layer that passes its input through.
//! - Angular distance of the window of `window` layers starting at l (Gromov et al. 2024):
//!   mean arccos(cos(h_l, h_{l+window})) / π.
//! - Gradient norm of the layer's weights, √(Σ over its tensors of ‖∂loss/∂W‖²), from one backward pass per batch
//!   with nothing updated (the loss is the token mean over all the batches, as training would weigh it), and that
//!   norm relative to the weights' own norm. The backward pass is recomputed layer by layer, so the probe needs
//!   about the memory of one checkpointed training step, whatever the depth.
//!
//! [`suggest`] turns a report into a selection: the K layers with the largest gradient norm relative to their
//! weights (where the loss pulls hardest on this data), or with the largest Block Influence (the layers that change
//! the hidden state most), as canonical ids `plan --layers` takes.

pub mod cache;

use crate::data::Example;
use crate::error::{candle, Result};
use crate::model::{Batch, Decoder};
use crate::optim::accumulate;
use crate::params::Params;
use crate::trainer::collate_examples;
use crate::DecoderConfig;
use candle_core::{DType, Device, Tensor, D};
use freezetune_core::ModelLayout;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Examples per batch and how many batches (from the start of the data).
    pub batch_size: usize,
    pub batches: usize,
    /// Layers per angular-distance window.
    pub window: usize,
    /// Whether to run the backward pass for gradient norms (forward-only signals otherwise).
    pub gradients: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LayerSignal {
    pub layer: usize,
    pub block_influence: f64,
    /// Of the window starting at this layer; `None` where the window would run past the last layer.
    pub angular_distance: Option<f64>,
    pub grad_norm: Option<f64>,
    /// `grad_norm` / the layer's weight norm.
    pub relative_grad: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ProbeReport {
    pub batches: usize,
    pub tokens: usize,
    pub window: usize,
    pub layers: Vec<LayerSignal>,
    /// Layer ids from the highest-ranked down, by each signal (what `suggest` takes the first K of); no gradient
    /// ranking from a forward-only probe.
    pub ranked_by_gradient: Option<Vec<usize>>,
    pub ranked_by_influence: Vec<usize>,
}

/// Where a probe is: `done` of `total` passes (a forward pass per batch, then a backward pass per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ProbeProgress {
    pub done: usize,
    pub total: usize,
}

/// Told after every pass; returning `false` stops the probe (`TrainError::Stopped`).
pub type ProbeWatch<'a> = &'a mut dyn FnMut(ProbeProgress) -> bool;

/// Probes a run config's model on its training data, rendered, truncated and batched as `train` would, on its
/// device (f32).
pub fn probe_run(
    config: &freezetune_core::run_config::RunConfig,
    o: ProbeOptions,
    watch: ProbeWatch,
) -> Result<ProbeReport> {
    let decoder_config = DecoderConfig::read(&config.model.path)?;
    let data = crate::trainer::load_data(config, &decoder_config)?;
    let device = crate::device::select_device(&config.runtime.device)?;
    probe(&config.model.path, &data.train, o, &device.device, watch)
}

/// [`probe_run`] through the cache in `dir`: a report for the same model, data and settings is read back instead
/// of measured. Returns the report and whether it came from the cache.
pub fn probe_run_cached(
    config: &freezetune_core::run_config::RunConfig,
    o: ProbeOptions,
    dir: &Path,
    watch: ProbeWatch,
) -> Result<(ProbeReport, bool)> {
    let path = cache::cache_path(dir, config, &o)?;
    if let Some(report) = cache::load(&path) {
        return Ok((report, true));
    }
    let report = probe_run(config, o, watch)?;
    cache::store(&path, &report)?;
    Ok((report, false))
}

/// The report measured before for the same model, data and settings, from the cache in `dir`; nothing is
/// measured (how the app shows an earlier result as soon as a model opens).
pub fn cached_report(
    config: &freezetune_core::run_config::RunConfig,
    o: ProbeOptions,
    dir: &Path,
) -> Result<Option<ProbeReport>> {
    Ok(cache::load(&cache::cache_path(dir, config, &o)?))
}

/// Probes the model in `model_dir` on `examples` (rendered as training renders them).
pub fn probe(
    model_dir: &Path,
    examples: &[Example],
    o: ProbeOptions,
    device: &Device,
    watch: ProbeWatch,
) -> Result<ProbeReport> {
    let layout = ModelLayout::inspect(model_dir)?;
    let layer_tensors: Vec<Vec<String>> = layout
        .layers
        .iter()
        .map(|l| l.tensors().map(|t| t.name.clone()).collect())
        .collect();
    let trainable: Vec<String> = if o.gradients {
        let mut all: Vec<String> = layer_tensors.iter().flatten().cloned().collect();
        all.sort();
        all
    } else {
        Vec::new()
    };
    let params = Params::load_with(model_dir, &trainable, device, DType::F32)?;
    let decoder = Decoder::new(DecoderConfig::read(model_dir)?, &params, device)?;
    let used = &examples[..examples.len().min(o.batch_size.max(1) * o.batches.max(1))];
    let batches: Vec<(Batch, Vec<Vec<i64>>)> = used
        .chunks(o.batch_size.max(1))
        .map(|chunk| collate_examples(&chunk.iter().collect::<Vec<_>>()))
        .collect();
    let n = layout.num_layers;
    let (mut bi, mut ad) = (vec![Mean::default(); n], vec![Mean::default(); n]);
    let mut tokens = 0;
    let total = batches.len() * if o.gradients { 2 } else { 1 };
    let mut passes = Passes { done: 0, total, watch };
    for (batch, _) in &batches {
        passes.next()?;
        let states = decoder.hidden_states(batch)?;
        tokens += batch.lengths.iter().sum::<usize>();
        for l in 0..n {
            for c in token_cosines(&states[l], &states[l + 1], &batch.lengths)? {
                bi[l].add(1.0 - c);
            }
            if l + o.window <= n {
                for c in token_cosines(&states[l], &states[l + o.window], &batch.lengths)? {
                    ad[l].add(c.clamp(-1.0, 1.0).acos() / std::f64::consts::PI);
                }
            }
        }
    }
    let grads = if o.gradients {
        let learned = used.iter().map(Example::learned_tokens).sum();
        Some(gradient_norms(
            &decoder,
            &params,
            &batches,
            learned,
            &layer_tensors,
            &mut passes,
        )?)
    } else {
        None
    };
    passes.next()?;
    let layers: Vec<LayerSignal> = (0..n)
        .map(|l| LayerSignal {
            layer: l,
            block_influence: bi[l].value().unwrap_or(0.0),
            angular_distance: ad[l].value(),
            grad_norm: grads.as_ref().map(|g| g[l].0),
            relative_grad: grads.as_ref().map(|g| g[l].0 / g[l].1.max(f64::MIN_POSITIVE)),
        })
        .collect();
    Ok(ProbeReport {
        batches: batches.len(),
        tokens,
        window: o.window,
        ranked_by_gradient: rank(&layers, SuggestBy::Gradient),
        ranked_by_influence: rank(&layers, SuggestBy::Influence).unwrap_or_default(),
        layers,
    })
}

/// Counts the probe's passes for its watcher: each `next` reports the passes done so far, then the next one runs
/// unless the watcher said stop.
struct Passes<'a> {
    done: usize,
    total: usize,
    watch: ProbeWatch<'a>,
}

impl Passes<'_> {
    fn next(&mut self) -> Result<()> {
        let go_on = (self.watch)(ProbeProgress {
            done: self.done,
            total: self.total,
        });
        self.done += 1;
        if go_on || self.done > self.total {
            Ok(())
        } else {
            Err(crate::TrainError::Stopped("the layer probe"))
        }
    }
}

#[derive(Clone, Default)]
struct Mean {
    sum: f64,
    count: usize,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
    }

    fn value(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// cos(a_t, b_t) of each real (unpadded) token of (batch, seq, hidden) states.
fn token_cosines(a: &Tensor, b: &Tensor, lengths: &[usize]) -> Result<Vec<f64>> {
    let err = candle("cosines of hidden states");
    let dot = (a * b).and_then(|p| p.sum(D::Minus1)).map_err(&err)?;
    let norms = |x: &Tensor| x.sqr().and_then(|s| s.sum(D::Minus1)).and_then(|s| s.sqrt());
    let denom = (norms(a).map_err(&err)? * norms(b).map_err(&err)?).map_err(&err)?;
    let (dot, denom) = (
        dot.to_vec2::<f32>().map_err(&err)?,
        denom.to_vec2::<f32>().map_err(&err)?,
    );
    let mut out = Vec::new();
    for ((d, n), &len) in dot.iter().zip(&denom).zip(lengths) {
        out.extend(
            d.iter()
                .zip(n)
                .take(len)
                .map(|(d, n)| *d as f64 / (*n as f64).max(1e-30)),
        );
    }
    Ok(out)
}

/// (gradient norm, weight norm) of each layer: the batches' gradients of the token-mean loss over `learned`
/// tokens, summed.
fn gradient_norms(
    decoder: &Decoder,
    params: &Params,
    batches: &[(Batch, Vec<Vec<i64>>)],
    learned: usize,
    layer_tensors: &[Vec<String>],
    passes: &mut Passes,
) -> Result<Vec<(f64, f64)>> {
    let err = candle("probe gradients");
    let names: Vec<&String> = params.vars.keys().collect();
    let mut sums: Vec<Option<Tensor>> = vec![None; names.len()];
    for (batch, labels) in batches {
        passes.next()?;
        // Layer by layer (gradient checkpointing): only each layer's input is kept across the pass and one layer's
        // activations at a time, so the probe needs about what a checkpointed run of one batch needs, not a full
        // backward pass's activations of every layer at once.
        let token_weight = 1.0 / learned.max(1) as f64;
        decoder.checkpointed_backward(batch, labels, token_weight, &mut |store| {
            let grads = params
                .vars
                .values()
                .map(|v| store.get(v.as_tensor()).cloned())
                .collect();
            accumulate(&mut sums, grads).map_err(&err)
        })?;
    }
    let sums: std::collections::BTreeMap<&str, Tensor> = names
        .into_iter()
        .zip(sums)
        .filter_map(|(n, g)| g.map(|g| (n.as_str(), g)))
        .collect();
    let sq = |t: &Tensor| -> Result<f64> {
        Ok(t.sqr()
            .and_then(|s| s.sum_all())
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(&err)? as f64)
    };
    layer_tensors
        .iter()
        .map(|names| {
            let (mut g, mut w) = (0.0, 0.0);
            for name in names {
                if let Some(t) = sums.get(name.as_str()) {
                    g += sq(t)?;
                }
                if let Some(v) = params.vars.get(name) {
                    w += sq(v.as_tensor())?;
                }
            }
            Ok((g.sqrt(), w.sqrt()))
        })
        .collect()
}

/// What a suggestion ranks layers by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum SuggestBy {
    /// Gradient norm relative to the weight norm.
    Gradient,
    /// Block Influence.
    Influence,
}

/// Layer ids from the highest `by` down (ties to the higher layer: closer to the output, cheaper to train);
/// `None` when the signal is missing (a forward-only probe has no gradients).
fn rank(layers: &[LayerSignal], by: SuggestBy) -> Option<Vec<usize>> {
    let mut scored: Vec<(f64, usize)> = layers
        .iter()
        .map(|l| {
            let score = match by {
                SuggestBy::Gradient => l.relative_grad,
                SuggestBy::Influence => Some(l.block_influence),
            };
            score.map(|s| (s, l.layer))
        })
        .collect::<Option<_>>()?;
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    Some(scored.into_iter().map(|(_, l)| l).collect())
}

/// The `k` layers ranking highest by `by`, ascending; an error when the report lacks the signal (a forward-only
/// probe has no gradients) or `k` is more than the layers.
pub fn suggest(report: &ProbeReport, k: usize, by: SuggestBy) -> std::result::Result<Vec<usize>, String> {
    if k == 0 || k > report.layers.len() {
        return Err(format!("--suggest {k}: choose 1 to {} layers", report.layers.len()));
    }
    let ranked = rank(&report.layers, by)
        .ok_or("a forward-only probe has no gradients; rank by influence, or probe with gradients")?;
    let mut ids: Vec<usize> = ranked.into_iter().take(k).collect();
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(grads: &[Option<f64>], influence: &[f64]) -> ProbeReport {
        ProbeReport {
            batches: 1,
            tokens: 10,
            window: 1,
            ranked_by_gradient: None,
            ranked_by_influence: Vec::new(),
            layers: influence
                .iter()
                .zip(grads)
                .enumerate()
                .map(|(layer, (&b, &g))| LayerSignal {
                    layer,
                    block_influence: b,
                    angular_distance: None,
                    grad_norm: g,
                    relative_grad: g,
                })
                .collect(),
        }
    }

    #[test]
    fn suggestions_take_the_highest_ranked_layers_in_ascending_order() {
        let r = report(&[Some(0.5), Some(0.9), Some(0.1), Some(0.9)], &[0.3, 0.1, 0.4, 0.2]);
        assert_eq!(suggest(&r, 2, SuggestBy::Gradient).unwrap(), vec![1, 3]);
        assert_eq!(
            suggest(&r, 1, SuggestBy::Gradient).unwrap(),
            vec![3],
            "a tie goes to the higher layer"
        );
        assert_eq!(suggest(&r, 2, SuggestBy::Influence).unwrap(), vec![0, 2]);
        assert!(suggest(&r, 5, SuggestBy::Gradient).unwrap_err().contains("1 to 4"));
        assert!(suggest(&r, 0, SuggestBy::Gradient).is_err());
        let forward = report(&[None, None], &[0.2, 0.1]);
        assert!(suggest(&forward, 1, SuggestBy::Gradient)
            .unwrap_err()
            .contains("forward-only"));
        assert_eq!(suggest(&forward, 1, SuggestBy::Influence).unwrap(), vec![0]);
    }
}
