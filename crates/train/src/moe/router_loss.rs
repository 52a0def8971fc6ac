//! The router's load-balancing loss, as transformers' `load_balancing_loss_func` computes it (the Switch
//! Transformer's, over every sparse layer's router at once): with f_e the share of (token, layer, choice) routes that
//! went to expert e and P_e the mean router probability of e over (token, layer) rows, both over real tokens only,
//!
//! ```text
//! loss = E · Σ_e (Σ_k f_{k,e}) · P_e,   f_{k,e} = count_{k,e} / N,   P_e = Σ_rows p_e / N,   N = layers · tokens
//! ```
//!
//! The counts come from the routes the host chose (no gradient, as transformers' one-hot); the probabilities keep
//! theirs, so the loss trains the routers and, through them, the layers below. Each sparse layer of one forward pass
//! adds its (E) sum of probabilities and its counts; the graph gains one small product per layer.

use candle_core::{DType, Result, Tensor};

pub(crate) struct RouterStats {
    /// 1 for a real token, 0 for padding, (1, tokens) f32 on the device; and the same on the host.
    real: Tensor,
    real_host: Vec<f32>,
    /// Per sparse layer, (1, E): Σ over real tokens of the router's probabilities.
    prob_sums: Vec<Tensor>,
    /// Per expert, how many (real token, layer, choice) routes went to it.
    counts: Vec<f64>,
    /// Σ over layers of the real tokens.
    rows: f64,
    /// Whether the probability sums keep their graph (false: a pass that only counts, as gradient checkpointing's
    /// first forward, which must not hold every layer's graph).
    track: bool,
}

impl RouterStats {
    /// For one forward pass over `real` (per token of the flattened batch, whether it is a real token).
    pub fn new(real: &[bool], device: &candle_core::Device) -> Result<RouterStats> {
        let real_host: Vec<f32> = real.iter().map(|&r| if r { 1.0 } else { 0.0 }).collect();
        Ok(RouterStats {
            real: Tensor::from_slice(&real_host, (1, real.len()), device)?,
            real_host,
            prob_sums: Vec::new(),
            counts: Vec::new(),
            rows: 0.0,
            track: true,
        })
    }

    /// [`RouterStats::new`] for a pass whose probability sums keep no graph.
    pub fn untracked(real: &[bool], device: &candle_core::Device) -> Result<RouterStats> {
        Ok(RouterStats {
            track: false,
            ..RouterStats::new(real, device)?
        })
    }

    /// One sparse layer: its router's probabilities (tokens, E) in f32 and each token's chosen experts
    /// (tokens × top_k).
    pub fn record(&mut self, probs: &Tensor, chosen: &[u32]) -> Result<()> {
        let (tokens, experts) = probs.dims2()?;
        if tokens != self.real_host.len() || chosen.len() % tokens.max(1) != 0 {
            candle_core::bail!(
                "router loss: {tokens} tokens of router probabilities for a batch of {}",
                self.real_host.len()
            )
        }
        if self.counts.is_empty() {
            self.counts = vec![0.0; experts];
        }
        if self.counts.len() != experts {
            candle_core::bail!(
                "router loss: a layer of {experts} experts after one of {}",
                self.counts.len()
            )
        }
        let top_k = chosen.len() / tokens.max(1);
        for (token, row) in chosen.chunks(top_k.max(1)).enumerate() {
            let weight = self.real_host[token] as f64;
            for &e in row {
                self.counts[e as usize] += weight;
            }
        }
        self.rows += self.real_host.iter().map(|&r| r as f64).sum::<f64>();
        let sums = self.real.matmul(&probs.to_dtype(DType::F32)?)?;
        self.prob_sums.push(if self.track { sums } else { sums.detach() });
        Ok(())
    }

    /// The loss (a scalar f32 tensor), or None where no sparse layer ran or no token is real.
    pub fn loss(&self) -> Result<Option<Tensor>> {
        match self.weights()? {
            Some(weights) => self.weighed(&weights),
            None => Ok(None),
        }
    }

    /// The loss is linear in the probability sums once the counts are known: `E · count_e / N²` per expert (E, 1),
    /// or None where no sparse layer ran or no token is real.
    pub fn weights(&self) -> Result<Option<Tensor>> {
        if self.prob_sums.is_empty() || self.rows == 0.0 {
            return Ok(None);
        }
        let experts = self.counts.len();
        let scale = experts as f64 / (self.rows * self.rows);
        let weights: Vec<f32> = self.counts.iter().map(|&c| (c * scale) as f32).collect();
        Tensor::from_vec(weights, (experts, 1), self.real.device()).map(Some)
    }

    /// This pass's probability sums times `weights` (another pass's, where gradient checkpointing recomputes one
    /// layer under the counts of the whole forward): its part of the loss, or None where no sparse layer ran.
    pub fn weighed(&self, weights: &Tensor) -> Result<Option<Tensor>> {
        if self.prob_sums.is_empty() {
            return Ok(None);
        }
        let probs = Tensor::cat(&self.prob_sums, 0)?.sum_keepdim(0)?;
        probs.matmul(weights)?.squeeze(1)?.squeeze(0).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// transformers' formula written out over two layers, one padded token, and its gradient by autograd.
    #[test]
    fn matches_the_switch_transformer_formula_over_layers_and_real_tokens() {
        let dev = Device::Cpu;
        let real = [true, true, false];
        let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap()).unwrap();
        let probs = crate::ops::softmax_last_dim(logits.as_tensor()).unwrap();
        let chosen = [[0u32, 2, 1, 2, 3, 0], [3, 1, 1, 0, 2, 3]];
        let mut stats = RouterStats::new(&real, &dev).unwrap();
        for (l, c) in chosen.iter().enumerate() {
            stats.record(&probs.get(l).unwrap(), c).unwrap();
        }
        let loss = stats.loss().unwrap().unwrap();
        // By hand: N = 2 layers × 2 real tokens; counts of the real tokens' choices; mean probabilities.
        let p = probs.to_vec3::<f32>().unwrap();
        let mut counts = [0f64; 4];
        let mut prob = [0f64; 4];
        for l in 0..2 {
            for t in 0..2 {
                for k in 0..2 {
                    counts[chosen[l][t * 2 + k] as usize] += 1.0;
                }
                for e in 0..4 {
                    prob[e] += p[l][t][e] as f64;
                }
            }
        }
        let want: f64 = 4.0 * (0..4).map(|e| (counts[e] / 4.0) * (prob[e] / 4.0)).sum::<f64>();
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let grads = loss.backward().unwrap();
        let g = grads.get(logits.as_tensor()).unwrap();
        // The padded token's logits get no gradient; the real ones do.
        let pad = g
            .narrow(1, 2, 1)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let real_g = g
            .narrow(1, 0, 2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(pad == 0.0 && real_g > 0.0, "padded {pad}, real {real_g}");
    }
}
