//! Multi-head latent attention as transformers computes it (DeepSeek-V3, GLM-4.7-Flash): queries from `q_proj`,
//! or from a low-rank pair `q_a_proj` → RMSNorm → `q_b_proj` where `q_lora_rank` is set; keys and values from one
//! compressed projection `kv_a_proj_with_mqa`, whose first `kv_lora_rank` columns go through an RMSNorm and
//! `kv_b_proj` to each head's unrotated key part and value, and whose last `qk_rope_head_dim` columns are one
//! rotated key part every head shares. Each head's query and key are its unrotated part then its rotated part;
//! values are `v_head_dim` wide. The two latent norms use transformers' default epsilon (1e-6), never the
//! config's. `rope_interleave` takes the rotated parts' even then odd dimensions before the rotation (the same
//! permutation on queries and keys, so only the pairing matters).
//!
//! The attention kernels take one head width for q, k and v: the narrower side is padded with zeros (which
//! changes no score and no output) and the padding cut from the output, as transformers does for flash attention.

use crate::linear::Linear;
use crate::ops::{evens_then_odds, rms_norm_offset, rope_heads};
use crate::params::Params;
use candle_core::{Result, Tensor};
use serde_json::Value;

/// transformers builds the latent norms with `RMSNorm(width)`, whose default epsilon this is.
const LATENT_NORM_EPS: f64 = 1e-6;

/// A latent attention's sizes, from config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentAttention {
    /// `q_lora_rank`; None: queries from `q_proj` directly.
    pub q_rank: Option<usize>,
    pub kv_rank: usize,
    /// Each head's unrotated (`qk_nope_head_dim`) and rotated (`qk_rope_head_dim`) query/key parts.
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    pub interleave: bool,
}

impl LatentAttention {
    /// A query's (and key's) width per head.
    pub fn qk_dim(&self) -> usize {
        self.nope + self.rope
    }

    /// The head width the kernels run at: the wider of the query/key and value widths.
    fn kernel_dim(&self) -> usize {
        self.qk_dim().max(self.v)
    }

    /// The sizes config.json gives. `head_dim`, which transformers sets to `qk_rope_head_dim` (the rope's width),
    /// is set so here too, after checking that a given one agrees.
    pub(crate) fn read(raw: &mut Value) -> std::result::Result<Self, String> {
        let heads = raw["num_attention_heads"].as_u64();
        let kv_heads = raw["num_key_value_heads"].as_u64().or(heads);
        let size = |k: &str| match raw[k].as_u64() {
            Some(n @ 1..=65536) => Ok(n as usize),
            _ => Err(format!("`{k}` is {}; it must be an integer from 1 to 65536", raw[k])),
        };
        let dims = LatentAttention {
            q_rank: match &raw["q_lora_rank"] {
                Value::Null => None,
                _ => Some(size("q_lora_rank")?),
            },
            kv_rank: size("kv_lora_rank")?,
            nope: size("qk_nope_head_dim")?,
            rope: size("qk_rope_head_dim")?,
            v: size("v_head_dim")?,
            interleave: match &raw["rope_interleave"] {
                Value::Bool(b) => *b,
                v => return Err(format!("`rope_interleave` must be true or false, not {v}")),
            },
        };
        if dims.rope % 2 != 0 {
            return Err(format!(
                "`qk_rope_head_dim` is {}: a rotation needs an even width",
                dims.rope
            ));
        }
        if kv_heads != heads {
            return Err(format!(
                "`num_key_value_heads` is {} but `num_attention_heads` is {}: latent attention gives every head its \
                 own key and value, so they must be equal",
                raw["num_key_value_heads"], raw["num_attention_heads"]
            ));
        }
        // transformers' latent attention rotates the whole rope part; a factor below 1 would make its tables
        // narrower than the part it rotates (and transformers' own forward fails on it).
        let partial = [
            &raw["partial_rotary_factor"],
            &raw["rope_parameters"]["partial_rotary_factor"],
        ];
        if let Some(f) = partial.iter().find(|v| !v.is_null() && v.as_f64() != Some(1.0)) {
            return Err(format!(
                "`partial_rotary_factor` is {f}: latent attention rotates all `qk_rope_head_dim` dimensions of its \
                 rotated part. Remove it"
            ));
        }
        match &raw["head_dim"] {
            Value::Null => {}
            v if v.as_u64() == Some(dims.rope as u64) => {}
            v => {
                return Err(format!(
                    "`head_dim` is {v} but `qk_rope_head_dim` is {}: transformers takes the rope's width from \
                     `qk_rope_head_dim`. Remove `head_dim` or make them equal",
                    dims.rope
                ))
            }
        }
        raw["head_dim"] = dims.rope.into();
        Ok(dims)
    }

