//! A sparse mixture-of-experts MLP as transformers computes it (qwen3_moe's `SparseMoeBlock`): each token's router
//! logits go through a softmax in f32; its `top_k` experts are chosen on the host; their probabilities
//! (renormalised to sum to 1 where the layer says), in the activations' dtype, weight each chosen expert's SwiGLU
//! output, and the weighted outputs are summed per token in the order of the experts.
//!
//! Every op here is a plain differentiable candle op, so it runs on every backend. What the backward pass keeps is
//! what a dense MLP of `top_k` times the expert width would keep: each token's input once per chosen expert, and
//! each expert's intermediates for its own tokens. The weighted outputs are gathered into one tensor and added
//! into the result by one `index_add` (a chain of per-expert adds would keep a full-size sum per expert).

use crate::config::ExpertsSpec;
use crate::family::ExpertTable;
use crate::linear::Linear;
use crate::ops::softmax_last_dim;
use crate::params::Params;
use candle_core::{DType, Result, Tensor, D};

/// One expert: a SwiGLU MLP.
pub(crate) struct Expert {
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A layer's router and experts.
pub(crate) struct Experts {
    router: Linear,
    experts: Vec<Expert>,
    spec: ExpertsSpec,
}

impl Experts {
    /// The router and experts of the layer at `p` (`model.layers.N`), named as `table` says.
    pub fn load(params: &Params, p: &str, table: &ExpertTable, spec: ExpertsSpec) -> crate::error::Result<Experts> {
        let linear = |name: String| params.linear(&format!("{p}.{name}"), false);
        let experts = (0..spec.count)
            .map(|e| {
                let at = |proj: &str| linear(format!("{}.{e}.{proj}", table.experts));
                Ok(Expert {
                    gate: at(table.gate)?,
                    up: at(table.up)?,
                    down: at(table.down)?,
                })
            })
            .collect::<crate::error::Result<_>>()?;
        Ok(Experts {
            router: linear(table.router.to_string())?,
            experts,
            spec,
        })
    }

    /// The sparse MLP of `h` (.., hidden). `product` is the activation's `act(gate) · up`.
    pub fn forward(&self, h: &Tensor, product: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let hidden = h.dim(D::Minus1)?;
        let tokens = h.elem_count() / hidden;
        let x = h.reshape((tokens, hidden))?;
        let probs = softmax_last_dim(&self.router.forward(&x)?.to_dtype(DType::F32)?)?;
        let routes = Routes::choose(&probs.detach().to_vec2::<f32>()?, self.spec.top_k);
        let device = x.device();
        let chosen = Tensor::from_vec(routes.chosen.clone(), (tokens, self.spec.top_k), device)?;
        let mut weights = probs.gather(&chosen, 1)?;
        if self.spec.normalize {
            weights = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
        }
        let weights = weights.to_dtype(x.dtype())?.flatten_all()?;
        let by_expert = Tensor::from_vec(routes.pairs_by_expert.clone(), routes.pairs_by_expert.len(), device)?;
        let weights = weights.index_select(&by_expert, 0)?;
        let mut outputs = Vec::new();
        let mut start = 0;
        for (expert, rows) in self.experts.iter().zip(&routes.tokens_by_expert) {
            if rows.is_empty() {
                continue;
            }
            let rows_t = Tensor::from_slice(rows, rows.len(), device)?;
            let xe = x.index_select(&rows_t, 0)?;
            let ye = expert
                .down
                .forward(&product(&expert.gate.forward(&xe)?, &expert.up.forward(&xe)?)?)?;
            outputs.push(ye.broadcast_mul(&weights.narrow(0, start, rows.len())?.unsqueeze(1)?)?);
            start += rows.len();
        }
        let all_rows: Vec<u32> = routes.tokens_by_expert.concat();
        let all_rows = Tensor::from_vec(all_rows, start, device)?;
        let out =
            Tensor::zeros((tokens, hidden), x.dtype(), device)?.index_add(&all_rows, &Tensor::cat(&outputs, 0)?, 0)?;
        out.reshape(h.shape())
    }
}

/// Which experts each token runs through, and the (token, choice) pairs grouped by expert.
#[derive(Debug, PartialEq)]
struct Routes {
    /// Per token, its `top_k` experts, most probable first (tokens × top_k).
    chosen: Vec<u32>,
    /// Per expert, the tokens that chose it, in token order.
    tokens_by_expert: Vec<Vec<u32>>,
    /// The pairs (as `token · top_k + choice`) in the order of `tokens_by_expert` flattened.
    pairs_by_expert: Vec<u32>,
}

impl Routes {
    /// The `top_k` most probable experts of each row of `probs` (ties to the lower expert number).
    fn choose(probs: &[Vec<f32>], top_k: usize) -> Routes {
        let experts = probs.first().map_or(0, Vec::len);
        let mut chosen = Vec::with_capacity(probs.len() * top_k);
        let mut tokens_by_expert = vec![Vec::new(); experts];
        let mut pairs = vec![Vec::new(); experts];
        for (token, row) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for (choice, &e) in order[..top_k].iter().enumerate() {
                chosen.push(e as u32);
                tokens_by_expert[e].push(token as u32);
                pairs[e].push((token * top_k + choice) as u32);
            }
        }
        Routes {
            chosen,
            tokens_by_expert,
            pairs_by_expert: pairs.concat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_group_each_tokens_choices_by_expert() {
        let probs = vec![vec![0.1, 0.6, 0.3], vec![0.5, 0.2, 0.3], vec![0.2, 0.2, 0.6]];
        let r = Routes::choose(&probs, 2);
        assert_eq!(r.chosen, vec![1, 2, 0, 2, 2, 0]);
        assert_eq!(r.tokens_by_expert, vec![vec![1, 2], vec![0], vec![0, 1, 2]]);
        // token 1's first choice (pair 2) and token 2's second (pair 5) went to expert 0; ties go to the lower one.
        assert_eq!(r.pairs_by_expert, vec![2, 5, 0, 1, 3, 4]);
    }
}
