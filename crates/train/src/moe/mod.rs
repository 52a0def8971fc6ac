//! A sparse mixture-of-experts MLP as transformers computes it (qwen3_moe's `SparseMoeBlock`): each token's router
//! logits go through a softmax in f32 (DeepSeek-V3 and GLM-4.5: a sigmoid of f32 logits, chosen by groups with a
//! fixed bias, `routing.rs`); its `top_k` experts are chosen on the host; their probabilities
//! (renormalised to sum to 1 where the layer says), in the activations' dtype (f32 for Mixtral), weight each chosen
//! expert's SwiGLU output, and the weighted outputs are summed per token in the order of the experts; a shared
//! expert's output, scaled by σ of its gate where it has one, is added to every token's.
//!
//! Every op here runs on every backend. Experts stored one linear each (qwen3_moe) are plain differentiable ops:
//! the backward pass keeps what a dense MLP of `top_k` times the expert width would keep (each token's input once
//! per chosen expert, each expert's intermediates for its own tokens). Experts stacked in two tensors (Qwen3.5
//! MoE) are one node with a hand-written backward (`stacked.rs`) that keeps only its output; gpt-oss's, stacked
//! transposed with biases, two such nodes (`interleaved.rs`). Either way the
//! experts' outputs are weighted in one tensor and added into the result by one `index_add` (a chain of
//! per-expert adds would keep a full-size sum per expert).

mod activation;
mod interleaved;
mod interleaved_cpu;
mod router_loss;
mod routing;
mod stacked;
mod stacked_cpu;

use crate::config::{Activation, ExpertsSpec};
use crate::family::{ExpertActivation, ExpertTable, ExpertWeights, MlpLayout};
use crate::linear::Linear;
use crate::ops::sigmoid;
use crate::params::Params;
use activation::GateActivation;
use candle_core::{DType, Result, Tensor, D};
use interleaved::Interleaved;
pub(crate) use router_loss::RouterStats;
use routing::{Choice, Routes};
use stacked::Stacked;

const ONLY_SWIGLU: &str = "is a stacked expert tensor, which FreezeTune runs with a GLU of SiLU or GELU-tanh only: \
     the config's activation (`hidden_act`, or Gemma's `hidden_activation`) must be \"silu\" or \
     \"gelu_pytorch_tanh\"";

/// A SwiGLU MLP: one expert, or the shared one.
pub(crate) struct Expert {
    gate_up: GateUp,
    down: Linear,
}

/// An MLP's gate and up projections: two linears, or one holding gate then up (`width` rows each).
enum GateUp {
    Separate(Linear, Linear),
    Fused(Linear, usize),
}

impl Expert {
    fn load(params: &Params, gate: String, up: String, down: String) -> crate::error::Result<Expert> {
        Ok(Expert {
            gate_up: GateUp::Separate(params.linear(&gate, false)?, params.linear(&up, false)?),
            down: params.linear(&down, false)?,
        })
    }

    /// The MLP `layout` names after `p.` (`model.layers.N`), `width` wide.
    fn load_layout(params: &Params, p: &str, layout: MlpLayout, width: usize) -> crate::error::Result<Expert> {
        let at = |name: &str| format!("{p}.{name}");
        match layout {
            MlpLayout::Separate { gate, up, down } => Expert::load(params, at(gate), at(up), at(down)),
            MlpLayout::Fused { gate_up, down } => Ok(Expert {
                gate_up: GateUp::Fused(params.linear(&at(gate_up), false)?, width),
                down: params.linear(&at(down), false)?,
            }),
        }
    }

    fn forward(&self, x: &Tensor, product: &impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate(gate, up) => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(gate_up, width) => {
                let y = gate_up.forward(x)?;
                let last = y.rank() - 1;
                (y.narrow(last, 0, *width)?, y.narrow(last, *width, *width)?)
            }
        };
        self.down.forward(&product(&gate, &up)?)
    }
}

/// The experts' weights, as the checkpoint holds them.
enum Weights {
    Separate(Vec<Expert>),
    Stacked(Stacked),
    Interleaved(Interleaved),
}

/// The shared expert and its gate, where it has one.
struct Shared {
    mlp: Expert,
    gate: Option<Linear>,
}

