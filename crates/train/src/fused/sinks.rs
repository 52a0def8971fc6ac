//! The fused CPU attention with attention sinks (gpt-oss): each head's learned logit is one more entry in every
//! row's softmax, with no value, so a row's probabilities over its keys sum to less than 1. The kernel is the
//! plain attention's (`attention.rs`, which keeps each row's sink probability beside the blocks'); this file
//! wires it into the graph: trained sinks as the blockwise attention's are (`attention::attach_with_sinks`), frozen
//! ones through the plain (q, k, v) node.

use super::attention::{fitting_dims, Kernel};
use super::with_values;
use crate::attention::attach_with_sinks;
use crate::node::attach3;
use candle_core::{DType, Result, Tensor};
use std::sync::{Arc, Mutex};

/// [`super::causal_attention`] with `sinks` (heads), each head's sink logit.
pub fn causal_attention_with_sinks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f32,
    sinks: &Tensor,
) -> Result<Tensor> {
    let dims = fitting_dims(q, k, v, mask)?;
    let [q_c, k_c, v_c, mask_c] = [q, k, v, mask].map(|t| t.detach().contiguous());
    let (q_c, k_c, v_c, mask_c) = (q_c?, k_c?, v_c?, mask_c?);
    let sink_logits = sinks.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let kernel = Kernel::new(dims, &mask_c, scale)?.with_sinks(sink_logits)?;
    let keep = [q, k, v, sinks].iter().any(|t| t.track_op());
    let (out, kept) = with_values(&[&q_c, &k_c, &v_c, &mask_c], |x| {
        Ok(kernel.forward(x[0], x[1], x[2], x[3], keep))
    })?;
    let (b, h, t, d) = q.dims4()?;
    let out = Tensor::from_vec(out, (b, t, h * d), q.device())?;
    if !keep {
        return Ok(out);
    }
    let grads = Grads {
        kernel,
        // Taken by the backward pass, so the probabilities are freed as soon as this layer's gradient is computed.
        kept: Arc::new(Mutex::new(Some(kept))),
    };
    if !sinks.track_op() {
        return attach3(
            "fused-attention-frozen-sinks",
            [q, k, v],
            out,
            Box::new(move |[q, k, v], _, grad| {
                let (dq, dk, dv, _) = grads.of(q, k, v, grad)?;
                Ok([Some(dq), Some(dk), Some(dv)])
            }),
        );
    }
    attach_with_sinks(
        "fused-attention-sinks",
        [q, k, v, sinks],
        out,
        Box::new(move |[q, k, v], _, grad| {
            let (dq, dk, dv, ds) = grads.of(q, k, v, grad)?;
            Ok(([Some(dq), Some(dk), Some(dv)], Some(ds)))
        }),
    )
}

/// The backward pass's state: the kernel and what its forward pass kept.
struct Grads {
    kernel: Kernel,
    kept: Arc<Mutex<Option<Vec<f32>>>>,
}

impl Grads {
    /// dq, dk, dv and the sinks' gradient (heads) from the output's gradient.
    fn of(&self, q: &Tensor, k: &Tensor, v: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(kept) = kept else {
            candle_core::bail!("attention with sinks: backward without the forward pass's probabilities")
        };
        let [q, k, v, grad] = [q, k, v, grad].map(|t| t.detach().contiguous());
        let (q, k, v, grad) = (q?, k?, v?, grad?);
        let packed = with_values(&[&q, &k, &v, &grad], |x| {
            Ok(self.kernel.backward(x[0], x[1], x[2], x[3], &kept))
        })?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let (b, h, _, _) = q.dims4()?;
        let packed = Tensor::from_vec(packed, nq + 2 * nk + b * h, q.device())?;
        let part = |at: usize, like: &Tensor| packed.narrow(0, at, like.elem_count())?.reshape(like.shape());
        let d_sinks = packed.narrow(0, nq + 2 * nk, b * h)?.reshape((b, h))?.sum(0)?;
        Ok((part(0, &q)?, part(nq, &k)?, part(nq + nk, &v)?, d_sinks))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, model_mask, randn, value_and_grads};
    use super::*;
    use crate::attention::{attention, AttentionSpec, Positions};
    use candle_core::Device;

    /// Value and every gradient (q, k, v and the sinks) against the blockwise attention the GPUs run, across
    /// several row blocks, with grouped heads, windows and padding; sinks large enough to take a good part of
    /// each row.
    #[test]
    fn matches_the_blockwise_attention_with_sinks() {
        let (b, h, kv, t, d) = (2, 4, 2, 150, 8);
        for (window, lengths) in [(None, vec![150, 150]), (Some(40), vec![150, 97])] {
            let mask = model_mask(t, window, &lengths);
            let lens: Vec<f32> = lengths.iter().map(|&l| l as f32).collect();
            let lens = Tensor::from_vec(lens, (b, 1, 1), &Device::Cpu).unwrap();
            let sinks = (randn(&[h], 54) + 2.0).unwrap();
            let inputs = [
                randn(&[b, h, t, d], 50),
                randn(&[b, kv, t, d], 51),
                randn(&[b, kv, t, d], 52),
                sinks,
            ];
            let probe = randn(&[b, t, h * d], 53);
            let fused = value_and_grads(&inputs, &probe, |x| {
                causal_attention_with_sinks(&x[0], &x[1], &x[2], &mask, 0.35, &x[3])
            });
            let spec = AttentionSpec {
                scale: 0.35,
                window,
                softcap: None,
            };
            let pos = Positions {
                q_offset: 0,
                lengths: Some(&lens),
            };
            let reference = value_and_grads(&inputs, &probe, |x| {
                attention(&x[0], &x[1], &x[2], spec, &pos, Some(&x[3]))
            });
            assert_close(&fused, &reference, 1e-4);
        }
    }

    /// Frozen sinks: the (q, k, v) node, the same value and gradients.
    #[test]
    fn frozen_sinks_take_the_plain_node() {
        let (b, h, kv, t, d) = (1, 2, 1, 20, 4);
        let mask = model_mask(t, None, &[t]);
        let sinks = Tensor::new(&[1.5f32, -0.5], &Device::Cpu).unwrap();
        let inputs = [
            randn(&[b, h, t, d], 60),
            randn(&[b, kv, t, d], 61),
            randn(&[b, kv, t, d], 62),
        ];
        let probe = randn(&[b, t, h * d], 63);
        let fused = value_and_grads(&inputs, &probe, |x| {
            causal_attention_with_sinks(&x[0], &x[1], &x[2], &mask, 0.5, &sinks)
        });
        let spec = AttentionSpec {
            scale: 0.5,
            window: None,
            softcap: None,
        };
        let pos = Positions {
            q_offset: 0,
            lengths: None,
        };
        let reference = value_and_grads(&inputs, &probe, |x| {
            attention(&x[0], &x[1], &x[2], spec, &pos, Some(&sinks))
        });
        assert_close(&fused, &reference, 1e-4);
    }
}
