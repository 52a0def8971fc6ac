pub mod demo;
pub mod download;
pub mod export_config;
pub mod inspect;
pub mod models;
pub mod plan;
pub mod preset;
pub mod token;
