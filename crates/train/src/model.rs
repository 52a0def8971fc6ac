//! FreezeTune's trainable decoder: one layer loop that applies the per-layer description config.rs computes
//! ([`LayerSpec`]: window, rope, scale, softcap, norm placement, q/k norm, biases, MLP), with Hugging Face weight
//! names and only differentiable ops. Frozen layers below the lowest trainable one record no graph (their inputs hold no `Var`);
//! frozen linears above it compute only the input gradient.

use crate::attention::{additive_mask, attention, AttentionSpec, Positions};
use crate::config::{Activation, DecoderConfig, DeltaNetShape, LayerSpec, Mixer, PositionQueryScale};
use crate::delta_projections::InputProjections;
use crate::error::{Result, TrainError};
use crate::family::{MlpLayout, QkNorm};
use crate::fused;
use crate::latent::LatentWeights;
use crate::linear::{Linear, LinearWeight};
use crate::moe::{Experts, RouterStats};
use crate::ops::{evens_then_odds, rms_norm_offset, rope_heads, sigmoid, softplus, swiglu};
use crate::params::Params;
use crate::per_layer::{PerLayerBranch, PerLayerModel};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::sync::{Mutex, PoisonError};

/// The attention input projections: separate (`v` None where the values are the keys' projection: Gemma 4),
/// phi3's fused `qkv_proj`, or latent (DeepSeek-V3).
enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Option<Linear>,
    },
    /// A layer that attends over an earlier layer's keys and values (Gemma 4's shared layers): its queries only.
    Queries(Linear),
    Fused(Linear),
    Latent(Box<LatentWeights>),
}

/// The MLP's gate and up projections: separate, or phi3's fused `gate_up_proj` (gate first).
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

/// The norm weights around one sublayer (attention or MLP): before it (`pre`), on its output (`post`), or both,
/// as the layer's [`NormPlacement`] says.
struct Norms {
    pre: Option<Tensor>,
    post: Option<Tensor>,
}

struct Block {
    spec: LayerSpec,
    /// The layer's number.
    index: usize,
    /// Later layers attend over this layer's keys and values ([`LayerSpec::kv_source`]).
    stores_kv: bool,
    /// The branch over the layer's per-layer input (Gemma 4's per-layer embeddings).
    per_layer: Option<PerLayerBranch>,
    trainable: bool,
    /// The norms around the token mixer (attention or convolution).
    attn_norms: Norms,
    mlp_norms: Norms,
    mixer: MixerWeights,
    ffn: Ffn,
    /// Experts beside the dense MLP, with norms of their own (Gemma 4's MoE block).
    beside: Option<Beside>,
    /// Multiplies the layer's output (Gemma 4's `layer_scalar`).
    scalar: Option<Tensor>,
}

/// Gemma 4's experts beside the dense MLP ([`crate::family::BesideDense`]): the dense output's norm, the experts'
/// input and output norms.
struct Beside {
    experts: Box<Experts>,
    dense_post: Tensor,
    experts_pre: Tensor,
    experts_post: Tensor,
}

/// A layer's MLP: dense, or a router and experts.
enum Ffn {
    Dense { gate_up: GateUp, down: Linear },
    Experts(Box<Experts>),
}

/// A layer's token mixer, as its [`Mixer`] says.
enum MixerWeights {
    Attention(AttentionWeights),
    ShortConv(ShortConv),
    DeltaNet(DeltaNet),
    Mamba(Mamba),
}

/// Granite 4.0-H's Mamba 2: `in_proj` (z, x‖B‖C, dt), the depthwise convolution over x‖B‖C (width, 1, kernel) and
/// its bias, `dt_bias`, `A_log`, `D`, the gated norm's weight (intermediate), `out_proj` (mamba.rs).
struct Mamba {
    in_proj: Linear,
    conv: Tensor,
    conv_bias: Option<Tensor>,
    dt_bias: Tensor,
    a_log: Tensor,
    d: Tensor,
    norm: Tensor,
    out_proj: Linear,
    shape: crate::mamba::MambaShape,
}

/// Qwen3.5's Gated DeltaNet: the projections to q, k, v (one matrix), z (the output gate), b (write strengths)
/// and a (decay rates); the depthwise convolution over q, k, v (width, 1, kernel); `dt_bias` and `A_log`, which
/// make the decay; the gated output norm (value head dim; a plain weight); `out_proj`.
struct DeltaNet {
    inputs: InputProjections,
    conv: Tensor,
    dt_bias: Tensor,
    a_log: Tensor,
    norm: Tensor,
    out_proj: Linear,
    shape: DeltaNetShape,
}

struct AttentionWeights {
    qkv: Qkv,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// Each head's sink logit (heads), where the layer has sinks (gpt-oss).
    sinks: Option<Tensor>,
    /// Ones (head_dim, f32): the unweighted RMSNorm of each value head (Gemma 4's `v_norm`).
    v_norm: Option<Tensor>,
}

/// LFM2's gated short convolution: `in_proj` (3·hidden rows: B, C, x), the depthwise causal convolution's weight
/// (hidden, 1, kernel) and bias, `out_proj`.
struct ShortConv {
    in_proj: Linear,
    weight: Tensor,
    bias: Option<Tensor>,
    out_proj: Linear,
    kernel: usize,
}

pub struct Decoder {
    pub config: DecoderConfig,
    embed: LinearWeight,
    /// Gemma 4's per-layer embeddings, where the model has them.
    per_layer: Option<PerLayerModel>,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    device: Device,
    /// Activations' dtype (frozen weights are stored in it).
    dtype: DType,
    /// Per rope of the config, device-resident cos/sin tables for the longest sequence seen so far.
    rope: Mutex<Vec<Option<RopeTables>>>,
    /// The attention masking of the last batch shape (row lengths and width), kept on the device.
    mask: Mutex<Option<(Vec<usize>, usize, AttnMask)>>,
    /// While [`Decoder::loss`] runs a model with the router's load-balancing loss: what each sparse layer's router
    /// did (moe/router_loss.rs).
    router_stats: Mutex<Option<RouterStats>>,
}

#[derive(Clone)]
struct RopeTables {
    len: usize,
    /// Built with LongRoPE's long factors.
    long: bool,
    cos: Tensor,
    sin: Tensor,
}

impl Block {
    /// Layer `i`'s weights, as its description names them. Every tensor the description implies must be there.
    fn load(c: &DecoderConfig, names: &TensorNames, i: usize, params: &Params) -> Result<Block> {
        let spec = c.layers[i].clone();
        let p = format!("{}.layers.{i}", names.model);
        let trainable = params.vars.keys().any(|n| n.starts_with(&format!("{p}.")));
        let norm = |name: Option<&str>| name.map(|n| params.get(&format!("{p}.{n}.weight"))).transpose();
        let [attn_pre, attn_post, mlp_pre, mlp_post] = c.names.norms(spec.norms);
        let linear = |name: &str, bias: bool| params.linear(&format!("{p}.{name}"), bias);
        let mixer = match spec.mixer {
            Mixer::Attention => MixerWeights::Attention(AttentionWeights::load(c, &spec, &p, params)?),
            Mixer::ShortConv { kernel, bias } => MixerWeights::ShortConv(ShortConv {
                in_proj: linear("conv.in_proj", bias)?,
                weight: params.get(&format!("{p}.conv.conv.weight"))?,
                bias: bias.then(|| params.get(&format!("{p}.conv.conv.bias"))).transpose()?,
                out_proj: linear("conv.out_proj", bias)?,
                kernel,
            }),
            Mixer::Mamba2(shape) => {
                let get = |name: &str| params.get(&format!("{p}.mamba.{name}"));
                MixerWeights::Mamba(Mamba {
                    in_proj: linear("mamba.in_proj", shape.proj_bias)?,
                    conv: get("conv1d.weight")?,
                    conv_bias: shape.conv_bias.then(|| get("conv1d.bias")).transpose()?,
                    dt_bias: get("dt_bias")?,
                    a_log: get("A_log")?,
                    d: get("D")?,
                    norm: get("norm.weight")?,
                    out_proj: linear("mamba.out_proj", shape.proj_bias)?,
                    shape,
                })
            }
            Mixer::GatedDeltaNet(shape) => {
                let get = |name: &str| params.get(&format!("{p}.linear_attn.{name}"));
                MixerWeights::DeltaNet(DeltaNet {
                    inputs: InputProjections::load(params, &p, c.delta_projections)?,
                    conv: get("conv1d.weight")?,
                    dt_bias: get("dt_bias")?,
                    a_log: get("A_log")?,
                    norm: get("norm.weight")?,
                    out_proj: linear("linear_attn.out_proj", false)?,
                    shape,
                })
            }
        };
        let scalar = c
            .layer_scalar
            .then(|| params.get(&format!("{p}.layer_scalar")))
            .transpose()?;
        let experts = match (spec.experts, &c.experts) {
            (Some(e), Some(table)) => Some((
                Box::new(Experts::load(params, &p, table, e, (spec.activation, c.rms_norm_eps))?),
                table.beside_dense,
            )),
            _ => None,
        };
        let dense = || -> Result<Ffn> {
            Ok(Ffn::Dense {
                gate_up: match c.mlp {
                    MlpLayout::Fused { gate_up, .. } => GateUp::Fused(linear(gate_up, spec.mlp_bias)?),
                    MlpLayout::Separate { gate, up, .. } => GateUp::Separate {
                        gate: linear(gate, spec.mlp_bias)?,
                        up: linear(up, spec.mlp_bias)?,
                    },
                },
                down: match c.mlp {
                    MlpLayout::Fused { down, .. } | MlpLayout::Separate { down, .. } => linear(down, spec.mlp_bias)?,
                },
            })
        };
        let (ffn, beside) = match experts {
            None => (dense()?, None),
            Some((experts, None)) => (Ffn::Experts(experts), None),
            Some((experts, Some(names))) => {
                let norm = |name: &str| params.get(&format!("{p}.{name}.weight"));
                let beside = Beside {
                    experts,
                    dense_post: norm(names.dense_post)?,
                    experts_pre: norm(names.experts_pre)?,
                    experts_post: norm(names.experts_post)?,
                };
                (dense()?, Some(beside))
            }
        };
        let per_layer = c
            .per_layer_inputs
            .map(|_| PerLayerBranch::load(params, &p))
            .transpose()?;
        Ok(Block {
            index: i,
            stores_kv: c.layers.iter().any(|l| l.kv_source == Some(i)),
            per_layer,
            scalar,
            beside,
            ffn,
            trainable,
            attn_norms: Norms {
                pre: norm(attn_pre)?,
                post: norm(attn_post)?,
            },
            mlp_norms: Norms {
                pre: norm(mlp_pre)?,
                post: norm(mlp_post)?,
            },
            mixer,
            spec,
        })
    }
}

