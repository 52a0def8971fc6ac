//! Mamba 2 layers (Granite 4.0-H's `mamba.*`): the sizes config.json gives them and the tensors they hold, and the
//! mixer's pass from `in_proj` to `out_proj` as transformers' `torch_forward` computes it:
//!
//! - `in_proj` makes the gate z (intermediate), x‖B‖C (intermediate + 2 · groups · state) and dt (heads);
//! - x‖B‖C goes through the causal depthwise convolution (with its bias) and the activation (SiLU);
//! - dt = clamp(softplus(dt + dt_bias), time_step_limit), A = −exp(A_log), in f32;
//! - the state space scan (ssd.rs) of x over B and C (each group's shared by heads / groups heads), plus D · x;
//! - the gated RMSNorm `weight · rms_norm(y · silu(z))` over the whole intermediate width, then `out_proj`.

use crate::ssd;
use candle_core::{DType, Result, Tensor};
use serde_json::Value;

/// The longest chunk the scan takes: its blocks cost chunk² per position-chunk and head, and candle's running sum
/// over them chunk³ (a product with a triangular matrix); transformers' 256 would make them 4 and 64 times those
/// of 64.
pub const MAX_CHUNK: usize = 64;

/// The sizes of a Mamba 2 layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MambaShape {
    pub heads: usize,
    pub head_dim: usize,
    /// B and C come in this many groups, each shared by `heads / groups` heads.
    pub groups: usize,
    pub state: usize,
    /// The convolution's length.
    pub kernel: usize,
    /// Positions per chunk of the scan: `mamba_chunk_size`, at most [`MAX_CHUNK`] (chunks are exact: any size
    /// gives the stepwise scan's values, so a smaller one only saves the chunk × chunk blocks).
    pub chunk: usize,
    pub conv_bias: bool,
    pub proj_bias: bool,
    /// dt is clamped into this range (`time_step_limit`).
    pub dt_limit: (f64, f64),
}