    /// The attention tensors of a layer, by name after `model.layers.N.`, with their shapes.
    pub fn tensor_shapes(&self, hidden: usize, heads: usize, bias: bool) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut linear = |name: &str, rows: usize, cols: usize, bias: bool| {
            out.push((format!("self_attn.{name}.weight"), vec![rows, cols]));
            if bias {
                out.push((format!("self_attn.{name}.bias"), vec![rows]));
            }
        };
        match self.q_rank {
            Some(rank) => {
                linear("q_a_proj", rank, hidden, bias);
                linear("q_b_proj", heads * self.qk_dim(), rank, false);
            }
            None => linear("q_proj", heads * self.qk_dim(), hidden, false),
        }
        linear("kv_a_proj_with_mqa", self.kv_rank + self.rope, hidden, bias);
        linear("kv_b_proj", heads * (self.nope + self.v), self.kv_rank, false);
        linear("o_proj", hidden, heads * self.v, bias);
        if let Some(rank) = self.q_rank {
            out.push(("self_attn.q_a_layernorm.weight".into(), vec![rank]));
        }
        out.push(("self_attn.kv_a_layernorm.weight".into(), vec![self.kv_rank]));
        out
    }
}

/// Where the queries come from.
enum Queries {
    Direct(Linear),
    LowRank { a: Linear, norm: Tensor, b: Linear },
}

/// A layer's latent attention projections (o_proj stays with the decoder's attention weights).
pub(crate) struct LatentWeights {
    queries: Queries,
    kv_a: Linear,
    kv_norm: Tensor,
    kv_b: Linear,
    dims: LatentAttention,
    heads: usize,
}

impl LatentWeights {
    /// The projections of the layer at `p` (`model.layers.N`).
    pub fn load(
        params: &Params,
        p: &str,
        dims: LatentAttention,
        heads: usize,
        bias: bool,
    ) -> crate::error::Result<Self> {
        let linear = |name: &str, bias: bool| params.linear(&format!("{p}.self_attn.{name}"), bias);
        let queries = match dims.q_rank {
            Some(_) => Queries::LowRank {
                a: linear("q_a_proj", bias)?,
                norm: params.get(&format!("{p}.self_attn.q_a_layernorm.weight"))?,
                b: linear("q_b_proj", false)?,
            },
            None => Queries::Direct(linear("q_proj", false)?),
        };
        Ok(LatentWeights {
            queries,
            kv_a: linear("kv_a_proj_with_mqa", bias)?,
            kv_norm: params.get(&format!("{p}.self_attn.kv_a_layernorm.weight"))?,
            kv_b: linear("kv_b_proj", false)?,
            dims,
            heads,
        })
    }