impl AttentionWeights {
    /// The attention weights of the layer at `p` (`model.layers.N`).
    fn load(c: &DecoderConfig, spec: &LayerSpec, p: &str, params: &Params) -> Result<AttentionWeights> {
        let linear = |name: &str, bias: bool| params.linear(&format!("{p}.{name}"), bias);
        let qk_norm = |name: &str| {
            (spec.qk_norm != QkNorm::None)
                .then(|| params.get(&format!("{p}.{name}.weight")))
                .transpose()
        };
        let own_keys = spec.kv_source.is_none();
        let o = linear(c.names.o_proj, spec.o_bias)?;
        let v_norm = match spec.value_norm && own_keys {
            true => Some(
                Tensor::ones(spec.head_dim, DType::F32, params.device()).map_err(crate::error::candle("value norm"))?,
            ),
            false => None,
        };
        Ok(AttentionWeights {
            v_norm,
            qkv: if let Some(latent) = c.latent {
                Qkv::Latent(Box::new(LatentWeights::load(
                    params,
                    p,
                    latent,
                    c.num_heads,
                    spec.qkv_bias,
                )?))
            } else if !own_keys {
                Qkv::Queries(linear("self_attn.q_proj", spec.qkv_bias)?)
            } else if c.fused_qkv {
                Qkv::Fused(linear("self_attn.qkv_proj", spec.qkv_bias)?)
            } else {
                Qkv::Separate {
                    q: linear("self_attn.q_proj", spec.qkv_bias)?,
                    k: linear("self_attn.k_proj", spec.qkv_bias)?,
                    v: match spec.values_from_keys {
                        true => None,
                        false => Some(linear("self_attn.v_proj", spec.qkv_bias)?),
                    },
                }
            },
            o,
            q_norm: qk_norm(c.names.q_norm)?,
            k_norm: match own_keys {
                true => qk_norm(c.names.k_norm)?,
                false => None,
            },
            sinks: spec
                .sinks
                .then(|| params.get(&format!("{p}.self_attn.sinks")))
                .transpose()?,
        })
    }
}

/// Where the text decoder's tensors sit in the checkpoint: `model.*` and `lm_head` for a causal LM; a
/// vision-language wrapper's text tower under `language_model.model.*` / `language_model.lm_head` (the layout
/// transformers writes) or `model.language_model.*` / `lm_head` (the one it runs).
struct TensorNames {
    model: String,
    lm_head: String,
}

impl TensorNames {
    fn of(c: &DecoderConfig, params: &Params) -> TensorNames {
        let layouts: &[(&str, &str)] = match c.wrapper {
            None => &[("model", "lm_head")],
            Some(_) => &[
                ("language_model.model", "language_model.lm_head"),
                ("model.language_model", "lm_head"),
            ],
        };
        let (model, lm_head) = layouts
            .iter()
            .find(|(m, _)| params.contains(&format!("{m}.embed_tokens.weight")))
            .unwrap_or(&layouts[0]);
        TensorNames {
            model: model.to_string(),
            lm_head: lm_head.to_string(),
        }
    }

    /// The checkpoint's name of a tensor the decoder knows by its causal-LM name.
    fn actual(&self, canonical: &str) -> String {
        match canonical.strip_prefix("model.") {
            Some(rest) => format!("{}.{rest}", self.model),
            None => canonical.replacen("lm_head", &self.lm_head, 1),
        }
    }

    /// Whether `name` belongs to the text decoder (a wrapper's vision tower and projector do not).
    fn is_text(&self, name: &str) -> bool {
        name.starts_with(&format!("{}.", self.model)) || name.starts_with(&format!("{}.", self.lm_head))
    }
}

/// What a layer reads beside its input: its slice of the per-layer inputs (Gemma 4's per-layer embeddings), and
/// the keys and values earlier layers leave for the layers that reuse them.
struct Side<'a> {
    per_layer: Option<Tensor>,
    kv: &'a mut KvShare,
}

/// The keys and values (batch, kv_heads, keys, head_dim) of the layers later layers reuse, by layer, as each
/// pass leaves them: with their graph in a plain forward pass, detached between the layers of a checkpointed
/// one, or as variables whose gradient a recomputed shared layer gives back.
struct KvShare(Vec<Option<(Tensor, Tensor)>>);

impl KvShare {
    fn new(layers: usize) -> KvShare {
        KvShare(vec![None; layers])
    }

    /// Keeps `blk`'s keys and values where a later layer reuses them.
    fn offer(&mut self, blk: &Block, k: &Tensor, v: &Tensor) {
        if blk.stores_kv {
            self.0[blk.index] = Some((k.clone(), v.clone()));
        }
    }

    fn get(&self, layer: usize) -> Option<&(Tensor, Tensor)> {
        self.0.get(layer).and_then(Option::as_ref)
    }

    fn put(&mut self, layer: usize, k: Tensor, v: Tensor) {
        self.0[layer] = Some((k, v));
    }

    /// The kept values without their graph (a checkpointed pass keeps no graph between layers).
    fn detach(&mut self) {
        for (k, v) in self.0.iter_mut().flatten() {
            *k = k.detach();
            *v = v.detach();
        }
    }
}

/// One batch: token ids and, per row, how many leading tokens are real (the rest is right padding).
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    pub lengths: Vec<usize>,
}

