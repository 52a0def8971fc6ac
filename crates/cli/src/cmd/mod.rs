pub mod demo;
pub mod export_config;
pub mod inspect;
pub mod plan;
pub mod preset;
