//! `freezetune-train`: freeze-aware fine-tuning on candle. FreezeTune's own decoder (Hugging Face weight names,
//! differentiable ops only), trainable tensors as f32 `Var`s and frozen ones as constants, optimizers.

pub mod adafactor;
pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod data;
pub(crate) mod delta_net;
mod delta_projections;
pub mod delta_rule;
pub mod device;
pub mod error;
pub mod experts;
pub mod export;
pub mod family;
pub mod fastmath;
pub mod fp8;
pub mod fused;
pub mod generate;
pub mod gguf_blocks;
pub mod inventory;
pub mod latent;
pub mod linear;
pub mod loss;
pub mod model;
mod moe;
pub mod mxfp4;
pub mod node;
pub mod ops;
pub mod optim;
pub mod optim8;
pub mod optim_state;
pub mod params;
pub mod probe;
pub mod quant;
pub mod remote;
pub mod rope;
pub mod schedule;
pub mod template;
pub mod trainer;
pub mod weights;

pub use config::{Architecture, DecoderConfig, LayerSpec};
pub use error::{Result, TrainError};
pub use model::{Batch, Decoder, KvCache};
pub use params::Params;
pub use trainer::{train, TrainOutcome};