impl Decoder {
    pub fn new(config: DecoderConfig, params: &Params, device: &Device) -> Result<Decoder> {
        let c = &config;
        let names = TensorNames::of(c, params);
        check_shapes(c, &names, params)?;
        refuse_stale_tie(c, &names, params)?;
        let blocks = (0..c.num_layers)
            .map(|i| Block::load(c, &names, i, params))
            .collect::<Result<Vec<_>>>()?;
        let embed = params.weight(&format!("{}.embed_tokens.weight", names.model))?;
        let lm_head_weight = format!("{}.weight", names.lm_head);
        let lm_head = if c.tie_word_embeddings || !params.contains(&lm_head_weight) {
            Linear {
                weight: embed.clone(),
                bias: None,
            }
        } else {
            params.linear(&names.lm_head, false)?
        };
        let norm = params.get(&format!("{}.{}.weight", names.model, c.names.final_norm))?;
        let per_layer = c
            .per_layer_inputs
            .map(|shape| PerLayerModel::load(params, &names.model, shape, c.num_layers))
            .transpose()?;
        refuse_unread(params, c, &names)?;
        Ok(Decoder {
            per_layer,
            rope: Mutex::new(vec![None; c.ropes.len()]),
            embed,
            blocks,
            norm,
            lm_head,
            config,
            device: device.clone(),
            dtype: params.dtype(),
            mask: Mutex::new(None),
            router_stats: Mutex::new(None),
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
            .rows(ids)?
            .to_dtype(self.dtype)?
            .reshape((b, t, self.config.hidden_size))?;
        let h = match self.config.embed_scale {
            Some(scale) => (h * rounded_to(scale, self.dtype))?,
            None => h,
        };
        match self.config.embedding_multiplier {
            1.0 => Ok(h),
            m => h * m,
        }
    }

    /// The final norm, the output projection, and the family's logit scaling and softcap.
    fn head(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.uncapped_head(h)?;
        match self.config.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// The head before the final softcap.
    fn uncapped_head(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.lm_head.forward(&self.rms(h, &self.norm)?)?;
        match self.config.logits_scaling {
            1.0 => Ok(logits),
            s => logits / s,
        }
    }

    /// RMSNorm with the architecture's weight offset, in f32.
    fn rms(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm_offset(x, weight, self.config.norm_offset, self.config.rms_norm_eps)
    }

    /// Per rope of the config, f32 cos/sin tables (t, rotary_dim) for positions `start..start + t`, narrowed
    /// from tables kept on the device and rebuilt only when a longer sequence comes (or LongRoPE switches
    /// factors). Computed on the host in f32 as transformers does (position × inv_freq rounded to f32, then
    /// cos/sin, times the attention factor), so every backend gets the same tables (Metal's fast-math cos/sin
    /// drift at large positions).
    fn rope_tables(&self, start: usize, t: usize) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        let mut cached = self.rope.lock().expect("rope cache");
        let need = start + t;
        let c = &self.config;
        let mut out = Vec::with_capacity(c.ropes.len());
        for (r, (spec, slot)) in c.ropes.iter().zip(cached.iter_mut()).enumerate() {
            let long = spec.uses_long_factors(need);
            if slot.as_ref().is_none_or(|r| r.len < need || r.long != long) {
                let len = need.next_power_of_two().max(64);
                let inv_freq = spec
                    .inv_freq(c.rope_head_dim(r), need)
                    .map_err(candle_core::Error::msg)?;
                let (cos, sin) = rope_table_values(&inv_freq, len, spec.attention_factor as f32);
                let width = 2 * inv_freq.len();
                *slot = Some(RopeTables {
                    len,
                    long,
                    cos: Tensor::from_vec(cos, (len, width), &self.device)?,
                    sin: Tensor::from_vec(sin, (len, width), &self.device)?,
                });
            }
            let r = slot.as_ref().expect("just built");
            out.push((r.cos.narrow(0, start, t)?, r.sin.narrow(0, start, t)?));
        }
        Ok(out)
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
        // One `sliding_window` per config: every sliding layer shares it.
        let window = self
            .config
            .layers
            .iter()
            .filter_map(|l| l.window)
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
    /// layer at a time from it and pushes the gradient down. The scalar minimised is the cross-entropy against
    /// `labels` summed over the counted tokens times `token_weight` (the mean loss × count × weight), plus, where
    /// config.json asks for it, the router's load-balancing loss weighed as [`Self::loss`] weighs it (times the
    /// same count × weight); `on_grads` receives each partial gradient store (the caller sums the parameters'
    /// gradients). Returns that scalar, on the device (not read back).
    ///
    /// The router's loss is linear in each layer's router probabilities once the whole forward pass's routes are
    /// counted: the first pass counts them (keeping no graph), and each recomputed layer adds its own probabilities
    /// times those counts' weights to what its backward pass minimises.
    pub fn checkpointed_backward(
        &self,
        batch: &Batch,
        labels: &[Vec<i64>],
        token_weight: f64,
        on_grads: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<Tensor> {
        let err = |e| TrainError::Candle {
            context: "checkpointed backward pass".into(),
            source: e,
        };
        let (ids, b, t) = self.ids_tensor(batch).map_err(err)?;
        let rot = self.rope_tables(0, t).map_err(err)?;
        let mask = self.mask(&batch.lengths, t).map_err(err)?;
        let real = real_tokens(batch);
        // The first pass only counts each router's routes (layer_backward tracks their probabilities).
        let counting = self
            .config
            .router_aux_loss
            .map(|_| RouterStats::untracked(&real, &self.device))
            .transpose()
            .map_err(err)?;
        let embed_trainable = self.embed.is_trainable();
        let lowest = self
            .blocks
            .iter()
            .position(|blk| blk.trainable)
            .unwrap_or(self.blocks.len());
        // Gemma 4's per-layer inputs come from the embeddings: they need their gradient (from every layer) where
        // the embeddings or their own tensors train.
        let per_layer_grads = self
            .per_layer
            .as_ref()
            .is_some_and(|p| embed_trainable || p.trainable());
        let stop = if embed_trainable || per_layer_grads { 0 } else { lowest };
        // Only the inputs of the layers the backward pass recomputes are kept (none below `stop`).
        let mut inputs = Vec::with_capacity(self.blocks.len() - stop);
        let mut per_layer = None;
        let mut kv = KvShare::new(self.blocks.len());
        let (top, counted) = self.routed(counting, || -> candle_core::Result<Tensor> {
            let mut h = self.embed_ids(&ids, b, t)?.detach();
            per_layer = self.per_layer_inputs(&ids, &h)?.map(|p| p.detach());
            for (i, blk) in self.blocks.iter().enumerate() {
                if i >= stop {
                    inputs.push(h.clone());
                }
                let side = self.side(per_layer.as_ref(), i, &mut kv)?;
                h = self.block(blk, &h, &rot, &mask, None, side)?.detach();
                kv.detach();
            }
            Ok(h)
        });
        let top = Var::from_tensor(&top.map_err(err)?).map_err(err)?;
        let (mean, n) = self.head_loss(top.as_tensor(), labels).map_err(err)?;
        let scale = n as f64 * token_weight;
        let loss = (mean * scale).map_err(err)?;
        // The router's loss: each expert's weight from the whole pass's routes, and its value.
        let balance = match (self.config.router_aux_loss, counted) {
            (Some(coef), Some(counted)) => match counted.weights().map_err(err)? {
                Some(weights) => {
                    let value = counted.weighed(&weights).map_err(err)?;
                    Some((coef * scale, weights, value))
                }
                None => None,
            },
            _ => None,
        };
        let mut value = loss.detach();
        if let Some((factor, _, Some(aux))) = &balance {
            value = (value + (aux * *factor).map_err(err)?).map_err(err)?;
        }
        let store = loss.backward().map_err(err)?;
        on_grads(&store)?;
        let mut grad = store.get(top.as_tensor()).cloned();
        drop(store);
        let down = Downward {
            rot: &rot,
            mask: &mask,
            per_layer: per_layer.as_ref(),
            per_layer_grads,
            kv: &kv,
            stop,
            balance: balance.as_ref().map(|(factor, weights, _)| (*factor, weights)),
            real: &real,
        };
        // The gradients of the shared keys and values (from the layers that reuse them) and of each layer's
        // per-layer input, gathered on the way down.
        let mut kv_grads: Vec<Option<(Tensor, Tensor)>> = vec![None; self.blocks.len()];
        let mut input_grads: Vec<Option<Tensor>> = vec![None; self.blocks.len()];
        for i in (stop..self.blocks.len()).rev() {
            let Some(g) = grad.take() else { break };
            // Each layer's kept input is freed once its recomputation has it.
            let x = inputs.pop().expect("one kept input per recomputed layer");
            let back = self.layer_backward(i, &x, g, kv_grads[i].take(), &down, on_grads)?;
            grad = back.input;
            if let Some((s, kv)) = back.source {
                kv_grads[s] = Some(add_grads(kv_grads[s].take(), kv).map_err(err)?);
            }
            input_grads[i] = back.per_layer_input;
        }
        drop((inputs, kv, kv_grads));
        self.embedding_backward((&ids, b, t), grad, input_grads, on_grads)?;
        Ok(value)
    }

    /// One layer of a checkpointed backward pass: layer `i` recomputed from its kept input `x` and its output's
    /// gradient `g` minimised, plus its router's share of the load-balancing loss and, for a layer later ones
    /// reuse, its keys' and values' share (`kv_grad`). Returns the gradients handed down.
    fn layer_backward(
        &self,
        i: usize,
        x: &Tensor,
        g: Tensor,
        kv_grad: Option<(Tensor, Tensor)>,
        down: &Downward<'_>,
        on_grads: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<LayerGrads> {
        let err = |e| TrainError::Candle {
            context: "checkpointed backward pass".into(),
            source: e,
        };
        let blk = &self.blocks[i];
        let x = Var::from_tensor(x).map_err(err)?;
        // The per-layer input as a variable only where its gradient is wanted (the per-layer tensors or the
        // embeddings train); else as a constant.
        let slice = down
            .per_layer
            .map(|p| crate::per_layer::slice(p, i))
            .transpose()
            .map_err(err)?;
        let input = match (&slice, down.per_layer_grads) {
            (Some(s), true) => Some(Var::from_tensor(s).map_err(err)?),
            _ => None,
        };
        // A shared layer reads its source's keys and values: as variables where the source is recomputed below
        // (their gradient is handed down to it), as constants otherwise.
        let mut local = KvShare::new(self.blocks.len());
        let mut source = None;
        if let Some((s, (k, v))) = blk.spec.kv_source.and_then(|s| down.kv.get(s).map(|kv| (s, kv))) {
            if s >= down.stop {
                let (k, v) = (Var::from_tensor(k).map_err(err)?, Var::from_tensor(v).map_err(err)?);
                local.put(s, k.as_tensor().clone(), v.as_tensor().clone());
                source = Some((s, k, v));
            } else {
                local.put(s, k.clone(), v.clone());
            }
        }
        let per_layer = match &input {
            Some(v) => Some(v.as_tensor().clone()),
            None => slice,
        };
        let side = Side {
            per_layer,
            kv: &mut local,
        };
        let stats = self
            .config
            .router_aux_loss
            .map(|_| RouterStats::new(down.real, &self.device))
            .transpose()
            .map_err(err)?;
        let (y, layer_stats) = self.routed(stats, || {
            self.block(blk, x.as_tensor(), down.rot, down.mask, None, side)
        });
        let mut objective = y.and_then(|y| (y * g)?.sum_all()).map_err(err)?;
        if let (Some((factor, weights)), Some(layer_stats)) = (down.balance, layer_stats) {
            if let Some(part) = layer_stats.weighed(weights).map_err(err)? {
                objective = (objective + (part * factor).map_err(err)?).map_err(err)?;
            }
        }
        // A source layer also minimises its keys' and values' share of the later layers' loss.
        if let (Some((gk, gv)), Some((k, v))) = (kv_grad, local.get(i)) {
            let part = (|| (k * gk)?.sum_all()? + (v * gv)?.sum_all()?)();
            objective = part.and_then(|p| objective + p).map_err(err)?;
        }
        let store = objective.backward().map_err(err)?;
        on_grads(&store)?;
        // A leaf's gradient in candle's store may still record how it was made (a product with this layer's
        // activations): detached, so the passes below never reach back into this layer.
        let gradient = |t: &Tensor| store.get(t).map(Tensor::detach);
        let source = source.and_then(|(s, k, v)| Some((s, (gradient(k.as_tensor())?, gradient(v.as_tensor())?))));
        Ok(LayerGrads {
            input: gradient(x.as_tensor()),
            source,
            per_layer_input: input.and_then(|v| gradient(v.as_tensor())),
        })
    }

    /// The bottom of a checkpointed backward pass: the embeddings' gradient from `grad` (the first layer's input),
    /// and, with per-layer embeddings, from each layer's per-layer input gradient through the per-layer tensors
    /// (which the embeddings feed too). Nothing where neither trains.
    fn embedding_backward(
        &self,
        (ids, b, t): (&Tensor, usize, usize),
        grad: Option<Tensor>,
        per_layer_grads: Vec<Option<Tensor>>,
        on_grads: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let per_layer = self
            .per_layer
            .as_ref()
            .filter(|p| self.embed.is_trainable() || p.trainable());
        if !self.embed.is_trainable() && per_layer.is_none() {
            return Ok(());
        }
        let objective = || -> candle_core::Result<Tensor> {
            let x = self.embed_ids(ids, b, t)?;
            let mut objective = Tensor::zeros((), DType::F32, &self.device)?;
            if let Some(g) = grad.filter(|_| self.embed.is_trainable()) {
                objective = (objective + (&x * g)?.sum_all()?.to_dtype(DType::F32)?)?;
            }
            if let (Some(p), Some(grads)) = (per_layer, per_layer_grads.into_iter().collect::<Option<Vec<_>>>()) {
                let inputs = p.inputs(ids, &x, self.config.rms_norm_eps)?;
                let part = (inputs * Tensor::stack(&grads, 2)?)?.sum_all()?;
                objective = (objective + part.to_dtype(DType::F32)?)?;
            }
            Ok(objective)
        };
        let store = objective()
            .and_then(|o| o.backward())
            .map_err(crate::error::candle("checkpointed backward pass"))?;
        on_grads(&store)
    }

    /// `f` with `stats` collecting the routes of each sparse layer it runs (`mlp` reads them from the decoder),
    /// and those stats after it.
    fn routed<R>(&self, stats: Option<RouterStats>, f: impl FnOnce() -> R) -> (R, Option<RouterStats>) {
        *self.router_stats.lock().unwrap_or_else(PoisonError::into_inner) = stats;
        let out = f();
        let stats = self.router_stats.lock().unwrap_or_else(PoisonError::into_inner).take();
        (out, stats)
    }

    /// The hidden state entering each layer and the last layer's output (before the final norm): `L + 1` f32
    /// tensors of (batch, seq, hidden), computed without a graph, for the layer probe.
    pub fn hidden_states(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        let inner = || -> candle_core::Result<Vec<Tensor>> {
            let (ids, b, t) = self.ids_tensor(batch)?;
            let mut h = self.embed_ids(&ids, b, t)?.detach();
            let per_layer = self.per_layer_inputs(&ids, &h)?.map(|p| p.detach());
            let rot = self.rope_tables(0, t)?;
            let mask = self.mask(&batch.lengths, t)?;
            let mut states = vec![h.to_dtype(DType::F32)?];
            let mut kv = KvShare::new(self.blocks.len());
            for (i, block) in self.blocks.iter().enumerate() {
                let side = self.side(per_layer.as_ref(), i, &mut kv)?;
                h = self.block(block, &h, &rot, &mask, None, side)?.detach();
                kv.detach();
                states.push(h.to_dtype(DType::F32)?);
            }
            Ok(states)
        };
        inner().map_err(crate::error::candle("hidden states"))
    }

    fn forward_inner(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        self.head(&self.forward_hidden(batch)?)
    }

    /// The last layer's output (before the final norm).
    fn forward_hidden(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let (ids, b, t) = self.ids_tensor(batch)?;
        let mut h = self.embed_ids(&ids, b, t)?;
        let per_layer = self.per_layer_inputs(&ids, &h)?;
        let rot = self.rope_tables(0, t)?;
        let mask = self.mask(&batch.lengths, t)?;
        let mut kv = KvShare::new(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let side = self.side(per_layer.as_ref(), i, &mut kv)?;
            h = self.block(block, &h, &rot, &mask, None, side)?;
        }
        Ok(h)
    }

    /// The per-layer inputs (batch, seq, layers, width) of `ids` whose embeddings are `embeds`, where the model
    /// has per-layer embeddings (per_layer.rs).
    fn per_layer_inputs(&self, ids: &Tensor, embeds: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.per_layer
            .as_ref()
            .map(|p| p.inputs(ids, embeds, self.config.rms_norm_eps))
            .transpose()
    }

    /// What layer `i` reads beside its input: its slice of `per_layer` and the shared keys and values.
    fn side<'a>(&self, per_layer: Option<&Tensor>, i: usize, kv: &'a mut KvShare) -> candle_core::Result<Side<'a>> {
        let per_layer = per_layer.map(|p| crate::per_layer::slice(p, i)).transpose()?;
        Ok(Side { per_layer, kv })
    }

    /// The mean cross-entropy of the next-token predictions against `labels` (-100 = ignored) and the number of
    /// tokens counted: the forward pass and the loss, with the head fused into the loss where [`Self::head_loss`]
    /// can.
    ///
    /// A config asking for the router's load-balancing loss (`output_router_logits`) gets it added to the mean,
    /// times `router_aux_loss_coef`, as transformers adds it.
    pub fn loss(&self, batch: &Batch, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
        let Some(weight) = self.config.router_aux_loss else {
            let h = self
                .forward_hidden(batch)
                .map_err(crate::error::candle("forward pass"))?;
            return self.head_loss(&h, labels).map_err(crate::error::candle("loss"));
        };
        let stats = RouterStats::new(&real_tokens(batch), &self.device).map_err(crate::error::candle("router loss"))?;
        let (h, stats) = self.routed(Some(stats), || self.forward_hidden(batch));
        let h = h.map_err(crate::error::candle("forward pass"))?;
        let (mean, n) = self.head_loss(&h, labels).map_err(crate::error::candle("loss"))?;
        let balance = stats
            .map(|s| s.loss())
            .transpose()
            .map_err(crate::error::candle("router loss"))?;
        match balance.flatten() {
            Some(b) => {
                let total = (b * weight).and_then(|b| mean + b);
                Ok((total.map_err(crate::error::candle("router loss"))?, n))
            }
            None => Ok((mean, n)),
        }
    }

    /// The head and the loss from the last layer's output. A dense f32 lm_head (frozen or trainable) on the fused
    /// CPU path, with no bias, is multiplied together with the loss (and the final softcap) a block of rows at a time
    /// (`fused::head_cross_entropy`), so neither the logits nor their gradient is ever held whole; any other head
    /// makes the logits and then the loss, a final softcap inside the loss node (`causal_lm_softcapped_loss`).
    fn head_loss(&self, h: &Tensor, labels: &[Vec<i64>]) -> candle_core::Result<(Tensor, usize)> {
        let c = &self.config;
        if let (LinearWeight::Frozen(w) | LinearWeight::Trainable(w), None) = (&self.lm_head.weight, &self.lm_head.bias)
        {
            if fused::applies(h) && w.dtype() == DType::F32 {
                let normed = self.rms(h, &self.norm)?;
                let logits = fused::Logits {
                    scale: (1.0 / c.logits_scaling) as f32,
                    softcap: c.final_softcap.map(|cap| cap as f32),
                };
                return crate::loss::causal_lm_head_loss(&normed, w, logits, labels);
            }
        }
        match c.final_softcap {
            Some(cap) => crate::loss::causal_lm_softcapped_loss(&self.uncapped_head(h)?, labels, cap),
            None => crate::loss::causal_lm_loss(&self.head(h)?, labels),
        }
    }

    /// One decoder layer, as its [`LayerSpec`] describes it. `rot` holds each rope's cos/sin tables. With
    /// `cache`, the keys and values of earlier positions are prepended (and the new ones appended to the cache)
    /// for generation.
    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        rot: &[(Tensor, Tensor)],
        mask: &AttnMask,
        cache: Option<&mut LayerCache>,
        side: Side<'_>,
    ) -> candle_core::Result<Tensor> {
        let Side { per_layer, kv } = side;
        let x = match &blk.mixer {
            MixerWeights::ShortConv(conv) => {
                let y = self.sublayer(x, &blk.attn_norms, |h| self.short_conv(conv, h, cache))?;
                self.residual(x, &y)?
            }
            MixerWeights::DeltaNet(net) => {
                let y = self.sublayer(x, &blk.attn_norms, |h| self.delta_net(net, h, cache))?;
                self.residual(x, &y)?
            }
            MixerWeights::Mamba(m) => {
                let y = self.sublayer(x, &blk.attn_norms, |h| self.mamba(m, h, cache))?;
                self.residual(x, &y)?
            }
            MixerWeights::Attention(w) => match self.fused_attention(blk, w, x, rot, mask, cache.is_some()) {
                Some(block) => block?,
                None => {
                    let attend = |h: &Tensor| self.attention(blk, w, h, rot, mask, (cache, kv));
                    let attn = self.sublayer(x, &blk.attn_norms, attend)?;
                    self.residual(x, &attn)?
                }
            },
        };
        let out = match self.fused_mlp_weights(blk, &x) {
            Some(weights) => fused::mlp_block(&x, &weights)?,
            None => {
                let mlp = self.sublayer(&x, &blk.mlp_norms, |h| self.mlp(blk, &x, h))?;
                self.residual(&x, &mlp)?
            }
        };
        let out = match (&blk.per_layer, per_layer) {
            (Some(branch), Some(input)) => {
                let act = |t: &Tensor| self.activation(blk, t);
                branch.apply(&out, &input, act, self.config.rms_norm_eps)?
            }
            (None, None) => out,
            _ => candle_core::bail!("layer {}: its per-layer input and its branch do not match", blk.index),
        };
        match &blk.scalar {
            Some(s) => out.broadcast_mul(&s.to_dtype(out.dtype())?),
            None => Ok(out),
        }
    }

    /// The attention half as one op (`fused::attention_block`), where it serves: f32 on the CPU in training (a
    /// dense mask and no cache), a pre-norm (and Gemma's post-norm, where the layer has one), q/k norms or none, a
    /// whole-head rope or none, no softcap and no per-position query factor, dense weights without biases. None:
    /// the separate ops serve.
    fn fused_attention(
        &self,
        blk: &Block,
        w: &AttentionWeights,
        x: &Tensor,
        rot: &[(Tensor, Tensor)],
        mask: &AttnMask,
        cached: bool,
    ) -> Option<candle_core::Result<Tensor>> {
        let c = &self.config;
        let spec = &blk.spec;
        let t = x.dim(1).ok()?;
        let query_factors = c
            .position_query_scale
            .is_some_and(|s| (0..t).any(|p| s.factor(p) != 1.0));
        let rotation = match spec.rope {
            Some(r) if c.ropes[r].rotary_dim(spec.head_dim) != spec.head_dim => return None,
            Some(r) => Some((&rot[r].0, &rot[r].1)),
            None => None,
        };
        let plain = !spec.rope_interleaved
            && spec.softcap.is_none()
            && !spec.sinks
            && !spec.output_gate
            && !spec.value_norm
            && spec.kv_source.is_none()
            && !blk.stores_kv
            && !query_factors
            && !cached;
        if !fused::applies(x) || !plain {
            return None;
        }
        // Gemma's post-norm on o's output, where the layer has one.
        let post_norm = fused_norm(blk.attn_norms.post.as_ref())?;
        let dense_mask = match spec.window {
            Some(w) if w < t => mask.dense_windowed.as_ref(),
            _ => mask.dense.as_ref(),
        }?;
        let norm = blk.attn_norms.pre.clone().filter(|n| n.dtype() == DType::F32)?;
        // The q and k norms, where the layer has them: both.
        let head_norm = |n: &Option<Tensor>| match spec.qk_norm {
            QkNorm::None => Some(None),
            _ => fused_norm(Some(n.as_ref()?)),
        };
        let (q_norm, k_norm) = (head_norm(&w.q_norm)?, head_norm(&w.k_norm)?);
        let qkv = match &w.qkv {
            Qkv::Separate { q, k, v } => fused::QkvWeights::Separate(dense(q)?, dense(k)?, dense(v.as_ref()?)?),
            Qkv::Fused(qkv) => fused::QkvWeights::Fused(dense(qkv)?),
            Qkv::Latent(_) | Qkv::Queries(_) => return None,
        };
        let weights = fused::AttnWeights {
            norm,
            qkv,
            o: dense(&w.o)?,
            norm_offset: c.norm_offset as f32,
            eps: c.rms_norm_eps as f32,
            residual_scale: c.residual_multiplier as f32,
            q_norm,
            k_norm,
            post_norm,
        };
        let heads = fused::AttnHeads {
            heads: c.num_heads,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
            scale: spec.scale as f32,
        };
        Some(fused::attention_block(x, &weights, heads, rotation, dense_mask))
    }

    /// The MLP half's weights for the one-op fused block (`fused::mlp_block`), where it serves: f32 on the CPU, a
    /// pre-norm (and Gemma's post-norm, where the layer has one), SwiGLU or GELU-tanh, dense weights without
    /// biases, no experts beside.
    fn fused_mlp_weights(&self, blk: &Block, x: &Tensor) -> Option<fused::MlpWeights> {
        let activation = match blk.spec.activation {
            Activation::Silu => fused::GluActivation::Silu,
            Activation::GeluTanh => fused::GluActivation::GeluTanh,
            Activation::Gelu => return None,
        };
        let f32_norm = |n: &Tensor| n.dtype() == DType::F32;
        let post_norm = fused_norm(blk.mlp_norms.post.as_ref())?;
        let fits = fused::applies(x) && blk.beside.is_none();
        let norm = blk.mlp_norms.pre.clone().filter(|n| fits && f32_norm(n))?;
        let Ffn::Dense { gate_up, down } = &blk.ffn else {
            return None;
        };
        let gate_up = match gate_up {
            GateUp::Separate { gate, up } => fused::GateUpWeights::Separate(dense(gate)?, dense(up)?),
            GateUp::Fused(gate_up) => fused::GateUpWeights::Fused(dense(gate_up)?),
        };
        let c = &self.config;
        Some(fused::MlpWeights {
            norm,
            gate_up,
            down: dense(down)?,
            norm_offset: c.norm_offset as f32,
            eps: c.rms_norm_eps as f32,
            residual_scale: c.residual_multiplier as f32,
            activation,
            post_norm,
        })
    }

    /// `post_norm(f(pre_norm(x)))`, each norm where the layer has it.
    fn sublayer(
        &self,
        x: &Tensor,
        norms: &Norms,
        f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let y = match &norms.pre {
            Some(w) => f(&self.rms(x, w)?)?,
            None => f(x)?,
        };
        match &norms.post {
            Some(w) => self.rms(&y, w),
            None => Ok(y),
        }
    }

    /// `x + y · residual_multiplier`.
    fn residual(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        match self.config.residual_multiplier {
            1.0 => x + y,
            m => x + (y * m)?,
        }
    }

    fn attention(
        &self,
        blk: &Block,
        w: &AttentionWeights,
        h: &Tensor,
        rot: &[(Tensor, Tensor)],
        mask: &AttnMask,
        (cache, kv): (Option<&mut LayerCache>, &mut KvShare),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let spec = &blk.spec;
        let (b, t, _) = h.dims3()?;
        let (hd, nh, nkv) = (spec.head_dim, c.num_heads, spec.kv_heads);
        let (mut q, mut k, v) = match &w.qkv {
            Qkv::Queries(q) => return self.shared_attention(blk, w, &q.forward(h)?, rot, mask, kv),
            Qkv::Latent(latent) => {
                let (q, k, v) = latent.project(h, spec.rope.map(|r| &rot[r]))?;
                let (k, v) = with_cache(cache, k, v)?;
                kv.offer(blk, &k, &v);
                let attn = self.attend(&q, k, v, mask, spec, None)?;
                return w.o.forward(&latent.unpad(&attn)?);
            }
            Qkv::Separate { q, k, v } => {
                let keys = k.forward(h)?;
                // Gemma 4's full layers: the values are the key projection, before the key norm and rotation.
                let values = match v {
                    Some(v) => v.forward(h)?,
                    None => keys.clone(),
                };
                (q.forward(h)?, keys, values)
            }
            Qkv::Fused(qkv) => {
                let y = qkv.forward(h)?;
                (
                    y.narrow(2, 0, nh * hd)?,
                    y.narrow(2, nh * hd, nkv * hd)?,
                    y.narrow(2, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        // Qwen3.5's q_proj gives each head its queries, then its output gate.
        let gate = match spec.output_gate {
            true => {
                let both = q.reshape((b, t, nh, 2 * hd))?;
                q = both.narrow(3, 0, hd)?.contiguous()?.reshape((b, t, nh * hd))?;
                Some(both.narrow(3, hd, hd)?.contiguous()?.reshape((b, t, nh * hd))?)
            }
            false => None,
        };
        let norm = |x: &Tensor, w: &Option<Tensor>| match w {
            Some(w) => rms_norm_offset(x, w, c.norm_offset, c.rms_norm_eps),
            None => Ok(x.clone()),
        };
        if spec.qk_norm == QkNorm::Whole {
            q = norm(&q, &w.q_norm)?;
            k = norm(&k, &w.k_norm)?;
        }
        if spec.qk_norm == QkNorm::PerHead {
            q = norm(&q.reshape((b, t, nh, hd))?, &w.q_norm)?;
            k = norm(&k.reshape((b, t, nkv, hd))?, &w.k_norm)?;
        }
        let rotation = spec.rope.map(|r| (&rot[r], c.ropes[r].rotary_dim(hd)));
        if spec.rope_interleaved && rotation.is_some() {
            q = evens_then_odds(&q, hd)?;
            k = evens_then_odds(&k, hd)?;
        }
        let q = rotate_heads(&q, nh, rotation)?;
        let q = match c.position_query_scale {
            Some(s) => scale_queries(&q, s, mask.q_offset)?,
            None => q,
        };
        let k = rotate_heads(&k, nkv, rotation)?;
        let v = match &w.v_norm {
            Some(ones) => rms_norm_offset(&v.reshape((b, t, nkv, hd))?, ones, 0.0, c.rms_norm_eps)?,
            None => v,
        };
        let v = rotate_heads(&v, nkv, None)?;
        let (k, v) = with_cache(cache, k, v)?;
        kv.offer(blk, &k, &v);
        let attn = self.attend(&q, k, v, mask, spec, w.sinks.as_ref())?;
        let attn = match gate {
            Some(gate) => (attn * sigmoid(&gate)?)?,
            None => attn,
        };
        w.o.forward(&attn)
    }

    /// A layer that attends over an earlier layer's keys and values (Gemma 4's shared layers): its projected
    /// queries `q` (batch, seq, heads · head_dim) normalised per head and rotated as the layer says, over the keys
    /// and values `kv` holds from its source layer (rotated, normalised, and with a generation's earlier positions).
    fn shared_attention(
        &self,
        blk: &Block,
        w: &AttentionWeights,
        q: &Tensor,
        rot: &[(Tensor, Tensor)],
        mask: &AttnMask,
        kv: &KvShare,
    ) -> candle_core::Result<Tensor> {
        let (c, spec) = (&self.config, &blk.spec);
        let (b, t, _) = q.dims3()?;
        let (hd, nh) = (spec.head_dim, c.num_heads);
        let q = match &w.q_norm {
            Some(norm) => rms_norm_offset(&q.reshape((b, t, nh, hd))?, norm, c.norm_offset, c.rms_norm_eps)?,
            None => q.clone(),
        };
        let rotation = spec.rope.map(|r| (&rot[r], c.ropes[r].rotary_dim(hd)));
        let q = rotate_heads(&q, nh, rotation)?;
        let q = match c.position_query_scale {
            Some(s) => scale_queries(&q, s, mask.q_offset)?,
            None => q,
        };
        let source = spec.kv_source.unwrap_or(blk.index);
        let Some((k, v)) = kv.get(source) else {
            candle_core::bail!(
                "layer {} reads layer {source}'s keys and values, which it has not made",
                blk.index
            )
        };
        let attn = self.attend(&q, k.clone(), v.clone(), mask, spec, w.sinks.as_ref())?;
        w.o.forward(&attn)
    }

    /// LFM2's gated short convolution over h (batch, seq, hidden): `out_proj(C · conv(B · x))`, with B, C and x
    /// from `in_proj`. With `cache`, the convolution reads the earlier positions from it and keeps the latest.
    fn short_conv(&self, c: &ShortConv, h: &Tensor, cache: Option<&mut LayerCache>) -> candle_core::Result<Tensor> {
        let hs = self.config.hidden_size;
        let bcx = c.in_proj.forward(h)?;
        let bx = (bcx.narrow(2, 0, hs)? * bcx.narrow(2, 2 * hs, hs)?)?;
        let y = causal_conv(&bx, &c.weight, c.bias.as_ref(), c.kernel, cache.map(|c| &mut c.conv))?;
        c.out_proj.forward(&(bcx.narrow(2, hs, hs)? * y)?)
    }

    /// Qwen3.5's Gated DeltaNet over h (batch, seq, hidden): q, k, v through the causal convolution and SiLU; q and
    /// k L2-normalised (q also by 1/sqrt(key dim)) and shared by groups of value heads; the gated delta rule with
    /// β = σ(b) and decay g = −exp(A_log)·softplus(a + dt_bias), in f32; the output RMS-normalised per value head,
    /// times its weight and SiLU(z); `out_proj`. With `cache`, the convolution's inputs and the rule's state carry
    /// over between calls.
    fn delta_net(&self, d: &DeltaNet, h: &Tensor, cache: Option<&mut LayerCache>) -> candle_core::Result<Tensor> {
        let s = d.shape;
        let (b, t, _) = h.dims3()?;
        let values = s.value_heads * s.value_dim;
        let f32 = DType::F32;
        let inputs = d.inputs.project(h, s)?;
        let projected = inputs.qkv;
        let beta = sigmoid(&inputs.b.to_dtype(f32)?)?;
        let a = inputs.a.to_dtype(f32)?.broadcast_add(&d.dt_bias.to_dtype(f32)?)?;
        let rate = d.a_log.to_dtype(f32)?.exp()?;
        let g = softplus(&a)?.broadcast_mul(&rate)?.neg()?;
        let out = match cache {
            // A training or probing pass on the CPU in f32: the convolution, norms and packing as one op, the
            // rule as another.
            None if crate::fused::applies(&projected) => {
                let gb = Tensor::stack(&[&g, &beta], 3)?;
                let packed = crate::fused::delta_net_inputs(&projected, &d.conv.to_dtype(f32)?, &gb, s)?;
                crate::fused::gated_delta_rule_packed(&packed, s.key_dim)?
            }
            // bf16 or f16 on the CPU: composite inputs, the rule itself fused, in f32.
            None if crate::fused::applies(&g) => {
                let (q, k, v) = crate::delta_net::qkv(&projected, &d.conv, s, None)?;
                crate::fused::gated_delta_rule(&q, &k, &v, &g, &beta)?
            }
            // Any other device (or `FREEZETUNE_FUSED=0`): recomputed in the backward pass, layer by layer.
            None if t >= crate::delta_rule::STEPWISE_BELOW => {
                crate::delta_net::recomputed(&projected, &d.conv, &Tensor::stack(&[&g, &beta], 3)?, s)?
            }
            // A generation's steps (the convolution's inputs and the rule's state carried in the cache), and
            // short inputs, which take the rule one position at a time.
            cache => {
                let (conv_state, rule_state) = match cache {
                    Some(c) => (Some(&mut c.conv), Some(&mut c.delta)),
                    None => (None, None),
                };
                let (q, k, v) = crate::delta_net::qkv(&projected, &d.conv, s, conv_state)?;
                let inputs = crate::delta_rule::RuleInputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    g: &g,
                    beta: &beta,
                };
                let start = rule_state.as_ref().and_then(|slot| slot.as_ref());
                let (out, state) = crate::delta_rule::gated_delta_rule(inputs, start)?;
                if let Some(slot) = rule_state {
                    *slot = Some(state.detach());
                }
                out
            }
        };
        let z = inputs.z.reshape((b, t, s.value_heads, s.value_dim))?;
        let normed = rms_norm_offset(&out.to_dtype(h.dtype())?, &d.norm, 0.0, self.config.rms_norm_eps)?;
        let gated = (normed * z.silu()?)?.reshape((b, t, values))?;
        d.out_proj.forward(&gated)
    }

    /// Granite 4.0-H's Mamba 2 over h (batch, seq, hidden), as mamba.rs describes it. With `cache`, the
    /// convolution's inputs and the scan's state carry over between calls.
    fn mamba(&self, m: &Mamba, h: &Tensor, cache: Option<&mut LayerCache>) -> candle_core::Result<Tensor> {
        let params = crate::mamba::MambaParams {
            conv_weight: &m.conv,
            conv_bias: m.conv_bias.as_ref(),
            dt_bias: &m.dt_bias,
            a_log: &m.a_log,
            d: &m.d,
            norm: &m.norm,
        };
        let cache = cache.map(|c| crate::mamba::MambaCache {
            conv: &mut c.conv,
            ssm: &mut c.delta,
        });
        let eps = self.config.rms_norm_eps;
        let mixed = crate::mamba::mix(&m.in_proj.forward(h)?, &params, m.shape, eps, cache)?;
        m.out_proj.forward(&mixed)
    }

    /// The layer's activation alone (Gemma 4's per-layer gate).
    fn activation(&self, blk: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
        match blk.spec.activation {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => crate::ops::gelu_tanh(x),
            Activation::Gelu => x.gelu_erf(),
        }
    }

    /// The MLP of `h` (the sublayer's normed input); `residual` is the sublayer's input, which Gemma 4's router
    /// reads: `dense_post(mlp(h)) + experts_post(experts(experts_pre(residual)))` where experts sit beside.
    fn mlp(&self, blk: &Block, residual: &Tensor, h: &Tensor) -> candle_core::Result<Tensor> {
        let product = |gate: &Tensor, up: &Tensor| match blk.spec.activation {
            Activation::Silu => swiglu(gate, up),
            Activation::GeluTanh => crate::ops::geglu_tanh(gate, up),
            Activation::Gelu => gate.gelu_erf()? * up,
        };
        let routed = |experts: &Experts, router_in: &Tensor, x: &Tensor| {
            let mut stats = self.router_stats.lock().unwrap_or_else(PoisonError::into_inner);
            experts.forward(router_in, x, product, stats.as_mut())
        };
        let (gate_up, down) = match &blk.ffn {
            Ffn::Experts(experts) => return routed(experts, h, h),
            Ffn::Dense { gate_up, down } => (gate_up, down),
        };
        let (gate, up) = match gate_up {
            GateUp::Separate { gate, up } => (gate.forward(h)?, up.forward(h)?),
            GateUp::Fused(gate_up) => {
                let y = gate_up.forward(h)?;
                let i = blk.spec.intermediate_size;
                (y.narrow(2, 0, i)?, y.narrow(2, i, i)?)
            }
        };
        let dense = down.forward(&product(&gate, &up)?)?;
        let Some(b) = &blk.beside else {
            return Ok(dense);
        };
        let sparse = routed(&b.experts, residual, &self.rms(residual, &b.experts_pre)?)?;
        self.rms(&dense, &b.dense_post)? + self.rms(&sparse, &b.experts_post)?
    }
}

/// What every layer of a checkpointed backward pass reads: the rope tables and masking, the per-layer inputs
/// (and whether their gradient is wanted), the shared keys and values the forward pass left (detached), the
/// lowest recomputed layer, the router's loss factor and experts' weights, and which tokens are real.
struct Downward<'a> {
    rot: &'a [(Tensor, Tensor)],
    mask: &'a AttnMask,
    per_layer: Option<&'a Tensor>,
    per_layer_grads: bool,
    kv: &'a KvShare,
    stop: usize,
    balance: Option<(f64, &'a Tensor)>,
    real: &'a [bool],
}

/// What one recomputed layer hands down: its input's gradient, its source layer's keys' and values' gradient (a
/// shared layer), and its per-layer input's gradient.
struct LayerGrads {
    input: Option<Tensor>,
    source: Option<(usize, (Tensor, Tensor))>,
    per_layer_input: Option<Tensor>,
}

/// Two gradients of a layer's keys and values added (a source reused by several layers gets each one's).
fn add_grads(sum: Option<(Tensor, Tensor)>, (k, v): (Tensor, Tensor)) -> candle_core::Result<(Tensor, Tensor)> {
    match sum {
        Some((sk, sv)) => Ok(((sk + k)?, (sv + v)?)),
        None => Ok((k, v)),
    }
}

/// Per token of the flattened (batch, longest row) batch, whether it is a real token rather than padding.
fn real_tokens(batch: &Batch) -> Vec<bool> {
    let t = batch.input_ids.iter().map(Vec::len).max().unwrap_or(0);
    batch
        .lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |p| p < len))
        .collect()
}

/// A norm for the fused blocks, where the layer may have one: `Some(None)` without it, `Some(Some(weight))` in
/// f32, None (the separate ops serve) in any other dtype.
fn fused_norm(n: Option<&Tensor>) -> Option<Option<Tensor>> {
    match n {
        Some(n) if n.dtype() == DType::F32 => Some(Some(n.clone())),
        Some(_) => None,
        None => Some(None),
    }
}

/// A linear's weight where it is dense f32 without a bias: what the fused block ops take.
fn dense(l: &Linear) -> Option<Tensor> {
    match (&l.weight, &l.bias) {
        (LinearWeight::Trainable(w) | LinearWeight::Frozen(w), None) if w.dtype() == DType::F32 => Some(w.clone()),
        _ => None,
    }
}

/// The keys and values to attend over: with `cache`, the cached ones followed by `k` and `v`, which the cache then
/// holds.
fn with_cache(cache: Option<&mut LayerCache>, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let Some(cache) = cache else {
        return Ok((k, v));
    };
    let (k, v) = match &cache.kv {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        None => (k, v),
    };
    cache.kv = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// Ministral 3's per-position query factor on q (batch, heads, t, head_dim) at positions `start..start + t`; q
/// itself where every factor is 1 (inside the original context, the common case).
fn scale_queries(q: &Tensor, s: PositionQueryScale, start: usize) -> candle_core::Result<Tensor> {
    let t = q.dim(2)?;
    let factors: Vec<f32> = (start..start + t).map(|p| s.factor(p)).collect();
    if factors.iter().all(|&f| f == 1.0) {
        return Ok(q.clone());
    }
    let factors = Tensor::from_vec(factors, (1, 1, t, 1), q.device())?.to_dtype(q.dtype())?;
    q.broadcast_mul(&factors)
}

/// A projection (batch, seq, heads·head_dim), or its heads (batch, seq, heads, head_dim), as (batch, heads, seq,
/// head_dim), contiguous, rotated by `rotation`'s tables on its first `rotary_dim` dimensions (the rest pass
/// through, as partial rotary has it); unrotated for a NoPE layer or the values (None). On the fused CPU path a
/// whole-head rotation (or none) is one op.
fn rotate_heads(x: &Tensor, heads: usize, rotation: Option<(&(Tensor, Tensor), usize)>) -> candle_core::Result<Tensor> {
    let (b, t) = (x.dim(0)?, x.dim(1)?);
    let hd = x.elem_count() / (b * t * heads).max(1);
    let whole = rotation.is_none_or(|(_, dim)| dim == hd);
    if fused::applies(x) && whole {
        return fused::split_heads(x, heads, rotation.map(|((cos, sin), _)| (cos, sin)));
    }
    let x = x.reshape((b, t, heads, hd))?;
    let Some(((cos, sin), dim)) = rotation else {
        return x.transpose(1, 2)?.contiguous();
    };
    if dim == hd {
        return rope_heads(&x, cos, sin);
    }
    let rotated = rope_heads(&x.narrow(3, 0, dim)?.contiguous()?, cos, sin)?;
    let passed = x.narrow(3, dim, hd - dim)?.transpose(1, 2)?;
    Tensor::cat(&[&rotated, &passed], 3)?.contiguous()
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
        layer: &LayerSpec,
        sinks: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let spec = AttentionSpec {
            scale: layer.scale,
            window: layer.window,
            softcap: layer.softcap,
        };
        let dense = match layer.window {
            Some(w) if w < k.dim(2)? => mask.dense_windowed.as_ref(),
            _ => mask.dense.as_ref(),
        };
        if let Some(dense) = dense {
            // The fused kernel has no softcap: such a layer takes the blockwise path.
            if fused::applies(q) && k.dim(2)? == q.dim(2)? && spec.softcap.is_none() {
                let scale = spec.scale as f32;
                return match sinks {
                    None => fused::causal_attention(q, &k, &v, dense, scale),
                    Some(sinks) => fused::causal_attention_with_sinks(q, &k, &v, dense, scale, sinks),
                };
            }
        }
        let positions = Positions {
            q_offset: mask.q_offset,
            lengths: mask.lengths.as_ref(),
        };
        attention(q, &k, &v, spec, &positions, sinks)
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

/// cos and sin of `position × inv_freq` in f32, times the rope's attention factor, row-major (len, 2 × inv_freq.len()): each row's angles twice, as
/// rotate_half pairs them.
fn rope_table_values(inv_freq: &[f32], len: usize, factor: f32) -> (Vec<f32>, Vec<f32>) {
    let width = 2 * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(len * width), Vec::with_capacity(len * width));
    for p in 0..len {
        let angles = inv_freq.iter().map(|&f| p as f32 * f);
        let row: Vec<f32> = angles.collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| a.cos() * factor));
            sin.extend(row.iter().map(|a| a.sin() * factor));
        }
    }
    (cos, sin)
}

/// One layer's state for the positions generated so far: an attention layer's keys and values, a convolution's
/// last `kernel - 1` inputs, a delta rule's state.
#[derive(Default)]
struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
    conv: Option<Tensor>,
    /// The delta rule's state, or Mamba 2's scan state.
    delta: Option<Tensor>,
}

