//! The Axolotl bundle: `config.yml` (Axolotl 0.19's keys), `data/` (the run's rows as conversations), the
//! DeepSpeed config or FSDP2 keys, `launch.sh` and `README.md`. The freeze selection is the plan's exact
//! `unfrozen_parameters` patterns (or LISA keys for a layer-sampling schedule); the conversations are rendered by
//! the model's own chat template, as FreezeTune renders them.

use crate::data::{legacy_spec, train_specs, write_conversations, Conversations};
use crate::launch::{axolotl_launch_script, make_executable, write_distributed};
use crate::readme::readme;
use crate::yaml::Yaml;
use crate::{hf, put, Bundle, BundleOptions, Distributed, Engine, Result};
use freezetune_core::data_spec::Mix;
use freezetune_core::layout::ModelLayout;
use freezetune_core::run_config::RunConfig;
use freezetune_core::PlanOptions;
use std::path::Path;

pub(crate) fn write(config: &RunConfig, layout: &ModelLayout, dir: &Path, o: &BundleOptions) -> Result<Bundle> {
    let mut files = Vec::new();
    let mut unmapped = Vec::new();
    let mut notes = Vec::new();
    let plan = freezetune_core::plan(layout, &config.freeze, PlanOptions::default())?;
    let freeze = freezetune_core::export::to_axolotl_yaml(layout, &config.freeze, &plan)?;

    let d = &config.data;
    let seed = config.training.seed;
    let train = write_conversations(dir, &mut files, "train", &train_specs(d), d.mix, seed)?;
    let eval_specs = match (&d.eval, d.eval_datasets.is_empty()) {
        (Some(path), _) => vec![legacy_spec(path, d.format)],
        (None, false) => d.eval_datasets.clone(),
        (None, true) => Vec::new(),
    };
    let eval = match eval_specs.is_empty() {
        true => None,
        false => Some(write_conversations(
            dir,
            &mut files,
            "eval",
            &eval_specs,
            Mix::Concat,
            seed,
        )?),
    };
    for (set, c) in [("training", Some(&train)), ("eval", eval.as_ref())] {
        if let Some(c) = c.filter(|c| c.skipped > 0) {
            notes.push(format!(
                "{} {set} conversation(s) whose turns do not alternate user / assistant are left out, as FreezeTune \
                 leaves them out",
                c.skipped
            ));
        }
    }
    // FSDP is keys of config.yml; DeepSpeed is a file it names.
    notes.push(
        "Axolotl learns each reply and its end-of-turn token (`train_on_eos: turn`); FreezeTune learns each reply \
         through the end of its turn as the chat template writes it, which for some templates (Qwen's) adds a \
         newline after the end-of-turn token, so the loss is averaged over slightly fewer tokens there"
            .into(),
    );
    let deepspeed = match o.distributed {
        Distributed::Fsdp => None,
        _ => write_distributed(dir, &mut files, o, hf::accelerate_precision(&config.model.dtype))?,
    };

    let mut y = Yaml::new(&format!(
        "Axolotl 0.19 config written by FreezeTune from {}.\n{} trainable tensors, {} of {} parameters. \
         README.md lists what could not be carried over.",
        config.model.path.display(),
        plan.trainable.len(),
        plan.trainable_params,
        plan.total_params
    ));
    hf::model_keys(&mut y, &config.model, ("base_model", "revision_of_model"), &mut notes);
    y.section("freeze");
    y.raw(&freeze);
    y.section("dataset");
    y.raw(&dataset_list("datasets", &train));
    if let Some(eval) = &eval {
        y.raw(&dataset_list("test_datasets", eval));
    } else if d.eval_split > 0.0 {
        y.float("val_set_size", d.eval_split);
        notes.push(format!(
            "eval_split {} becomes val_set_size: the same fraction is held out, but Axolotl draws other rows",
            d.eval_split
        ));
    }
    y.str("dataset_prepared_path", "prepared");
    y.str("chat_template", "tokenizer_default");
    y.num("sequence_len", d.cutoff_len);
    // FreezeTune keeps an example's first cutoff_len tokens; Axolotl drops a longer example unless told.
    y.str("excess_length_strategy", "truncate");
    y.bool("sample_packing", false);
    y.bool("train_on_inputs", d.train_on_prompt);
    training_keys(
        &mut y,
        config,
        o,
        eval.is_some() || d.eval_split > 0.0,
        &mut notes,
        &mut unmapped,
    );
    if o.distributed == Distributed::Fsdp {
        fsdp_keys(&mut y);
    }
    if let Some(file) = &deepspeed {
        y.str("deepspeed", file);
    }
    y.section("output");
    y.str("output_dir", "output");
    y.num("logging_steps", 1);
    match config.training.save_steps {
        0 => y.str("save_strategy", "no"),
        n => y.num("save_steps", n),
    }
    y.bool("save_safetensors", true);
    put(dir, &mut files, "config.yml", &y.finish())?;

    put(dir, &mut files, "launch.sh", &axolotl_launch_script(o))?;
    make_executable(&dir.join("launch.sh"))?;
    let facts = [
        "`config.yml` has the plan's exact `unfrozen_parameters` patterns (Axolotl escapes their dots and matches \
         them from the start of each parameter name, as FreezeTune checked)."
            .to_string(),
        format!(
            "{} training conversations in `{}`, exactly the rows FreezeTune trains on (mapped, limited, mixed), \
             rendered by the model's own chat template (`chat_template: tokenizer_default`).",
            train.written, train.file
        ),
        "Install Axolotl first: `pip install axolotl==0.19.0`.".to_string(),
    ];
    let readme = readme(Engine::Axolotl, config, &plan, o, &facts, &unmapped, &notes);
    put(dir, &mut files, "README.md", &readme)?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        files,
        unmapped,
        notes,
        train_rows: train.written,
    })
}