/// A layer's router, experts and shared expert.
pub(crate) struct Experts {
    router: Linear,
    /// How the router's scores choose and weigh the experts.
    choice: Choice,
    weights: Weights,
    shared: Option<Shared>,
    spec: ExpertsSpec,
}

impl Experts {
    /// The router and experts of the layer at `p` (`model.layers.N`), named as `table` says. Stacked experts
    /// run a GLU of the family's `activation` (SiLU or GELU-tanh) or the table's own activation; separate ones,
    /// the family's activation. `eps` is the model's RMSNorm epsilon (Gemma 4's router normalises its input).
    pub fn load(
        params: &Params,
        p: &str,
        table: &ExpertTable,
        spec: ExpertsSpec,
        (activation, eps): (Activation, f64),
    ) -> crate::error::Result<Experts> {
        let refuse = |name: &str, reason: &str| crate::error::TrainError::Tensor {
            name: format!("{p}.{name}"),
            reason: reason.into(),
        };
        let stacked_activation = GateActivation::of(table.activation, activation);
        let weights = match table.weights {
            ExpertWeights::Separate { experts, .. } if table.activation != ExpertActivation::Glu => {
                return Err(refuse(
                    experts,
                    "are separate experts, which FreezeTune runs with the family's activation only",
                ))
            }
            ExpertWeights::Separate {
                experts,
                gate,
                up,
                down,
            } => Weights::Separate(
                (0..spec.count)
                    .map(|e| {
                        let at = |proj: &str| format!("{p}.{experts}.{e}.{proj}");
                        Expert::load(params, at(gate), at(up), at(down))
                    })
                    .collect::<crate::error::Result<_>>()?,
            ),
            ExpertWeights::Stacked { gate_up, down } => match stacked_activation {
                Some(act @ (GateActivation::Silu | GateActivation::GeluTanh)) => Weights::Stacked(Stacked {
                    gate_up: params.stacked_experts(&format!("{p}.{gate_up}"))?,
                    down: params.stacked_experts(&format!("{p}.{down}"))?,
                    width: spec.width,
                    activation: act,
                }),
                _ => return Err(refuse(gate_up, ONLY_SWIGLU)),
            },
            ExpertWeights::Interleaved { gate_up, down } => Weights::Interleaved(Interleaved {
                gate_up: params.stacked_experts(&format!("{p}.{gate_up}"))?,
                gate_up_bias: params.get(&format!("{p}.{gate_up}_bias"))?,
                down: params.stacked_experts(&format!("{p}.{down}"))?,
                down_bias: params.get(&format!("{p}.{down}_bias"))?,
                activation: stacked_activation.ok_or_else(|| refuse(gate_up, ONLY_SWIGLU))?,
            }),
        };
        let shared = match (table.shared, spec.shared_width) {
            (Some(s), Some(width)) => Some(Shared {
                mlp: Expert::load_layout(params, p, s.mlp, width)?,
                gate: s
                    .gate
                    .map(|gate| params.linear(&format!("{p}.{gate}"), false))
                    .transpose()?,
            }),
            _ => None,
        };
        Ok(Experts {
            router: params.linear(&format!("{p}.{}", table.router), table.router_bias)?,
            choice: Choice::load(
                params,
                (p, &format!("{p}.{}", table.router)),
                table.routing,
                spec.routing,
                eps,
            )?,
            weights,
            shared,
            spec,
        })
    }