/// A causal depthwise convolution over x (batch, seq, channels) with `weight` (channels, 1, kernel) and an
/// optional bias: output position p reads inputs p − kernel + 1 ..= p, zeros before the first (or, with `state`,
/// the previous call's last inputs, which it then replaces with this call's).
pub(crate) fn causal_conv(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    kernel: usize,
    state: Option<&mut Option<Tensor>>,
) -> candle_core::Result<Tensor> {
    let (b, t, channels) = x.dims3()?;
    let past = match state.as_ref().and_then(|s| s.as_ref()) {
        Some(previous) => previous.clone(),
        None => Tensor::zeros((b, kernel - 1, channels), x.dtype(), x.device())?,
    };
    let padded = Tensor::cat(&[&past, x], 1)?;
    if let Some(slot) = state {
        *slot = Some(padded.narrow(1, t, kernel - 1)?.detach());
    }
    let weight = weight.to_dtype(x.dtype())?.reshape((channels, kernel))?;
    let y = match weight.track_op() {
        true => conv_taps(&padded, &weight, t)?,
        // A frozen weight as an operand of the taps' products would get an activation-sized gradient per tap,
        // kept until the whole backward pass ends: the input's gradient is all a frozen weight needs.
        false => {
            let value = conv_taps(&padded.detach(), &weight, t)?;
            let backward = move |_: &Tensor, _: &Tensor, grad: &Tensor| {
                let mut sum: Option<Tensor> = None;
                for j in 0..kernel {
                    let shifted = grad
                        .broadcast_mul(&weight.narrow(1, j, 1)?.squeeze(1)?)?
                        .pad_with_zeros(1, j, kernel - 1 - j)?;
                    sum = Some(match sum {
                        Some(s) => (s + shifted)?,
                        None => shifted,
                    });
                }
                Ok(sum)
            };
            crate::node::attach1("causal-conv-frozen-weight", &padded, value, Box::new(backward))?
        }
    };
    match bias {
        Some(bias) => y.broadcast_add(&bias.to_dtype(y.dtype())?),
        None => Ok(y),
    }
}

