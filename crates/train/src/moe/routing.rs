//! Which experts each token runs through, and the weights of their outputs: the `top_k` most probable of a softmax
//! in f32 (renormalised where the layer says); or DeepSeek-V3's choice among the best groups by sigmoid scores plus
//! a fixed bias, weighed by the unbiased scores (renormalised, then scaled). The sigmoid scores stay in the
//! activations' dtype: transformers casts the router's input and weight to f32, which torch's autocast (the mixed
//! precision FreezeTune follows) casts back for the matmul, and the sigmoid keeps its input's dtype; only the
//! choice adds the f32 bias. Chosen on the host from the detached scores; the weights stay on the graph.

use crate::config::ExpertsSpec;
use crate::experts::RouteBy;
use crate::family::Routing;
use crate::ops::{rms_norm, sigmoid, softmax_last_dim};
use crate::params::Params;
use candle_core::{DType, Result, Tensor};

/// How a layer's router scores choose and weigh its experts.
pub(super) enum Choice {
    Softmax,
    /// The router's correction bias (f32, as transformers keeps it), the groups, and the weights' scale.
    SigmoidGroups {
        bias: Vec<f32>,
        groups: Groups,
        scale: f64,
    },
    /// Gemma 4: the router's input normalised (unweighted, `eps`) and scaled by `input_scale` · hidden^-0.5; the
    /// chosen probabilities renormalised, each times its expert's `expert_scale` entry. Both scales are
    /// parameters of the layer (trained with it).
    NormedSoftmax {
        input_scale: Tensor,
        expert_scale: Tensor,
        eps: f64,
    },
}

impl Choice {
    /// The choice of the router at `router` (`model.layers.N.mlp.gate`) of the layer at `layer`
    /// (`model.layers.N`), as the family and config.json say; `eps` is the model's RMSNorm epsilon.
    pub fn load(
        params: &Params,
        (layer, router): (&str, &str),
        table: Routing,
        spec: RouteBy,
        eps: f64,
    ) -> crate::error::Result<Choice> {
        match (table, spec) {
            (
                Routing::NormedSoftmax {
                    input_scale,
                    expert_scale,
                },
                RouteBy::NormedSoftmax,
            ) => Ok(Choice::NormedSoftmax {
                input_scale: params.get(&format!("{layer}.{input_scale}"))?,
                expert_scale: params.get(&format!("{layer}.{expert_scale}"))?,
                eps,
            }),
            (
                Routing::SigmoidGroups { correction_bias, .. },
                RouteBy::SigmoidGroups {
                    groups,
                    top_groups,
                    scale,
                },
            ) => Ok(Choice::SigmoidGroups {
                bias: self::correction_bias(params, &format!("{router}.{correction_bias}"))?,
                groups: Groups {
                    count: groups,
                    kept: top_groups,
                },
                scale,
            }),
            _ => Ok(Choice::Softmax),
        }
    }

    /// What the router's linear reads from the layer's input `x` (tokens, hidden): `x` itself, or Gemma 4's
    /// normalised and scaled `x`.
    pub fn router_input(&self, x: &Tensor) -> Result<Tensor> {
        let Choice::NormedSoftmax { input_scale, eps, .. } = self else {
            return Ok(x.clone());
        };
        let ones = Tensor::ones(x.dim(1)?, DType::F32, x.device())?;
        let root = (x.dim(1)? as f64).powf(-0.5);
        let scale = input_scale.to_dtype(x.dtype())?;
        rms_norm(x, &ones, *eps)?.broadcast_mul(&scale)? * root
    }

    /// Each token's scores (tokens, E) from its router `logits`, and its chosen experts.
    pub fn choose(&self, logits: &Tensor, top_k: usize) -> Result<(Tensor, Routes)> {
        match self {
            Choice::Softmax | Choice::NormedSoftmax { .. } => {
                let probs = softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
                let routes = Routes::choose(&probs.detach().to_vec2::<f32>()?, top_k);
                Ok((probs, routes))
            }
            Choice::SigmoidGroups { bias, groups, .. } => {
                let scores = sigmoid(logits)?;
                let host = scores.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
                Ok((scores, Routes::choose_in_groups(&host, bias, *groups, top_k)))
            }
        }
    }

    /// The chosen experts' weights (tokens, top_k), in the scores' dtype.
    pub fn weigh(&self, scores: &Tensor, routes: &Routes, top_k: usize, spec: ExpertsSpec) -> Result<Tensor> {
        let chosen = Tensor::from_slice(&routes.chosen, (scores.dim(0)?, top_k), scores.device())?;
        let weights = scores.gather(&chosen, 1)?;
        match self {
            Choice::Softmax if spec.normalize => weights.broadcast_div(&weights.sum_keepdim(1)?),
            Choice::Softmax => Ok(weights),
            Choice::NormedSoftmax { expert_scale, .. } => {
                let normed = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
                let scales = expert_scale
                    .to_dtype(normed.dtype())?
                    .index_select(&chosen.flatten_all()?, 0)?
                    .reshape(normed.shape())?;
                normed * scales
            }
            Choice::SigmoidGroups { scale, .. } => {
                let weights = match spec.normalize {
                    true => weights.broadcast_div(&(weights.sum_keepdim(1)? + 1e-20)?)?,
                    false => weights,
                };
                weights * *scale
            }
        }
    }
}

