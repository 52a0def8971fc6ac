//! FreezeTune's trainable decoder for llama, mistral, qwen2 and qwen3, with Hugging Face weight names and only
//! differentiable ops. Frozen layers below the lowest trainable one record no graph (their inputs hold no `Var`);
//! frozen linears above it compute only the input gradient.

use crate::attention::{additive_mask, attention, AttentionSpec, Positions};
use crate::config::{Activation, DecoderConfig};
use crate::error::{Result, TrainError};
use crate::fused;
use crate::ops::{rms_norm, rms_norm_offset, rope_heads, swiglu, Linear};
use crate::params::Params;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::sync::Mutex;

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
    /// The sliding window of this layer's attention (None: full causal).
    window: Option<usize>,
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
    /// Activations' dtype (frozen weights are stored in it).
    dtype: DType,
    /// Device-resident cos/sin tables for the longest sequence seen so far.
    rope: Mutex<Option<RopeTables>>,
    /// The attention masking of the last batch shape (row lengths and width), kept on the device.
    mask: Mutex<Option<(Vec<usize>, usize, AttnMask)>>,
}

struct RopeTables {
    len: usize,
    cos: Tensor,
    sin: Tensor,
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
                    window: c.window(i),
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
                    o: params.linear(&format!("{p}.self_attn.o_proj"), c.o_bias)?,
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
                            gate: params.linear(&format!("{p}.mlp.gate_proj"), c.mlp_bias)?,
                            up: params.linear(&format!("{p}.mlp.up_proj"), c.mlp_bias)?,
                        }
                    },
                    down: params.linear(&format!("{p}.mlp.down_proj"), c.mlp_bias)?,
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
        let norm = params.get("model.norm.weight")?;
        refuse_unread(params, c)?;
        Ok(Decoder {
            inv_freq: c.inv_freq(),
            embed,
            blocks,
            norm,
            lm_head,
            config,
            device: device.clone(),
            dtype: params.dtype(),
            rope: Mutex::new(None),
            mask: Mutex::new(None),
        })
    }

    /// The activations' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Token embeddings (batch, seq, hidden) in the compute dtype, scaled where the architecture says so. Only the
    /// looked-up rows are cast (a trainable embedding is an f32 master).
    fn embed_ids(&self, ids: &Tensor, b: usize, t: usize) -> candle_core::Result<Tensor> {
        let h = self
            .embed
            .index_select(ids, 0)?
            .to_dtype(self.dtype)?
            .reshape((b, t, self.config.hidden_size))?;
        match self.config.embed_scale {
            Some(scale) => h * rounded_to(scale, self.dtype),
            None => Ok(h),
        }
    }

    /// RMSNorm with the architecture's weight offset, in f32.
    fn rms(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm_offset(x, weight, self.config.norm_offset, self.config.rms_norm_eps)
    }

    /// f32 cos/sin tables (t, head_dim) for positions `start..start + t`, narrowed from tables kept on the device
    /// and rebuilt only when a longer sequence comes. Computed on the host in f32 as transformers does (position ×
    /// inv_freq rounded to f32, then cos/sin), so every backend gets the same tables (Metal's fast-math cos/sin
    /// drift at large positions).
    fn rope_tables(&self, start: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let mut cached = self.rope.lock().expect("rope cache");
        let need = start + t;
        if cached.as_ref().is_none_or(|r| r.len < need) {
            let len = need.next_power_of_two().max(64);
            let (cos, sin) = rope_table_values(&self.inv_freq, len);
            let width = 2 * self.inv_freq.len();
            *cached = Some(RopeTables {
                len,
                cos: Tensor::from_vec(cos, (len, width), &self.device)?,
                sin: Tensor::from_vec(sin, (len, width), &self.device)?,
            });
        }
        let r = cached.as_ref().expect("just built");
        Ok((r.cos.narrow(0, start, t)?, r.sin.narrow(0, start, t)?))
    }

    /// The attention masking of a training batch: the row lengths on the device and, where the fused CPU kernel
    /// runs, its dense additive mask (batch, 1, t, t) (causal, padded keys hidden; finite, so a fully masked row
    /// stays finite). Kept while batches keep the same shape.
    fn mask(&self, lengths: &[usize], t: usize) -> candle_core::Result<AttnMask> {
        let mut cached = self.mask.lock().expect("mask cache");
        if let Some((l, w, m)) = cached.as_ref() {
            if l == lengths && *w == t {
                return Ok(m.clone());
            }
        }
        let dev = &self.device;
        let lens: Vec<f32> = lengths.iter().map(|&l| l as f32).collect();
        let lens = Tensor::from_vec(lens, (lengths.len(), 1, 1), dev)?;
        let fused = fused::enabled() && dev.is_cpu() && self.dtype == DType::F32;
        let window = self
            .config
            .layer_windows
            .iter()
            .flatten()
            .copied()
            .filter(|&w| w < t)
            .min();
        // The fused kernel's dense (batch, 1, t, t) mask: the blockwise attention's mask of all positions at once.
        let dense = |window| {
            fused
                .then(|| additive_mask(0..t, 0..t, window, Some(&lens), dev))
                .transpose()
        };
        let m = AttnMask {
            dense: dense(None)?,
            dense_windowed: match window {
                Some(w) => dense(Some(w))?,
                None => None,
            },
            lengths: Some(lens),
            q_offset: 0,
        };
        *cached = Some((lengths.to_vec(), t, m.clone()));
        Ok(m)
    }

    /// Logits (batch, seq, vocab) in f32.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        self.forward_logits(batch)?
            .to_dtype(DType::F32)
            .map_err(crate::error::candle("forward pass"))
    }

    /// Logits (batch, seq, vocab) in the compute dtype: what the loss reads (it computes in f32 chunk by chunk,
    /// so bf16 logits are never copied to f32 whole).
    pub fn forward_logits(&self, batch: &Batch) -> Result<Tensor> {
        self.forward_inner(batch).map_err(crate::error::candle("forward pass"))
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
    /// layer at a time from it and pushes the gradient down. `loss_of` turns logits (compute dtype) into the
    /// scalar to minimise; `on_grads` receives each partial gradient store (the caller sums the parameters'
    /// gradients). Returns the loss, on the device (not read back).
    pub fn checkpointed_backward(
        &self,
        batch: &Batch,
        loss_of: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
        on_grads: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<Tensor> {
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
        // Only the inputs of the layers the backward pass recomputes are kept (none below `stop`).
        let mut inputs = Vec::with_capacity(self.blocks.len() - stop);
        let mut h = self.embed_ids(&ids, b, t).map_err(err)?.detach();
        for (i, blk) in self.blocks.iter().enumerate() {
            if i >= stop {
                inputs.push(h.clone());
            }
            h = self.block(blk, &h, &cos, &sin, &mask, None).map_err(err)?.detach();
        }
        let top = Var::from_tensor(&h).map_err(err)?;
        let logits = self
            .rms(top.as_tensor(), &self.norm)
            .and_then(|n| self.lm_head.forward(&n))
            .map_err(err)?;
        let loss = loss_of(&logits).map_err(err)?;
        let value = loss.detach();
        let store = loss.backward().map_err(err)?;
        on_grads(&store)?;
        let mut grad = store.get(top.as_tensor()).cloned();
        drop(store);
        for i in (stop..self.blocks.len()).rev() {
            let Some(g) = grad.take() else { break };
            let x = Var::from_tensor(&inputs[i - stop]).map_err(err)?;
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

    /// The hidden state entering each layer and the last layer's output (before the final norm): `L + 1` f32
    /// tensors of (batch, seq, hidden), computed without a graph, for the layer probe.
    pub fn hidden_states(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        let inner = || -> candle_core::Result<Vec<Tensor>> {
            let (ids, b, t) = self.ids_tensor(batch)?;
            let mut h = self.embed_ids(&ids, b, t)?.detach();
            let (cos, sin) = self.rope_tables(0, t)?;
            let mask = self.mask(&batch.lengths, t)?;
            let mut states = vec![h.to_dtype(DType::F32)?];
            for block in &self.blocks {
                h = self.block(block, &h, &cos, &sin, &mask, None)?.detach();
                states.push(h.to_dtype(DType::F32)?);
            }
            Ok(states)
        };
        inner().map_err(crate::error::candle("hidden states"))
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
        self.lm_head.forward(&h)
    }

    /// One decoder layer. With `cache`, the keys and values of earlier positions are prepended (and the new ones
    /// appended to the cache) for generation.
    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut LayerCache>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let h = self.rms(x, &blk.input_norm)?;
        let split = |y: Tensor, n: usize| y.reshape((b, t, n, hd));
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
        let mut q = split(q, nh)?;
        let mut k = split(k, nkv)?;
        if let (Some(qn), Some(kn)) = (&blk.q_norm, &blk.k_norm) {
            q = rms_norm(&q, qn, c.rms_norm_eps)?;
            k = rms_norm(&k, kn, c.rms_norm_eps)?;
        }
        let q = rope_heads(&q, cos, sin)?;
        let mut k = rope_heads(&k, cos, sin)?;
        let mut v = split(v, nkv)?.transpose(1, 2)?.contiguous()?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = &cache.kv {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        let attn = self.attend(&q, k, v, mask, blk.window)?;
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
        let product = match c.activation {
            Activation::Silu => swiglu(&gate, &up)?,
            Activation::GeluTanh => (gate.gelu()? * up)?,
            Activation::Gelu => (gate.gelu_erf()? * up)?,
        };
        let mlp = blk.down.forward(&product)?;
        x + mlp
    }
}

impl Decoder {
    /// `softmax(q·kᵀ/√d + mask)·v` over q (b, heads, t, d) and k, v (b, kv_heads, t_k, d), as (b, t, heads·d):
    /// the fused CPU kernel in f32 when it has a dense mask (training and the probe), the blockwise
    /// device-generic attention otherwise (CUDA, Metal, other dtypes, generation, `FREEZETUNE_FUSED=0`).
    fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: &AttnMask,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let spec = AttentionSpec {
            window,
            ..AttentionSpec::plain(q.dim(3)?)
        };
        let dense = match window {
            Some(w) if w < k.dim(2)? => mask.dense_windowed.as_ref(),
            _ => mask.dense.as_ref(),
        };
        if let Some(dense) = dense {
            if fused::applies(q) && k.dim(2)? == q.dim(2)? {
                return fused::causal_attention(q, &k, &v, dense, spec.scale as f32);
            }
        }
        let positions = Positions {
            q_offset: mask.q_offset,
            lengths: mask.lengths.as_ref(),
        };
        attention(q, &k, &v, spec, &positions)
    }
}

/// How a batch's attention is masked: causal always; padded keys where row lengths are given; the fused CPU
/// kernel's dense mask where it runs.
#[derive(Clone)]
struct AttnMask {
    /// f32 (batch, 1, 1) row lengths; None: no padding.
    lengths: Option<Tensor>,
    /// The position of the first query (the cached length when generating).
    q_offset: usize,
    dense: Option<Tensor>,
    /// The dense mask of the sliding-window layers, where the window is shorter than the batch.
    dense_windowed: Option<Tensor>,
}

/// cos and sin of `position × inv_freq` in f32, row-major (len, 2 × inv_freq.len()): each row's angles twice, as
/// rotate_half pairs them.
fn rope_table_values(inv_freq: &[f32], len: usize) -> (Vec<f32>, Vec<f32>) {
    let width = 2 * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(len * width), Vec::with_capacity(len * width));
    for p in 0..len {
        let angles = inv_freq.iter().map(|&f| p as f32 * f);
        let row: Vec<f32> = angles.collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| a.cos()));
            sin.extend(row.iter().map(|a| a.sin()));
        }
    }
    (cos, sin)
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
            let mask = AttnMask {
                lengths: None,
                q_offset: start,
                dense: None,
                dense_windowed: None,
            };
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

