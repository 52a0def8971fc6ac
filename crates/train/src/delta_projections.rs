//! A Gated DeltaNet layer's input projections as the checkpoint stores them, and their outputs in the one order the
//! layer reads them: q‖k‖v (all queries, all keys, all values: what the causal convolution runs over), z (the
//! output gate), b (write strengths) and a (decay rates). Qwen3.5 stores four projections in that order; Qwen3-Next
//! fuses them in two, grouped by key head (`in_proj_qkvz`: each key head's query, key, then its value heads' values
//! and gates; `in_proj_ba`: each key head's value heads' b, then their a), and its outputs are regrouped here by
//! slicing, so the weights train as stored.

use crate::config::DeltaNetShape;
use crate::family::DeltaProjections;
use crate::linear::Linear;
use crate::params::Params;
use candle_core::{Result, Tensor};

pub(crate) enum InputProjections {
    Separate {
        qkv: Linear,
        z: Linear,
        b: Linear,
        a: Linear,
    },
    Grouped {
        qkvz: Linear,
        ba: Linear,
    },
}

/// The projections' outputs for h (batch, seq, hidden): q‖k‖v (batch, seq, conv width), z (batch, seq, values), b
/// and a (batch, seq, value heads).
pub(crate) struct Projected {
    pub qkv: Tensor,
    pub z: Tensor,
    pub b: Tensor,
    pub a: Tensor,
}

impl InputProjections {
    /// The projections of the layer at `p` (`model.layers.N`).
    pub fn load(params: &Params, p: &str, layout: DeltaProjections) -> crate::error::Result<Self> {
        let linear = |name: &str| params.linear(&format!("{p}.linear_attn.{name}"), false);
        Ok(match layout {
            DeltaProjections::Separate => InputProjections::Separate {
                qkv: linear("in_proj_qkv")?,
                z: linear("in_proj_z")?,
                b: linear("in_proj_b")?,
                a: linear("in_proj_a")?,
            },
            DeltaProjections::Grouped => InputProjections::Grouped {
                qkvz: linear("in_proj_qkvz")?,
                ba: linear("in_proj_ba")?,
            },
        })
    }

    pub fn project(&self, h: &Tensor, s: DeltaNetShape) -> Result<Projected> {
        let (qkvz, ba) = match self {
            InputProjections::Separate { qkv, z, b, a } => {
                return Ok(Projected {
                    qkv: qkv.forward(h)?,
                    z: z.forward(h)?,
                    b: b.forward(h)?,
                    a: a.forward(h)?,
                })
            }
            InputProjections::Grouped { qkvz, ba } => (qkvz.forward(h)?, ba.forward(h)?),
        };
        let (batch, t, _) = h.dims3()?;
        let (nk, dk) = (s.key_heads, s.key_dim);
        let per_key = s.value_heads / nk;
        let vw = per_key * s.value_dim;
        let qkvz = qkvz.reshape((batch, t, nk, 2 * dk + 2 * vw))?;
        let part = |x: &Tensor, start: usize, width: usize| -> Result<Tensor> {
            x.narrow(3, start, width)?.reshape((batch, t, nk * width))
        };
        let qkv = Tensor::cat(
            &[part(&qkvz, 0, dk)?, part(&qkvz, dk, dk)?, part(&qkvz, 2 * dk, vw)?],
            2,
        )?;
        let ba = ba.reshape((batch, t, nk, 2 * per_key))?;
        Ok(Projected {
            qkv,
            z: part(&qkvz, 2 * dk + vw, vw)?,
            b: part(&ba, 0, per_key)?,
            a: part(&ba, per_key, per_key)?,
        })
    }
}