impl MambaShape {
    /// The layer's inner width, heads × head dim.
    pub fn intermediate(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The convolved x‖B‖C width.
    pub fn conv_width(&self) -> usize {
        self.intermediate() + 2 * self.groups * self.state
    }

    /// `in_proj`'s rows: z, x‖B‖C, dt.
    pub fn projection(&self) -> usize {
        self.intermediate() + self.conv_width() + self.heads
    }

    /// The sizes from Granite 4.0-H's `mamba_*` keys (transformers' defaults where absent), for a model of width
    /// `hidden`. Sizes that do not fit together are refused by name.
    pub fn from_config(raw: &Value, hidden: usize) -> std::result::Result<MambaShape, String> {
        let size = |k: &str, default: u64, limit: u64| -> std::result::Result<usize, String> {
            match raw.get(k).filter(|v| !v.is_null()) {
                None => Ok(default as usize),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| (1..=limit).contains(&n))
                    .map(|n| n as usize)
                    .ok_or_else(|| format!("`{k}` must be an integer from 1 to {limit}, not {v}")),
            }
        };
        // transformers passes these to the layers as they are: absent is its default, null is no bias.
        let flag = |k: &str, default: bool| match raw.get(k) {
            None => Ok(default),
            Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("`{k}` must be true or false, not {v}")),
        };
        let heads = size("mamba_n_heads", 128, 1 << 12)?;
        let expand = size("mamba_expand", 2, 64)?;
        let intermediate = expand * hidden;
        // transformers' default "auto" divides the inner width among the heads.
        let head_dim = match raw.get("mamba_d_head").filter(|v| !v.is_null()) {
            None => intermediate / heads,
            Some(Value::String(s)) if s == "auto" => intermediate / heads,
            Some(_) => size("mamba_d_head", 0, 1 << 14)?,
        };
        if heads * head_dim != intermediate {
            return Err(format!(
                "mamba_n_heads {heads} × mamba_d_head {head_dim} must be mamba_expand × hidden_size ({intermediate})"
            ));
        }
        let groups = size("mamba_n_groups", 1, 1 << 12)?;
        if heads % groups != 0 {
            return Err(format!(
                "mamba_n_heads {heads} must be a multiple of mamba_n_groups {groups}"
            ));
        }
        let dt_limit = match raw.get("time_step_limit").filter(|v| !v.is_null()) {
            None => (0.0, f64::INFINITY),
            Some(v) => match v.as_array().map(|a| a.iter().map(limit).collect::<Vec<_>>()) {
                Some(l) if l.len() == 2 && l[0].zip(l[1]).is_some_and(|(lo, hi)| lo <= hi && hi > 0.0) => {
                    (l[0].expect("checked"), l[1].expect("checked"))
                }
                _ => {
                    return Err(format!(
                        "`time_step_limit` must be [low, high] with high above 0 (dt is a softplus), not {v}"
                    ))
                }
            },
        };
        match raw.get("hidden_act").and_then(Value::as_str) {
            None | Some("silu" | "swish") => {}
            Some(other) => {
                return Err(format!(
                    "`hidden_act` is {other:?}: FreezeTune's Mamba 2 layers run their convolution's activation as \
                     SiLU, which every released Granite 4.0-H uses"
                ))
            }
        }
        Ok(MambaShape {
            heads,
            head_dim,
            groups,
            state: size("mamba_d_state", 256, 1 << 12)?,
            kernel: size("mamba_d_conv", 4, 64)?,
            chunk: size("mamba_chunk_size", 256, 1 << 14)?.min(MAX_CHUNK),
            conv_bias: flag("mamba_conv_bias", true)?,
            proj_bias: flag("mamba_proj_bias", false)?,
            dt_limit,
        })
    }

    /// The layer's tensors after `model.layers.N.`, with their shapes, for a model of width `hidden`.
    pub fn tensor_shapes(&self, hidden: usize) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![
            ("mamba.in_proj.weight".to_string(), vec![self.projection(), hidden]),
            (
                "mamba.conv1d.weight".to_string(),
                vec![self.conv_width(), 1, self.kernel],
            ),
            ("mamba.dt_bias".to_string(), vec![self.heads]),
            ("mamba.A_log".to_string(), vec![self.heads]),
            ("mamba.D".to_string(), vec![self.heads]),
            ("mamba.norm.weight".to_string(), vec![self.intermediate()]),
            ("mamba.out_proj.weight".to_string(), vec![hidden, self.intermediate()]),
        ];
        if self.conv_bias {
            out.push(("mamba.conv1d.bias".into(), vec![self.conv_width()]));
        }
        if self.proj_bias {
            out.push(("mamba.in_proj.bias".into(), vec![self.projection()]));
            out.push(("mamba.out_proj.bias".into(), vec![hidden]));
        }
        out
    }
}

/// A Mamba 2 layer's parameters other than its two projections.
pub struct MambaParams<'a> {
    pub conv_weight: &'a Tensor,
    pub conv_bias: Option<&'a Tensor>,
    pub dt_bias: &'a Tensor,
    pub a_log: &'a Tensor,
    pub d: &'a Tensor,
    pub norm: &'a Tensor,
}

/// A generation's carried state: the convolution's last inputs and the scan's state.
pub struct MambaCache<'a> {
    pub conv: &'a mut Option<Tensor>,
    pub ssm: &'a mut Option<Tensor>,
}

