//! The LLaMA-Factory bundle: `train.yaml` (LLaMA-Factory 0.9.5's argument names), `data/`, the distributed
//! config, `launch.sh` and `README.md`. Each run setting is either written as its LLaMA-Factory key or listed as
//! unmapped with the reason.

use crate::data::{legacy_spec, train_specs, write_rows};
use crate::hf;
use crate::launch::{launch_script, make_executable, write_distributed};
use crate::readme::readme;
use crate::yaml::Yaml;
use crate::{put, Bundle, BundleOptions, Distributed, Engine, Result};
use freezetune_core::data_spec::Mix;
use freezetune_core::export::{nearest_llamafactory, NearestLlamafactory};
use freezetune_core::layout::ModelLayout;
use freezetune_core::run_config::RunConfig;
use freezetune_core::PlanOptions;
use serde_json::{Map, Value};
use std::path::Path;

pub(crate) fn write(config: &RunConfig, layout: &ModelLayout, dir: &Path, o: &BundleOptions) -> Result<Bundle> {
    let mut files = Vec::new();
    let mut unmapped = Vec::new();
    let mut notes = Vec::new();
    let plan = freezetune_core::plan(layout, &config.freeze, PlanOptions::default())?;
    let nearest = nearest_llamafactory(layout, &config.freeze, &plan)?;
    let freeze = nearest.yaml.clone();
    unmapped.extend(freeze_difference(&nearest));

    let mut info = Map::new();
    let d = &config.data;
    let seed = config.training.seed;
    let train = write_rows(dir, &mut files, &mut info, "train", &train_specs(d), d.mix, seed)?;
    let eval_specs = match (&d.eval, d.eval_datasets.is_empty()) {
        (Some(path), _) => vec![legacy_spec(path, d.format)],
        (None, false) => d.eval_datasets.clone(),
        (None, true) => Vec::new(),
    };
    let eval = match eval_specs.is_empty() {
        true => Vec::new(),
        false => write_rows(dir, &mut files, &mut info, "eval", &eval_specs, Mix::Concat, seed)?,
    };
    let info_text = serde_json::to_string_pretty(&Value::Object(info)).expect("JSON") + "\n";
    put(dir, &mut files, "data/dataset_info.json", &info_text)?;
    let distributed = write_distributed(dir, &mut files, o, hf::accelerate_precision(&config.model.dtype))?;

    let mut y = Yaml::new(&format!(
        "LLaMA-Factory 0.9.5 config written by FreezeTune from {}.\n{} trainable tensors, {} of {} parameters. \
         README.md lists what could not be carried over.",
        config.model.path.display(),
        plan.trainable.len(),
        plan.trainable_params,
        plan.total_params
    ));
    hf::model_keys(
        &mut y,
        &config.model,
        ("model_name_or_path", "model_revision"),
        &mut notes,
    );
    y.section("method");
    y.str("stage", "sft");
    y.bool("do_train", true);
    y.raw(&freeze);
    y.section("dataset");
    let names: Vec<&str> = train.iter().map(|w| w.name.as_str()).collect();
    y.str("dataset", &names.join(","));
    y.str("dataset_dir", "data");
    y.comment("no `template`: LLaMA-Factory parses the model's own chat template, as FreezeTune renders it");
    y.num("cutoff_len", d.cutoff_len);
    y.bool("train_on_prompt", d.train_on_prompt);
    y.bool("overwrite_cache", true);
    if d.mix != Mix::Concat {
        notes.push(format!(
            "the datasets were mixed here ({:?}, seed {seed}) and written as the rows FreezeTune trains on, so \
             LLaMA-Factory reads them as they are (no mix_strategy)",
            d.mix
        ));
    }
    eval_keys(&mut y, config, &eval, &mut notes);
    training_keys(&mut y, config, o, &mut notes, &mut unmapped);
    if let Some(file) = &distributed {
        if o.distributed != Distributed::Fsdp {
            y.str("deepspeed", file);
        }
    }
    y.section("output");
    y.str("output_dir", "output");
    y.num("logging_steps", 1);
    match config.training.save_steps {
        0 => y.str("save_strategy", "no"),
        n => y.num("save_steps", n),
    }
    y.bool("plot_loss", true);
    y.bool("overwrite_output_dir", true);
    y.bool("save_only_model", false);
    y.str("report_to", "none");
    put(dir, &mut files, "train.yaml", &y.finish())?;

    let script = launch_script(o);
    put(dir, &mut files, "launch.sh", &script)?;
    make_executable(&dir.join("launch.sh"))?;
    let train_rows = train.iter().map(|w| w.rows).sum();
    let lines = [
        "`train.yaml` has LLaMA-Factory's freeze keys for the plan, checked against LLaMA-Factory's rules (exact \
         unless \"Not carried over\" below says otherwise)."
            .to_string(),
        format!(
            "{train_rows} training rows in `data/`, exactly the rows FreezeTune trains on (mapped, limited, mixed), \
             registered in `data/dataset_info.json`."
        ),
        "Install LLaMA-Factory first: `pip install llamafactory==0.9.5`.".to_string(),
    ];
    let readme = readme(Engine::Llamafactory, config, &plan, o, &lines, &unmapped, &notes);
    put(dir, &mut files, "README.md", &readme)?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        files,
        unmapped,
        notes,
        train_rows,
    })
}

