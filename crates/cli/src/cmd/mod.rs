pub mod data;
pub mod demo;
pub mod devices;
pub mod download;
pub mod export_config;
pub mod export_run;
pub mod generate;
pub mod gguf;
pub mod inspect;
pub mod models;
pub mod plan;
pub mod preset;
pub mod probe;
pub mod search;
pub mod token;
pub mod train;

/// A model given as a GGUF file becomes its mapped folder (written once into FreezeTune's cache: config, tokenizer
/// and a map of the file's tensors, nothing converted); a folder stays as it is.
pub fn model_folder(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    if !freezetune_gguf::is_gguf_file(path) {
        return Ok(path.to_path_buf());
    }
    let maps = freezetune_gguf::view::default_maps_dir();
    freezetune_gguf::mapped_folder(path, &maps).map_err(|e| anyhow::anyhow!(e))
}