/// Which experts each token runs through, and the (token, choice) pairs grouped by expert.
#[derive(Debug, PartialEq)]
pub(super) struct Routes {
    /// Per token, its `top_k` experts, most probable first (tokens × top_k).
    pub chosen: Vec<u32>,
    /// Per expert, the tokens that chose it, in token order.
    pub tokens_by_expert: Vec<Vec<u32>>,
    /// The pairs (as `token · top_k + choice`) in the order of `tokens_by_expert` flattened.
    pub pairs_by_expert: Vec<u32>,
}

impl Routes {
    /// The `top_k` most probable experts of each row of `probs` (ties to the lower expert number).
    pub fn choose(probs: &[Vec<f32>], top_k: usize) -> Routes {
        Routes::from_choices(
            probs.first().map_or(0, Vec::len),
            top_k,
            probs.iter().map(|row| best(row, top_k, |_| true)),
        )
    }

    /// DeepSeek-V3's choice: each row's scores plus `bias` pick, among the experts of its best `groups.kept`
    /// groups (a group scored by the sum of its two best biased scores), the `top_k` best (ties to the lower
    /// number).
    pub fn choose_in_groups(scores: &[Vec<f32>], bias: &[f32], groups: Groups, top_k: usize) -> Routes {
        let experts = bias.len();
        let per_group = experts / groups.count;
        let choices = scores.iter().map(|row| {
            let biased: Vec<f32> = row.iter().zip(bias).map(|(s, b)| s + b).collect();
            let group_scores: Vec<f32> = biased
                .chunks(per_group)
                .map(|group| best(group, 2, |_| true).iter().map(|&e| group[e]).sum())
                .collect();
            let kept = best(&group_scores, groups.kept, |_| true);
            best(&biased, top_k, |e| kept.contains(&(e / per_group)))
        });
        Routes::from_choices(experts, top_k, choices)
    }

    /// Routes from each token's chosen experts, best first.
    fn from_choices(experts: usize, top_k: usize, choices: impl Iterator<Item = Vec<usize>>) -> Routes {
        let mut chosen = Vec::new();
        let mut tokens_by_expert = vec![Vec::new(); experts];
        let mut pairs = vec![Vec::new(); experts];
        for (token, row) in choices.enumerate() {
            for (choice, e) in row.into_iter().enumerate() {
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

/// How many equal groups the experts form, and how many of them a token chooses among.
#[derive(Debug, Clone, Copy)]
pub(super) struct Groups {
    pub count: usize,
    pub kept: usize,
}

/// The `k` largest of `values` among the indices `allowed` keeps, largest first (ties to the lower index).
fn best(values: &[f32], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| allowed(i)).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// The router's correction bias, which only picks experts: in f32 as the checkpoint stores it (transformers keeps
/// it in f32 whatever the model's dtype), on the host where the choice is made. It is a buffer, never trained.
pub(super) fn correction_bias(params: &Params, name: &str) -> crate::error::Result<Vec<f32>> {
    if params.vars.contains_key(name) {
        return Err(crate::error::TrainError::Tensor {
            name: name.into(),
            reason: "is the router's correction bias, a buffer transformers never trains: it cannot be trainable"
                .into(),
        });
    }
    // Params holds buffers in f32, unrounded whatever the compute dtype.
    let values = params.get(name)?.to_dtype(DType::F32).and_then(|t| t.to_vec1::<f32>());
    values.map_err(|source| crate::error::TrainError::Candle {
        context: format!("reading {name}"),
        source,
    })
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

    #[test]
    fn grouped_choice_keeps_the_best_groups_and_picks_by_the_biased_scores() {
        // Groups {0,1}, {2,3}, {4,5}. Biased: [.9+0, .1+0, .5+.3, .4+.3, .6+0, .55-0.5].
        let scores = vec![vec![0.9, 0.1, 0.5, 0.4, 0.6, 0.55]];
        let bias = [0.0, 0.0, 0.3, 0.3, 0.0, -0.5];
        // Group sums: 1.0, 1.5, 0.65: the best two are groups 1 and 0; expert 4 (0.6, the third best unbiased
        // score) is out, and the bias puts 2 and 3 (0.8, 0.7) ahead of 0.9's neighbour 1.
        let r = Routes::choose_in_groups(&scores, &bias, Groups { count: 3, kept: 2 }, 3);
        assert_eq!(r.chosen, vec![0, 2, 3]);
        let one = Routes::choose_in_groups(&scores, &bias, Groups { count: 3, kept: 1 }, 2);
        assert_eq!(one.chosen, vec![2, 3]);
        let all = Routes::choose_in_groups(&scores, &[0.0; 6], Groups { count: 1, kept: 1 }, 2);
        assert_eq!(all.chosen, vec![0, 4]);
    }
}