    /// q, k and v of `h` (batch, seq, hidden), each (batch, heads, seq, width) at the kernels' one width, the
    /// rotated parts turned by `rotation`'s tables.
    pub fn project(&self, h: &Tensor, rotation: Option<&(Tensor, Tensor)>) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let (d, heads) = (self.dims, self.heads);
        let norm = |x: &Tensor, w: &Tensor| rms_norm_offset(x, w, 0.0, LATENT_NORM_EPS);
        let q = match &self.queries {
            Queries::Direct(q) => q.forward(h)?,
            Queries::LowRank { a, norm: w, b } => b.forward(&norm(&a.forward(h)?, w)?)?,
        };
        let q = q.reshape((b, t, heads, d.qk_dim()))?;
        let compressed = self.kv_a.forward(h)?;
        let latent = norm(&compressed.narrow(2, 0, d.kv_rank)?.contiguous()?, &self.kv_norm)?;
        let kv = self.kv_b.forward(&latent)?.reshape((b, t, heads, d.nope + d.v))?;
        let k_rot = compressed.narrow(2, d.kv_rank, d.rope)?.reshape((b, t, 1, d.rope))?;
        let q_rot = self.rotate(&q.narrow(3, d.nope, d.rope)?, rotation)?;
        let k_rot = self.rotate(&k_rot, rotation)?.broadcast_as((b, heads, t, d.rope))?;
        let heads_first = |x: Tensor| x.transpose(1, 2);
        let q = Tensor::cat(&[&heads_first(q.narrow(3, 0, d.nope)?)?, &q_rot], 3)?;
        let k = Tensor::cat(&[&heads_first(kv.narrow(3, 0, d.nope)?)?, &k_rot.contiguous()?], 3)?;
        let v = heads_first(kv.narrow(3, d.nope, d.v)?)?;
        let pad = |x: Tensor, width: usize| match d.kernel_dim() - width {
            0 => x.contiguous(),
            extra => x.pad_with_zeros(3, 0, extra),
        };
        Ok((pad(q, d.qk_dim())?, pad(k, d.qk_dim())?, pad(v, d.v)?))
    }

    /// The rotated part `x` (batch, seq, heads, rope) as (batch, heads, seq, rope), turned by `rotation`.
    fn rotate(&self, x: &Tensor, rotation: Option<&(Tensor, Tensor)>) -> Result<Tensor> {
        let x = match self.dims.interleave {
            true => evens_then_odds(x, self.dims.rope)?,
            false => x.contiguous()?,
        };
        match rotation {
            Some((cos, sin)) => rope_heads(&x, cos, sin),
            None => x.transpose(1, 2)?.contiguous(),
        }
    }

    /// The attention's output (batch, seq, heads · kernel width) cut to the values' width per head.
    pub fn unpad(&self, attn: &Tensor) -> Result<Tensor> {
        let d = self.dims;
        if d.kernel_dim() == d.v {
            return Ok(attn.clone());
        }
        let (b, t, _) = attn.dims3()?;
        attn.reshape((b, t, self.heads, d.kernel_dim()))?
            .narrow(3, 0, d.v)?
            .reshape((b, t, self.heads * d.v))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::DecoderConfig;
    use serde_json::{json, Value};

    fn deepseek(extra: Value) -> Result<DecoderConfig, String> {
        let mut raw = json!({"model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
            "q_lora_rank": null, "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 6,
            "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
            "moe_intermediate_size": 8});
        extra.as_object().unwrap().iter().for_each(|(k, v)| raw[k] = v.clone());
        DecoderConfig::from_json(&raw, "deepseek_v3")
    }

    #[test]
    fn released_keys_are_read_and_checked_and_the_scale_follows_yarn() {
        let c = deepseek(
            json!({"scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1,
            "ep_size": 8, "aux_loss_alpha": 0.001, "seq_aux": true, "qk_head_dim": 12}),
        )
        .unwrap();
        let latent = c.latent.unwrap();
        assert_eq!((latent.q_rank, latent.qk_dim(), latent.v, c.head_dim), (None, 12, 6, 4));
        assert!((c.layers[0].scale - 1.0 / 12f64.sqrt()).abs() < 1e-12);
        let yarn = json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 16, "mscale": 1.0, "mscale_all_dim": 1.0}});
        let m = 0.1 * 4f64.ln() + 1.0;
        let scaled = deepseek(yarn).unwrap().layers[0].scale;
        assert!((scaled - m * m / 12f64.sqrt()).abs() < 1e-12, "{scaled}");
        for (key, value) in [("scoring_func", json!("softmax")), ("topk_method", json!("greedy"))] {
            let e = deepseek(json!({ key: value })).unwrap_err();
            assert!(e.contains(key) && e.contains(&value.to_string()), "{e}");
        }
        let e = deepseek(json!({"moe_layer_freq": 2})).unwrap_err();
        assert!(e.contains("moe_layer_freq"), "{e}");
    }

    #[test]
    fn sizes_that_cannot_run_are_refused_by_name() {
        let e = deepseek(json!({"num_key_value_heads": 2})).unwrap_err();
        assert!(e.contains("num_key_value_heads") && e.contains("equal"), "{e}");
        let e = deepseek(json!({"qk_rope_head_dim": 5})).unwrap_err();
        assert!(e.contains("qk_rope_head_dim") && e.contains("even"), "{e}");
        let e = deepseek(json!({"head_dim": 8})).unwrap_err();
        assert!(e.contains("head_dim") && e.contains("qk_rope_head_dim"), "{e}");
        let e = deepseek(json!({"kv_lora_rank": 0})).unwrap_err();
        assert!(e.contains("kv_lora_rank"), "{e}");
        let e = deepseek(json!({"rope_interleave": "yes"})).unwrap_err();
        assert!(e.contains("rope_interleave"), "{e}");
        let rope =
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}});
        let e = deepseek(rope).unwrap_err();
        assert!(e.contains("partial_rotary_factor") && e.contains("0.5"), "{e}");
        let lite = |types: Value| {
            let raw = json!({"model_type": "glm4_moe_lite", "vocab_size": 64, "hidden_size": 32,
                "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                "kv_lora_rank": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 6,
                "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "mlp_layer_types": types});
            DecoderConfig::from_json(&raw, "glm4_moe_lite")
        };
        let c = lite(json!(["sparse", "dense"])).unwrap();
        assert_eq!(
            (c.layers[0].experts.is_some(), c.layers[1].experts.is_some()),
            (true, false)
        );
        let c = lite(Value::Null).unwrap();
        assert_eq!(
            (c.layers[0].experts.is_some(), c.layers[1].experts.is_some()),
            (false, true)
        );
        let e = lite(json!(["sparse"])).unwrap_err();
        assert!(e.contains("mlp_layer_types") && e.contains("2 layers"), "{e}");
        let e = lite(json!(["sparse", "moe"])).unwrap_err();
        assert!(e.contains("mlp_layer_types") && e.contains("moe"), "{e}");
    }
}