/// The mixer from `in_proj`'s output (batch, seq, projection) to the gated norm's output (batch, seq,
/// intermediate), which `out_proj` takes; `eps` is the norm's. With `cache`, the convolution and the scan continue
/// from a generation's earlier positions and keep their state.
pub fn mix(projected: &Tensor, p: &MambaParams, s: MambaShape, eps: f64, cache: Option<MambaCache>) -> Result<Tensor> {
    let (b, t, _) = projected.dims3()?;
    let (inner, conv) = (s.intermediate(), s.conv_width());
    let f32 = DType::F32;
    let z = projected.narrow(2, 0, inner)?;
    let xbc = projected.narrow(2, inner, conv)?;
    let dt = projected.narrow(2, inner + conv, s.heads)?;
    let (conv_state, ssm_state) = match cache {
        Some(c) => (Some(c.conv), Some(c.ssm)),
        None => (None, None),
    };
    let xbc = crate::model::causal_conv(&xbc, p.conv_weight, p.conv_bias, s.kernel, conv_state)?.silu()?;
    // In f32, as autocast (f32 parameters) and the mamba_ssm kernels add them.
    let dt = dt.to_dtype(f32)?.broadcast_add(&p.dt_bias.to_dtype(f32)?)?;
    let dt = crate::ops::softplus(&dt)?;
    let dt = clamp(&dt, s.dt_limit)?;
    let a = p.a_log.to_dtype(f32)?.exp()?.neg()?;
    let xbc = xbc.to_dtype(f32)?;
    let x = xbc.narrow(2, 0, inner)?.reshape((b, t, s.heads, s.head_dim))?;
    let y = match ssm_state {
        Some(slot) => {
            let (y, state) = ssd::scan(&xbc, &dt, &a, s, slot.as_ref())?;
            *slot = Some(state.detach());
            y
        }
        None => ssd::recomputed(&xbc, &dt, &a, s)?,
    };
    let skip = x.broadcast_mul(&p.d.to_dtype(f32)?.reshape((1, 1, s.heads, 1))?)?;
    let y = (y + skip)?.reshape((b, t, inner))?;
    // transformers' gated norm: in f32, y · silu(z), RMS over the whole width, times the weight; then the
    // activations' dtype for `out_proj`.
    let gated = (y * z.to_dtype(f32)?.silu()?)?;
    let rms = (gated.sqr()?.mean_keepdim(2)? + eps)?.sqrt()?;
    let normed = gated.broadcast_div(&rms)?.broadcast_mul(&p.norm.to_dtype(f32)?)?;
    normed.to_dtype(projected.dtype())
}

/// A `time_step_limit` bound: a number, or infinity as transformers 5 writes it (`{"__float__": "Infinity"}`; a
/// bare JSON number cannot say it).
fn limit(v: &Value) -> Option<f64> {
    match v {
        Value::Object(o) => match o.get("__float__").and_then(Value::as_str) {
            Some("Infinity") => Some(f64::INFINITY),
            Some("-Infinity") => Some(f64::NEG_INFINITY),
            _ => None,
        },
        v => v.as_f64(),
    }
}

/// `dt` clamped into `limit` (a no-op at transformers' default of 0 to infinity, which dt, a softplus, never
/// leaves).
fn clamp(dt: &Tensor, limit: (f64, f64)) -> Result<Tensor> {
    match limit {
        (lo, hi) if lo <= 0.0 && hi == f64::INFINITY => Ok(dt.clone()),
        (lo, hi) if hi == f64::INFINITY => dt.maximum(lo),
        (lo, hi) => dt.maximum(lo)?.minimum(hi),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_come_from_the_mamba_keys_and_must_fit_together() {
        let raw = json!({"mamba_n_heads": 64, "mamba_d_head": "auto", "mamba_n_groups": 1, "mamba_d_state": 128,
            "mamba_chunk_size": 256, "mamba_expand": 2});
        let s = MambaShape::from_config(&raw, 2048).unwrap();
        assert_eq!((s.head_dim, s.intermediate(), s.conv_width()), (64, 4096, 4096 + 256));
        assert_eq!(s.projection(), 4096 + 4096 + 256 + 64);
        let e = MambaShape::from_config(&json!({"mamba_n_heads": 6, "mamba_d_head": 32}), 64).unwrap_err();
        assert!(e.contains("mamba_d_head"), "{e}");
        let e = MambaShape::from_config(&json!({"mamba_n_heads": 4, "mamba_n_groups": 3}), 64).unwrap_err();
        assert!(e.contains("mamba_n_groups"), "{e}");
        let e = MambaShape::from_config(&json!({"mamba_n_heads": 4, "time_step_limit": [1.0]}), 64).unwrap_err();
        assert!(e.contains("time_step_limit"), "{e}");
        // transformers 5 saves its default (0, inf) so.
        let saved = json!({"mamba_n_heads": 4, "time_step_limit": [0.0, {"__float__": "Infinity"}]});
        assert_eq!(
            MambaShape::from_config(&saved, 64).unwrap().dt_limit,
            (0.0, f64::INFINITY)
        );
        let gelu = json!({"mamba_n_heads": 4, "hidden_act": "gelu"});
        assert!(MambaShape::from_config(&gelu, 64).unwrap_err().contains("hidden_act"));
        let no_bias = json!({"mamba_n_heads": 4, "mamba_conv_bias": null});
        assert!(!MambaShape::from_config(&no_bias, 64).unwrap().conv_bias);
    }
}