/// `Σ_j padded[:, j..j + t] · weight[:, j]`: the taps of a causal depthwise convolution over `padded` (batch,
/// t + kernel − 1, channels) with `weight` (channels, kernel).
fn conv_taps(padded: &Tensor, weight: &Tensor, t: usize) -> candle_core::Result<Tensor> {
    let tap = |j: usize| weight.narrow(1, j, 1)?.squeeze(1);
    let mut y = padded.narrow(1, 0, t)?.broadcast_mul(&tap(0)?)?;
    for j in 1..weight.dim(1)? {
        y = (y + padded.narrow(1, j, t)?.broadcast_mul(&tap(j)?)?)?;
    }
    Ok(y)
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
            let per_layer = self.per_layer_inputs(&ids_t, &h)?;
            let mut kv = KvShare::new(self.blocks.len());
            let rot = self.rope_tables(start, t)?;
            let total = start + t;
            let mask = AttnMask {
                lengths: None,
                q_offset: start,
                dense: None,
                dense_windowed: None,
            };
            for (i, (block, layer)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
                let side = self.side(per_layer.as_ref(), i, &mut kv)?;
                h = self.block(block, &h, &rot, &mask, Some(layer), side)?;
            }
            cache.len = total;
            self.head(&h.narrow(1, t - 1, 1)?)?
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

/// Every tensor the decoder reads has the shape config.json implies, or the load fails naming it (candle would
/// otherwise fail mid-step with a matmul shape error, or an embedding larger than `vocab_size` would train).
fn check_shapes(c: &DecoderConfig, names: &TensorNames, params: &Params) -> Result<()> {
    for (canonical, want) in c.tensor_shapes() {
        let name = names.actual(&canonical);
        if let Some(got) = params.shape(&name).filter(|got| *got != want) {
            return Err(TrainError::Tensor {
                name,
                reason: format!(
                    "has shape {got:?}, but config.json implies {want:?} (hidden_size {}, vocab_size {}, \
                     intermediate_size {}, {} heads of {} and {} key/value heads): the config does not describe \
                     these weights",
                    c.hidden_size, c.vocab_size, c.intermediate_size, c.num_heads, c.head_dim, c.num_kv_heads
                ),
            });
        }
    }
    Ok(())
}

/// A config that ties lm_head to the embeddings over a checkpoint that stores a different lm_head: transformers
/// then keeps the stored one. `DecoderConfig::read` unties such a config from the folder's bytes, as core's
/// layout does; a config built another way (from JSON alone) is refused here by name rather than trained tied.
fn refuse_stale_tie(c: &DecoderConfig, names: &TensorNames, params: &Params) -> Result<()> {
    let lm_head = format!("{}.weight", names.lm_head);
    if !c.tie_word_embeddings || !params.contains(&lm_head) {
        return Ok(());
    }
    let embed = params.checkpoint_f32(&format!("{}.embed_tokens.weight", names.model))?;
    let head = params.checkpoint_f32(&lm_head)?;
    let differs = (|| -> candle_core::Result<bool> {
        if embed.shape() != head.shape() {
            return Ok(true);
        }
        let diff = (embed - head)?;
        Ok(diff.abs()?.max_all()?.to_scalar::<f32>()? > 0.0)
    })()
    .map_err(crate::error::candle("comparing lm_head with the embeddings"))?;
    if differs {
        return Err(TrainError::Tensor {
            name: lm_head,
            reason: "differs from the embeddings, but config.json sets tie_word_embeddings: transformers would use \
                     the stored lm_head. Set tie_word_embeddings to false (a wrapper's top-level flag) to train it \
                     as it is"
                .into(),
        });
    }
    Ok(())
}

/// Every tensor of the checkpoint must be read by the decoder: one it leaves out (a bias, a norm, a projection of a
/// variant it does not know) would make training other math than the model's, without a word. Two kinds are left
/// out as transformers leaves them: old checkpoints' `rotary_emb.inv_freq` buffers (recomputed from the config) and
/// a tied model's stored `lm_head.weight` (the embeddings serve).
///
/// A vision-language wrapper's vision tower and projector are not the text decoder's: they stay frozen (a plan that
/// trains them is refused here too, as unread) and are written back unchanged.
fn refuse_unread(params: &Params, c: &DecoderConfig, names: &TensorNames) -> Result<()> {
    let lm_head = format!("{}.weight", names.lm_head);
    let frozen_vision = |n: &str| c.wrapper.is_some() && !names.is_text(n) && !params.vars.contains_key(n);
    let dropped = |n: &str| c.dropped_tensors.iter().any(|p| n.starts_with(p));
    let ignored = |n: &str| {
        n.ends_with(".rotary_emb.inv_freq") || (c.tie_word_embeddings && n == lm_head) || frozen_vision(n) || dropped(n)
    };
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
pub(crate) fn rounded_to(value: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(value).to_f64(),
        DType::F16 => half::f16::from_f64(value).to_f64(),
        _ => value as f32 as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::randn;
    use crate::ops::tests::max_abs_diff;
    use candle_core::Var;

    #[test]
    fn a_frozen_convolution_weight_passes_the_same_input_gradient() {
        // The frozen weight's own node must give the input the gradient the differentiable taps give it.
        let (x, w) = (Var::from_tensor(&randn(&[2, 9, 5], 1)).unwrap(), randn(&[5, 1, 4], 2));
        let probe = randn(&[2, 9, 5], 3);
        let grad_of_x = |weight: &Tensor| {
            let y = causal_conv(x.as_tensor(), weight, None, 4, None).unwrap();
            let grads = (y.clone() * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            (y, grads.get(x.as_tensor()).unwrap().clone())
        };
        let trainable = Var::from_tensor(&w).unwrap();
        let (y_frozen, dx_frozen) = grad_of_x(&w);
        let (y, dx) = grad_of_x(trainable.as_tensor());
        assert!(max_abs_diff(&y_frozen, &y) < 1e-6);
        let d = max_abs_diff(&dx_frozen, &dx);
        assert!(d < 1e-5, "input gradients differ by {d}");
    }

    #[test]
    fn real_tokens_mark_each_rows_padding_in_the_flattened_batch() {
        let batch = Batch {
            input_ids: vec![vec![5, 6, 7], vec![8]],
            lengths: vec![3, 1],
        };
        assert_eq!(real_tokens(&batch), [true, true, true, true, false, false]);
    }
}