/// Every tensor of the checkpoint must be read by the decoder: one it leaves out (a bias, a norm, a projection of a
/// variant it does not know) would make training other math than the model's, without a word. Two kinds are left
/// out as transformers leaves them: old checkpoints' `rotary_emb.inv_freq` buffers (recomputed from the config) and
/// a tied model's stored `lm_head.weight` (the embeddings serve).
fn refuse_unread(params: &Params, c: &DecoderConfig) -> Result<()> {
    let ignored = |n: &str| n.ends_with(".rotary_emb.inv_freq") || (c.tie_word_embeddings && n == "lm_head.weight");
    let unread: Vec<String> = params.unread().into_iter().filter(|n| !ignored(n)).collect();
    let Some(first) = unread.first() else {
        return Ok(());
    };
    let more = match unread.len() {
        1 => String::new(),
        n => format!(
            " (and {} more: {})",
            n - 1,
            unread[1..].iter().take(4).cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    Err(TrainError::Tensor {
        name: first.clone(),
        reason: format!(
            "is in the checkpoint but FreezeTune's {:?} decoder does not use it{more}: training would leave it out \
             and compute other logits than the model's. Check config.json (a key such as attention_bias or \
             mlp_bias may be missing), or the model is a variant FreezeTune does not support yet",
            c.architecture
        ),
    })
}

/// `value` rounded to `dtype` first, as transformers does with gemma's embedding scale. Done on the host with
/// `half`: a device-side scalar round trip would need a host read (and Metal has no f64).
fn rounded_to(value: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(value).to_f64(),
        DType::F16 => half::f16::from_f64(value).to_f64(),
        _ => value as f32 as f64,
    }
}