    /// The sparse MLP of `h` (.., hidden), routed by `router_in` (the same shape: `h` itself, or Gemma 4's
    /// un-normed residual). `product` is the activation's `act(gate) · up`. With `stats`, the router's
    /// probabilities and choices are recorded for the load-balancing loss.
    pub fn forward(
        &self,
        router_in: &Tensor,
        h: &Tensor,
        product: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        stats: Option<&mut RouterStats>,
    ) -> Result<Tensor> {
        let hidden = h.dim(D::Minus1)?;
        let tokens = h.elem_count() / hidden;
        let x = h.reshape((tokens, hidden))?;
        let top_k = self.spec.top_k;
        let router_in = self.choice.router_input(&router_in.reshape((tokens, hidden))?)?;
        let (scores, routes) = self.choice.choose(&self.router.forward(&router_in)?, top_k)?;
        if let Some(stats) = stats {
            stats.record(&scores.to_dtype(DType::F32)?, &routes.chosen)?;
        }
        let weights = self.choice.weigh(&scores, &routes, top_k, self.spec)?;
        let weights = match self.spec.weigh_in_f32 {
            true => weights,
            false => weights.to_dtype(x.dtype())?,
        };
        let by_expert = Tensor::from_slice(&routes.pairs_by_expert, routes.pairs_by_expert.len(), x.device())?;
        let weights = weights.flatten_all()?.index_select(&by_expert, 0)?;
        let outputs = self.expert_outputs(&x, &routes, &product)?;
        let rows = routes.tokens_by_expert.concat();
        let rows = Tensor::from_vec(rows, routes.pairs_by_expert.len(), x.device())?;
        let weighted = outputs
            .to_dtype(weights.dtype())?
            .broadcast_mul(&weights.unsqueeze(1)?)?
            .to_dtype(x.dtype())?;
        let mut out = Tensor::zeros((tokens, hidden), x.dtype(), x.device())?.index_add(&rows, &weighted, 0)?;
        if let Some(shared) = &self.shared {
            let y = shared.mlp.forward(&x, &product)?;
            out = match &shared.gate {
                Some(gate) => (out + y.broadcast_mul(&sigmoid(&gate.forward(&x)?)?)?)?,
                None => (out + y)?,
            };
        }
        out.reshape(h.shape())
    }

    /// Each expert's output for its rows of `x`, experts in order (unweighted).
    fn expert_outputs(
        &self,
        x: &Tensor,
        routes: &Routes,
        product: &impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match &self.weights {
            Weights::Separate(experts) => {
                let mut outputs = Vec::new();
                for (expert, rows) in experts.iter().zip(&routes.tokens_by_expert) {
                    if !rows.is_empty() {
                        let xe = x.index_select(&Tensor::from_slice(rows, rows.len(), x.device())?, 0)?;
                        outputs.push(expert.forward(&xe, product)?);
                    }
                }
                Tensor::cat(&outputs, 0)
            }
            Weights::Stacked(stacked) => stacked.forward(x, &routes.tokens_by_expert),
            Weights::Interleaved(experts) => experts.forward(x, &routes.tokens_by_expert),
        }
    }
}

/// `x`'s gradient from each expert's (rows, gradient of those rows): summed where a token chose several experts.
pub(super) fn scatter_rows(x: &Tensor, parts: &[(Tensor, Tensor)]) -> Result<Tensor> {
    let rows: Vec<&Tensor> = parts.iter().map(|(r, _)| r).collect();
    let grads: Vec<&Tensor> = parts.iter().map(|(_, g)| g).collect();
    x.zeros_like()?.index_add(
        &Tensor::cat(&rows, 0)?,
        &Tensor::cat(&grads, 0)?.to_dtype(x.dtype())?,
        0,
    )
}

/// A node's gradients computed over plain f32 buffers (each where wanted) as tensors shaped as the operands they
/// belong to.
pub(super) fn operand_grads(grads: [Option<Vec<f32>>; 3], operands: [&Tensor; 3]) -> Result<[Option<Tensor>; 3]> {
    let [a, b, c] = grads;
    let tensor = |values: Option<Vec<f32>>, like: &Tensor| {
        values
            .map(|v| Tensor::from_vec(v, like.shape(), like.device()))
            .transpose()
    };
    Ok([
        tensor(a, operands[0])?,
        tensor(b, operands[1])?,
        tensor(c, operands[2])?,
    ])
}

/// The per-expert gradients as one stacked tensor, where `operand` records a graph.
pub(super) fn stacked(grads: Vec<Tensor>, operand: &Tensor) -> Result<Option<Tensor>> {
    match operand.track_op() {
        true => Tensor::stack(&grads, 0).map(Some),
        false => Ok(None),
    }
}

/// Expert `e` has no rows: a zero gradient in its place for each stacked operand that records a graph.
pub(super) fn no_rows(e: usize, operands: [(&Tensor, &mut Vec<Tensor>); 2]) -> Result<()> {
    for (operand, grads) in operands {
        if operand.track_op() {
            grads.push(operand.get(e)?.zeros_like()?);
        }
    }
    Ok(())
}
