//! A Gated DeltaNet layer's token mixing from its q/k/v projection to the delta rule's output, from candle ops:
//! what CUDA and Metal run (the CPU in f32 has `crate::fused`'s two ops instead).
//!
//! Through candle's graph, this keeps until the loss is dropped, in every DeltaNet layer at once: the
//! convolution's padded input, output and SiLU, q and k per value head before and after their norm, the rule's
//! inputs, and the chunked rule's 64 × 64 blocks per chunk and head (about 68 · 64 values per position and head).
//! [`recomputed`] keeps the projection and the decays alone: its value comes from a pass on detached inputs, whose
//! intermediates are freed at once, and its backward pass recomputes this one layer and differentiates that.

use crate::config::DeltaNetShape;
use crate::delta_rule::{chunked, l2_normalize, RuleInputs};
use candle_core::{DType, Result, Tensor};

/// q, k (batch, seq, value heads, key dim) and v (…, value dim) in f32, from the q/k/v projection (batch, seq,
/// channels) and the convolution `weight` (channels, 1, kernel): through the causal convolution and SiLU, q and k
/// L2-normalised (q also by 1/sqrt(key dim)) and repeated for the value heads that share them. With `conv_state`,
/// the convolution reads and keeps a generation's earlier inputs.
pub(crate) fn qkv(
    projected: &Tensor,
    weight: &Tensor,
    s: DeltaNetShape,
    conv_state: Option<&mut Option<Tensor>>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, _) = projected.dims3()?;
    let (keys, values) = (s.key_heads * s.key_dim, s.value_heads * s.value_dim);
    let qkv = crate::model::causal_conv(projected, weight, None, s.kernel, conv_state)?.silu()?;
    let per_value_head = |x: Tensor| -> Result<Tensor> {
        let rep = s.value_heads / s.key_heads;
        x.reshape((b, t, s.key_heads, 1, s.key_dim))?
            .broadcast_as((b, t, s.key_heads, rep, s.key_dim))?
            .reshape((b, t, s.value_heads, s.key_dim))?
            .to_dtype(DType::F32)
    };
    let q = l2_normalize(&per_value_head(qkv.narrow(2, 0, keys)?)?)?;
    let q = (q * (1.0 / (s.key_dim as f64).sqrt()))?;
    let k = l2_normalize(&per_value_head(qkv.narrow(2, keys, keys)?)?)?;
    let v = qkv
        .narrow(2, 2 * keys, values)?
        .reshape((b, t, s.value_heads, s.value_dim))?
        .to_dtype(DType::F32)?;
    Ok((q, k, v))
}

/// The same stretch as [`recomputed`] on candle's plain ops, every intermediate recorded: what the node computes
/// its value with (on detached inputs) and recomputes in its backward pass.
fn plain(p: &Tensor, w: &Tensor, gb: &Tensor, s: DeltaNetShape) -> Result<Tensor> {
    let (q, k, v) = qkv(p, w, s, None)?;
    let (g, beta) = (gb.narrow(3, 0, 1)?.squeeze(3)?, gb.narrow(3, 1, 1)?.squeeze(3)?);
    let inputs = RuleInputs {
        q: &q,
        k: &k,
        v: &v,
        g: &g,
        beta: &beta,
    };
    Ok(chunked(inputs, None)?.0)
}

/// The delta rule's output (batch, seq, value heads, value dim) from a zero state, from the projection, the
/// convolution weight and `gb`, the log decays g and write strengths β stacked last (batch, seq, value heads, 2),
/// for a pass without a cache of at least `crate::delta_rule::STEPWISE_BELOW` positions: see the module's text.
pub(crate) fn recomputed(projected: &Tensor, weight: &Tensor, gb: &Tensor, s: DeltaNetShape) -> Result<Tensor> {
    let forward = move |p: &Tensor, w: &Tensor, gb: &Tensor| plain(p, w, gb, s);
    crate::node::recomputed3("gated-delta-net", [projected, weight, gb], forward)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::randn;
    use crate::ops::tests::{assert_same_gradients, max_abs_diff};
    use candle_core::Var;

    #[test]
    fn the_recomputed_layer_gives_the_composite_values_and_gradients() {
        // Two key heads shared by four value heads, 150 positions (three chunks, the last one partial); the
        // inputs are products of the leaves, so the gradients must pass the node on their way down; the
        // convolution weight trained and frozen.
        let s = DeltaNetShape {
            kernel: 4,
            key_heads: 2,
            value_heads: 4,
            key_dim: 8,
            value_dim: 6,
        };
        let (b, t) = (2, 150);
        let c = s.conv_width();
        for weight_trains in [true, false] {
            let p = Var::from_tensor(&randn(&[b, t, c], 1)).unwrap();
            let w = randn(&[c, 1, s.kernel], 2);
            let w = match weight_trains {
                true => Var::from_tensor(&w).unwrap().as_tensor().clone(),
                false => w,
            };
            // g in (−0.6, 0) and β in (0, 1), as the layer makes them.
            let raw = randn(&[b, t, s.value_heads, 2], 3);
            let g = (raw.narrow(3, 0, 1).unwrap().abs().unwrap() * -0.3).unwrap();
            let beta = candle_nn::ops::sigmoid(&raw.narrow(3, 1, 1).unwrap()).unwrap();
            let gb = Var::from_tensor(&Tensor::cat(&[g, beta], 3).unwrap()).unwrap();
            let scaled = (p.as_tensor() * 1.5).unwrap();
            let out = recomputed(&scaled, &w, gb.as_tensor(), s).unwrap();
            let reference = plain(&scaled, &w, gb.as_tensor(), s).unwrap();
            let diff = max_abs_diff(&out, &reference);
            assert!(diff < 1e-6, "outputs differ by {diff}");
            let probe = randn(out.dims(), 9);
            let loss = |o: &Tensor| (o * &probe).unwrap().sum_all().unwrap();
            let (ga, gr) = (loss(&out).backward().unwrap(), loss(&reference).backward().unwrap());
            let inputs = [
                ("projection", p.as_tensor()),
                ("weight", &w),
                ("g and beta", gb.as_tensor()),
            ];
            assert_same_gradients(&ga, &gr, &inputs, 1e-5);
        }
        // Untracked inputs give the same values without a node.
        let p = randn(&[b, t, c], 1);
        let plain = recomputed(
            &p,
            &randn(&[c, 1, s.kernel], 2),
            &randn(&[b, t, s.value_heads, 2], 3),
            s,
        )
        .unwrap();
        assert!(!plain.track_op());
    }
}