/// A `datasets:` (or `test_datasets:`) list of the one conversations file: OpenAI-style messages rendered by the
/// chat template, the assistant turns learned with the end-of-turn token after each, as FreezeTune learns them.
fn dataset_list(key: &str, c: &Conversations) -> String {
    let path = serde_json::to_string(&c.file).expect("a string serializes");
    format!(
        "{key}:\n  - path: {path}\n    ds_type: json\n    split: train\n    type: chat_template\n    \
         field_messages: messages\n    message_property_mappings:\n      role: role\n      content: content\n    \
         roles_to_train: [\"assistant\"]\n    train_on_eos: turn\n"
    )
}

fn training_keys(
    y: &mut Yaml,
    c: &RunConfig,
    o: &BundleOptions,
    evaluates: bool,
    notes: &mut Vec<String>,
    unmapped: &mut Vec<String>,
) {
    let t = &c.training;
    y.section("train");
    let names = hf::Names {
        batch: "micro_batch_size",
        epochs: "num_epochs",
        scheduler: "lr_scheduler",
        optimizer: "optimizer",
    };
    let per_device = hf::optimization(y, t, o, &names, notes);
    match c.model.dtype.as_str() {
        "bf16" => y.bool("bf16", true),
        "f16" => y.bool("fp16", true),
        "f32" => {
            y.bool("bf16", false);
            y.bool("fp16", false);
        }
        // Axolotl's `auto` is bf16 where the GPU has it, as FreezeTune's auto is on a GPU.
        _ => y.str("bf16", "auto"),
    }
    y.bool("gradient_checkpointing", t.gradient_checkpointing);
    y.num("ddp_timeout", 180000000);
    if evaluates {
        y.num("eval_batch_size", per_device);
        match t.eval_steps {
            0 => y.str("eval_strategy", "no"),
            n => y.num("eval_steps", n),
        }
        if t.eval_steps == 0 {
            notes.push(
                "eval_steps = 0 (FreezeTune evaluates at the end): Axolotl evaluates only when asked; set \
                 eval_steps or run `axolotl evaluate config.yml` afterwards"
                    .into(),
            );
        }
    }
    if t.shuffle {
        notes.push(format!(
            "the rows are shuffled with seed {} by Hugging Face's Trainer, in another order than FreezeTune's",
            t.seed
        ));
    } else {
        // The datasets in their order, and the trainer's sampler sequential.
        y.bool("shuffle_merged_datasets", false);
        y.bool("curriculum_sampling", true);
    }
    hf::unmapped_everywhere(Engine::Axolotl, c, unmapped);
}

/// FSDP2 through accelerate, as Axolotl 0.19 configures it: every decoder layer its own unit (accelerate reads
/// the model's `_no_split_modules`), full weights gathered for saving. FSDP2 keeps frozen and trainable
/// parameters in one unit, which FSDP1 needed `use_orig_params` for.
fn fsdp_keys(y: &mut Yaml) {
    y.num("fsdp_version", 2);
    y.raw(
        "fsdp_config:\n  offload_params: false\n  cpu_ram_efficient_loading: true\n  \
         auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  state_dict_type: FULL_STATE_DICT\n  \
         reshard_after_forward: true\n",
    );
}