/// The difference between the plan and the nearest LLaMA-Factory freeze keys, when they are not exact.
fn freeze_difference(nearest: &NearestLlamafactory) -> Option<String> {
    if nearest.also_trained.is_empty() && nearest.left_frozen.is_empty() {
        return None;
    }
    let list = |names: &[String]| {
        let shown: Vec<&str> = names.iter().take(6).map(String::as_str).collect();
        let more = names.len().saturating_sub(shown.len());
        match more {
            0 => shown.join(", "),
            n => format!("{} and {n} more", shown.join(", ")),
        }
    };
    let mut differences = Vec::new();
    if !nearest.also_trained.is_empty() {
        differences.push(format!(
            "also trains {} tensor(s) ({})",
            nearest.also_trained.len(),
            list(&nearest.also_trained)
        ));
    }
    if !nearest.left_frozen.is_empty() {
        differences.push(format!(
            "leaves {} of the plan's tensors frozen ({})",
            nearest.left_frozen.len(),
            list(&nearest.left_frozen)
        ));
    }
    Some(format!(
        "the exact freeze plan: LLaMA-Factory's freeze keys cannot express it, so train.yaml has the nearest \
         form, which {}; Axolotl's patterns are exact (`freezetune export-run --to axolotl`)",
        differences.join(" and ")
    ))
}

fn eval_keys(y: &mut Yaml, config: &RunConfig, eval: &[crate::data::Written], notes: &mut Vec<String>) {
    let d = &config.data;
    let t = &config.training;
    if !eval.is_empty() {
        let names: Vec<&str> = eval.iter().map(|w| w.name.as_str()).collect();
        y.str("eval_dataset", &names.join(","));
    } else if d.eval_split > 0.0 {
        y.float("val_size", d.eval_split);
        notes.push(format!(
            "eval_split {} becomes val_size: the same fraction is held out, but LLaMA-Factory draws other rows",
            d.eval_split
        ));
    } else {
        return;
    }
    y.num("per_device_eval_batch_size", t.batch_size);
    match t.eval_steps {
        0 => y.str("eval_strategy", "no"),
        n => {
            y.str("eval_strategy", "steps");
            y.num("eval_steps", n);
        }
    }
    if t.eval_steps == 0 {
        notes.push(
            "eval_steps = 0 (FreezeTune evaluates at the end): LLaMA-Factory evaluates only when asked; run \
             `llamafactory-cli train train.yaml do_eval=true` or set eval_steps"
                .into(),
        );
    }
}

fn training_keys(y: &mut Yaml, c: &RunConfig, o: &BundleOptions, notes: &mut Vec<String>, unmapped: &mut Vec<String>) {
    let t = &c.training;
    y.section("train");
    let names = hf::Names {
        batch: "per_device_train_batch_size",
        epochs: "num_train_epochs",
        scheduler: "lr_scheduler_type",
        optimizer: "optim",
    };
    hf::optimization(y, t, o, &names, notes);
    match c.model.dtype.as_str() {
        "bf16" => y.bool("bf16", true),
        "f16" => y.bool("fp16", true),
        "f32" => y.comment("f32: no mixed precision"),
        _ => {
            y.bool("bf16", true);
            notes.push(
                "dtype auto becomes bf16 (what auto picks on a GPU with bf16); use fp16=true on older GPUs".into(),
            );
        }
    }
    y.bool("disable_gradient_checkpointing", !t.gradient_checkpointing);
    y.num("ddp_timeout", 180000000);
    if !t.shuffle {
        unmapped.push("[training] shuffle = false: Hugging Face's Trainer always shuffles the training rows".into());
    } else {
        notes.push(format!(
            "the rows are shuffled with seed {} by Hugging Face's Trainer, in another order than FreezeTune's",
            t.seed
        ));
    }
    hf::unmapped_everywhere(Engine::Llamafactory, c, unmapped);
    notes.push(format!(
        "examples longer than cutoff_len ({}) are cut differently: FreezeTune keeps the first tokens, LLaMA-Factory \
         shortens prompt and response in proportion",
        c.data.cutoff_len
    ));
}
