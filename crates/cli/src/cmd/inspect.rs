use crate::render;
use anyhow::Result;
use clap::Args;
use freezetune_core::ModelLayout;
use freezetune_train::DecoderConfig;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// A Hugging Face checkpoint folder (config.json + safetensors).
    pub model_dir: PathBuf,
    /// Print the layout as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let model_dir = super::model_folder(&args.model_dir)?;
    let layout = ModelLayout::inspect(&model_dir)?;
    // Whether FreezeTune's decoder can train this model, and each layer's attention kind if so: a user learns
    // before planning that a config is refused, and which layers slide.
    let decoder = DecoderConfig::read(&model_dir);
    if args.json {
        let mut value = serde_json::to_value(&layout)?;
        value["training"] = match &decoder {
            Ok(c) => json!({"supported": true,
                "layer_kinds": c.layers.iter().map(|l| l.kind()).collect::<Vec<_>>()}),
            Err(e) => json!({"supported": false, "reason": e.to_string()}),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let kinds = decoder
            .as_ref()
            .map(|c| c.layers.iter().map(|l| l.kind()).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        print!("{}", render::layout_table(&layout, kinds));
    }
    Ok(())
}
