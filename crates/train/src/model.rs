//! FreezeTune's trainable decoder for llama, mistral, qwen2 and qwen3, with Hugging Face weight names and only
//! differentiable ops. Frozen layers below the lowest trainable one record no graph (their inputs hold no `Var`);
//! frozen linears above it compute only the input gradient.

use crate::config::{Activation, DecoderConfig};
use crate::error::{Result, TrainError};
use crate::ops::{apply_rope, rms_norm, softmax_last_dim, Linear};
use crate::params::Params;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// The attention input projections: separate, or phi3's fused `qkv_proj`.
enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

/// The MLP's gate and up projections: separate, or phi3's fused `gate_up_proj` (gate first).
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Block {
    trainable: bool,
    input_norm: Tensor,
    qkv: Qkv,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    gate_up: GateUp,
    down: Linear,
}

pub struct Decoder {
    pub config: DecoderConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    device: Device,
}

/// One batch: token ids and, per row, how many leading tokens are real (the rest is right padding).
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub lengths: Vec<usize>,
}

impl Decoder {
    pub fn new(config: DecoderConfig, params: &Params, device: &Device) -> Result<Decoder> {
        let c = &config;
        let fused = c.architecture == crate::config::Architecture::Phi3;
        let blocks = (0..c.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let trainable = params.vars.keys().any(|n| n.starts_with(&format!("{p}.")));
                Ok(Block {
                    trainable,
                    input_norm: params.get(&format!("{p}.input_layernorm.weight"))?,
                    qkv: if fused {
                        Qkv::Fused(params.linear(&format!("{p}.self_attn.qkv_proj"), false)?)
                    } else {
                        Qkv::Separate {
                            q: params.linear(&format!("{p}.self_attn.q_proj"), c.qkv_bias)?,
                            k: params.linear(&format!("{p}.self_attn.k_proj"), c.qkv_bias)?,
                            v: params.linear(&format!("{p}.self_attn.v_proj"), c.qkv_bias)?,
                        }
                    },
                    o: params.linear(&format!("{p}.self_attn.o_proj"), false)?,
                    q_norm: c
                        .qk_norm
                        .then(|| params.get(&format!("{p}.self_attn.q_norm.weight")))
                        .transpose()?,
                    k_norm: c
                        .qk_norm
                        .then(|| params.get(&format!("{p}.self_attn.k_norm.weight")))
                        .transpose()?,
                    post_norm: params.get(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate_up: if fused {
                        GateUp::Fused(params.linear(&format!("{p}.mlp.gate_up_proj"), false)?)
                    } else {
                        GateUp::Separate {
                            gate: params.linear(&format!("{p}.mlp.gate_proj"), false)?,
                            up: params.linear(&format!("{p}.mlp.up_proj"), false)?,
                        }
                    },
                    down: params.linear(&format!("{p}.mlp.down_proj"), false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = params.get("model.embed_tokens.weight")?;
        let lm_head = if c.tie_word_embeddings || !params.contains("lm_head.weight") {
            Linear {
                weight: embed.clone(),
                frozen: !embed.is_variable(),
                bias: None,
            }
        } else {
            params.linear("lm_head", false)?
        };
        Ok(Decoder {
            inv_freq: c.inv_freq(),
            embed,
            blocks,
            norm: params.get("model.norm.weight")?,
            lm_head,
            config,
            device: device.clone(),
        })
    }

    /// Token embeddings (batch, seq, hidden), scaled where the architecture says so.
    fn embed_ids(&self, ids: &Tensor, b: usize, t: usize) -> candle_core::Result<Tensor> {
        let h = self
            .embed
            .index_select(ids, 0)?
            .reshape((b, t, self.config.hidden_size))?;
        match self.config.embed_scale {
            // transformers rounds the scale to the activations' dtype first.
            Some(scale) => {
                h.clone()
                    * Tensor::new(scale as f32, &self.device)?
                        .to_dtype(h.dtype())?
                        .to_scalar::<f32>()? as f64
            }
            None => Ok(h),
        }
    }

    /// RMSNorm with the architecture's weight offset.
    fn rms(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        if self.config.norm_offset == 0.0 {
            rms_norm(x, weight, self.config.rms_norm_eps)
        } else {
            rms_norm(x, &(weight + self.config.norm_offset)?, self.config.rms_norm_eps)
        }
    }

    /// cos/sin tables for positions `start..start + t`.
    fn rope_tables(&self, start: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(t * half * 2);
        for pos in start..start + t {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| pos as f32 * f).collect();
            angles.extend_from_slice(&row);
            angles.extend_from_slice(&row);
        }
        let a = Tensor::from_vec(angles, (t, 2 * half), &self.device)?;
        Ok((a.cos()?, a.sin()?))
    }

    /// Additive attention mask (batch, 1, t, t): causal, and padded keys hidden. Finite, so a fully masked row
    /// (a padded query) stays finite; its loss is ignored anyway.
    fn mask(&self, lengths: &[usize], t: usize) -> candle_core::Result<Tensor> {
        let mut m = vec![0f32; lengths.len() * t * t];
        for (b, &len) in lengths.iter().enumerate() {
            for i in 0..t {
                for j in 0..t {
                    if j > i || j >= len {
                        m[b * t * t + i * t + j] = -1e9;
                    }
                }
            }
        }
        Tensor::from_vec(m, (lengths.len(), 1, t, t), &self.device)
    }

    /// Logits (batch, seq, vocab) in f32.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        self.forward_inner(batch).map_err(|e| TrainError::Candle {
            context: "forward pass".into(),
            source: e,
        })
    }

    /// Token ids as one (batch * seq) tensor, right-padded with 0.
    fn ids_tensor(&self, batch: &Batch) -> candle_core::Result<(Tensor, usize, usize)> {
        let b = batch.input_ids.len();
        let t = batch.input_ids.iter().map(Vec::len).max().unwrap_or(0);
        let ids: Vec<u32> = batch
            .input_ids
            .iter()
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0, t - row.len())))
            .collect();
        Ok((Tensor::from_vec(ids, b * t, &self.device)?, b, t))
    }

    /// Gradient checkpointing: the forward pass keeps only each layer's input; the backward pass recomputes one
    /// layer at a time from it and pushes the gradient down. `loss_of` turns logits into the scalar to minimise;
    /// `on_grads` receives each partial gradient store (the caller sums the parameters' gradients). Returns the loss.
    pub fn checkpointed_backward(
        &self,
        batch: &Batch,
        loss_of: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
        on_grads: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<f64> {
        let err = |e| TrainError::Candle {
            context: "checkpointed backward pass".into(),
            source: e,
        };
        let (ids, b, t) = self.ids_tensor(batch).map_err(err)?;
        let (cos, sin) = self.rope_tables(0, t).map_err(err)?;
        let mask = self.mask(&batch.lengths, t).map_err(err)?;
        let embed_trainable = self.embed.is_variable();
        let lowest = self
            .blocks
            .iter()
            .position(|blk| blk.trainable)
            .unwrap_or(self.blocks.len());
        let stop = if embed_trainable { 0 } else { lowest };
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut h = self.embed_ids(&ids, b, t).map_err(err)?.detach();
        for blk in &self.blocks {
            inputs.push(h.clone());
            h = self.block(blk, &h, &cos, &sin, &mask, None).map_err(err)?.detach();
        }
        let top = Var::from_tensor(&h).map_err(err)?;
        let logits = self
            .rms(top.as_tensor(), &self.norm)
            .and_then(|n| self.lm_head.forward(&n))
            .and_then(|l| l.to_dtype(DType::F32))
            .map_err(err)?;
        let loss = loss_of(&logits).map_err(err)?;
        let value = loss
            .to_dtype(DType::F64)
            .and_then(|l| l.to_scalar::<f64>())
            .map_err(err)?;
        let store = loss.backward().map_err(err)?;
        on_grads(&store)?;
        let mut grad = store.get(top.as_tensor()).cloned();
        drop(store);
        for i in (stop..self.blocks.len()).rev() {
            let Some(g) = grad.take() else { break };
            let x = Var::from_tensor(&inputs[i]).map_err(err)?;
            let y = self
                .block(&self.blocks[i], x.as_tensor(), &cos, &sin, &mask, None)
                .map_err(err)?;
            let store = (y * g)
                .and_then(|p| p.sum_all())
                .and_then(|s| s.backward())
                .map_err(err)?;
            on_grads(&store)?;
            grad = store.get(x.as_tensor()).cloned();
        }
        if embed_trainable {
            if let Some(g) = grad {
                let x = self.embed_ids(&ids, b, t).map_err(err)?;
                let store = (x * g)
                    .and_then(|p| p.sum_all())
                    .and_then(|s| s.backward())
                    .map_err(err)?;
                on_grads(&store)?;
            }
        }
        Ok(value)
    }

    fn forward_inner(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let (ids, b, t) = self.ids_tensor(batch)?;
        let mut h = self.embed_ids(&ids, b, t)?;
        let (cos, sin) = self.rope_tables(0, t)?;
        let mask = self.mask(&batch.lengths, t)?;
        for block in &self.blocks {
            h = self.block(block, &h, &cos, &sin, &mask, None)?;
        }
        let h = self.rms(&h, &self.norm)?;
        self.lm_head.forward(&h)?.to_dtype(DType::F32)
    }

    /// One decoder layer. With `cache`, the keys and values of earlier positions are prepended (and the new ones
    /// appended to the cache) for generation.
    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let h = self.rms(x, &blk.input_norm)?;
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2);
        let (q, k, v) = match &blk.qkv {
            Qkv::Separate { q, k, v } => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
            Qkv::Fused(qkv) => {
                let y = qkv.forward(&h)?;
                (
                    y.narrow(2, 0, nh * hd)?,
                    y.narrow(2, nh * hd, nkv * hd)?,
                    y.narrow(2, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let mut q = heads(q, nh)?;
        let mut k = heads(k, nkv)?;
        let v = heads(v, nkv)?;
        if let (Some(qn), Some(kn)) = (&blk.q_norm, &blk.k_norm) {
            q = rms_norm(&q, qn, c.rms_norm_eps)?;
            k = rms_norm(&k, kn, c.rms_norm_eps)?;
        }
        let q = apply_rope(&q.contiguous()?, cos, sin)?;
        let mut k = apply_rope(&k.contiguous()?, cos, sin)?;
        let mut v = v.contiguous()?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = &cache.kv {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(k, nh / nkv)?;
        let v = repeat_kv(v, nh / nkv)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask.to_dtype(q.dtype())?)?;
        let probs = softmax_last_dim(&scores)?;
        let attn = probs
            .matmul(&v.contiguous()?)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        let x = (x + blk.o.forward(&attn)?)?;
        let h = self.rms(&x, &blk.post_norm)?;
        let (gate, up) = match &blk.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(&h)?, up.forward(&h)?),
            GateUp::Fused(gate_up) => {
                let y = gate_up.forward(&h)?;
                let i = c.intermediate_size;
                (y.narrow(2, 0, i)?, y.narrow(2, i, i)?)
            }
        };
        let gate = match c.activation {
            Activation::Silu => gate.silu()?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        let mlp = blk.down.forward(&(gate * up)?)?;
        x + mlp
    }
}

/// Keys and values of one layer for the positions generated so far.
#[derive(Default)]
struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

/// The KV cache of a generation: every layer's keys and values, and how many positions they cover.
pub struct KvCache {
    layers: Vec<LayerCache>,
    pub len: usize,
}

impl Decoder {
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.blocks.len()).map(|_| LayerCache::default()).collect(),
            len: 0,
        }
    }

    /// Feeds `ids` (one sequence) after the cached positions; returns the logits of the last one (vocab).
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut run = || -> candle_core::Result<Tensor> {
            let (start, t) = (cache.len, ids.len());
            let ids_t = Tensor::new(ids, &self.device)?;
            let mut h = self.embed_ids(&ids_t, 1, t)?;
            let (cos, sin) = self.rope_tables(start, t)?;
            let total = start + t;
            let mask: Vec<f32> = (0..t)
                .flat_map(|i| (0..total).map(move |j| if j > start + i { -1e9 } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (1, 1, t, total), &self.device)?;
            for (block, layer) in self.blocks.iter().zip(cache.layers.iter_mut()) {
                h = self.block(block, &h, &cos, &sin, &mask, Some(layer))?;
            }
            cache.len = total;
            let h = self.rms(&h.narrow(1, t - 1, 1)?, &self.norm)?;
            self.lm_head
                .forward(&h)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .detach()
                .contiguous()
        };
        run().map_err(|e| TrainError::Candle {
            context: "generation step".into(),
            source: e,
        })
    }
}

/// (b, kv, t, d) -> (b, kv * n_rep, t, d), sharing each kv head among `n_rep` query heads.
fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))
}
