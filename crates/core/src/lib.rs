//! `freezetune-core`: the pure part of FreezeTune. Model layout from config.json and safetensors headers,
//! `FreezeSpec` -> `FreezePlan` (native and LLaMA-Factory-exact), LLaMA-Factory / Axolotl export, presets, errors.
//! No candle, no tauri, no network.

pub mod config;
pub mod data_spec;
pub mod demo;
pub mod error;
pub mod events;
pub mod export;
pub mod files;
pub mod fit;
pub mod fp8;
pub mod fsutil;
pub mod gguf_map;
pub mod ids;
pub mod kquant;
pub mod layout;
pub mod llamafactory;
pub mod memory;
pub mod mxfp4;
mod native;
pub mod plan;
pub mod preset;
pub mod quant;
pub mod run_config;
pub mod runtime_names;
pub mod safetensors;
pub mod schedule;
pub mod spec;
pub mod synth;
#[cfg(test)]
mod testutil;
pub mod tie;

pub use error::{Error, Result};
pub use layout::{ModelLayout, RemoteShard};
pub use plan::{plan, FreezeMode, FreezePlan, PlanOptions, TrainState, Warning};
pub use spec::{FreezeSpec, LlamaFactoryArgs, Selection};
