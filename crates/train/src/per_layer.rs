//! Gemma 4's per-layer embeddings (E2B, E4B), as transformers computes them: every layer reads, beside the hidden
//! state, `width` values per token made once at the bottom of the model, and adds a gated branch of them to its
//! output.
//!
//! - The inputs (`PerLayerModel::inputs`): the token's row of `embed_tokens_per_layer` (all layers' values in one
//!   row, times sqrt(width) rounded to the dtype), plus the token embeddings (as the first layer sees them) through
//!   `per_layer_model_projection` times hidden^-0.5 and RMS-normalised per layer by `per_layer_projection_norm`;
//!   the sum times 2^-0.5.
//! - The branch (`PerLayerBranch::apply`), after the MLP: `h + post_norm(projection(act(gate(h)) · input))`.

use crate::linear::{Linear, LinearWeight};
use crate::ops::rms_norm;
use crate::params::Params;
use crate::shared_kv::PerLayerInputs;
use candle_core::{Result, Tensor};

/// The model-level tensors that make the per-layer inputs.
pub(crate) struct PerLayerModel {
    embed: LinearWeight,
    projection: Linear,
    norm: Tensor,
    shape: PerLayerInputs,
    layers: usize,
}

impl PerLayerModel {
    /// The tensors under `model` (`model`, or a wrapper's `model.language_model`).
    pub fn load(params: &Params, model: &str, shape: PerLayerInputs, layers: usize) -> crate::error::Result<Self> {
        Ok(PerLayerModel {
            embed: params.weight(&format!("{model}.embed_tokens_per_layer.weight"))?,
            projection: params.linear(&format!("{model}.per_layer_model_projection"), false)?,
            norm: params.get(&format!("{model}.per_layer_projection_norm.weight"))?,
            shape,
            layers,
        })
    }

    /// Whether any of its tensors trains (its inputs then need their gradient).
    pub fn trainable(&self) -> bool {
        self.embed.is_trainable() || self.projection.weight.is_trainable() || self.norm.is_variable()
    }

    /// The per-layer inputs (batch, seq, layers, width) of token `ids` (batch · seq) whose embeddings are `embeds`
    /// (batch, seq, hidden; scaled as the first layer reads them), in `embeds`' dtype. `eps` is the model's.
    pub fn inputs(&self, ids: &Tensor, embeds: &Tensor, eps: f64) -> Result<Tensor> {
        let (b, t, hidden) = embeds.dims3()?;
        let (l, w) = (self.layers, self.shape.width);
        let dtype = embeds.dtype();
        let scale = crate::model::rounded_to((w as f64).sqrt(), dtype);
        let own = (self.embed.rows(ids)?.to_dtype(dtype)?.reshape((b, t, l, w))? * scale)?;
        let projected = (self.projection.forward(embeds)? * (hidden as f64).powf(-0.5))?.reshape((b, t, l, w))?;
        let projected = rms_norm(&projected, &self.norm, eps)?;
        (projected + own)? * 0.5f64.sqrt()
    }
}

/// A layer's branch over its per-layer input.
pub(crate) struct PerLayerBranch {
    gate: Linear,
    projection: Linear,
    norm: Tensor,
}

impl PerLayerBranch {
    /// The branch of the layer at `p` (`model.layers.N`).
    pub fn load(params: &Params, p: &str) -> crate::error::Result<Self> {
        Ok(PerLayerBranch {
            gate: params.linear(&format!("{p}.per_layer_input_gate"), false)?,
            projection: params.linear(&format!("{p}.per_layer_projection"), false)?,
            norm: params.get(&format!("{p}.post_per_layer_input_norm.weight"))?,
        })
    }

    /// `h + norm(projection(act(gate(h)) · input))`; `input` is the layer's (batch, seq, width) slice.
    pub fn apply(
        &self,
        h: &Tensor,
        input: &Tensor,
        act: impl Fn(&Tensor) -> Result<Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let gated = (act(&self.gate.forward(h)?)? * input.to_dtype(h.dtype())?)?;
        h + rms_norm(&self.projection.forward(&gated)?, &self.norm, eps)?
    }
}

/// Layer `i`'s slice (batch, seq, width) of the per-layer inputs (batch, seq, layers, width).
pub(crate) fn slice(inputs: &Tensor, i: usize) -> Result<Tensor> {
    inputs.narrow(2, i, 1)?.squeeze(2)?.contiguous()
}
