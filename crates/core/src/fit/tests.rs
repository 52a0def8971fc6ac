use super::*;
use crate::testutil::{all_layers, tiny_llama};
use crate::FreezeSpec;

/// The tiny llama's layout and the trainable set of `spec`.
fn setup(spec: &FreezeSpec) -> (tempfile::TempDir, ModelLayout, BTreeSet<String>) {
    let (dir, layout, p) = tiny_llama(spec);
    (dir, layout, p.trainable.into_iter().collect())
}

fn gpu(batch_size: u64, seq_len: u64) -> FitSetup {
    FitSetup {
        batch_size,
        seq_len,
        gradient_accumulation: 1,
        gradient_checkpointing: false,
        half_precision: false,
        cpu: false,
        quantize_frozen: QuantizeFrozen::None,
        optimizer: OptimizerKind::Adamw,
    }
}

fn device(available_bytes: u64) -> DeviceMemory {
    DeviceMemory {
        name: "cuda:0".into(),
        available_bytes,
    }
}

#[test]
fn the_need_is_the_plans_estimate_for_an_f32_model_and_the_cpu_estimate_on_the_cpu() {
    let (_d, layout, set) = setup(&all_layers());
    let options = PlanOptions {
        batch_size: 4,
        seq_len: 128,
    };
    let estimate = crate::memory::estimate_memory(&layout, &set, options);
    assert_eq!(need_bytes(&layout, &set, gpu(4, 128)), estimate.total_bytes);
    let cpu = FitSetup {
        cpu: true,
        ..gpu(4, 128)
    };
    assert_eq!(need_bytes(&layout, &set, cpu), estimate.cpu_total_bytes);
}

#[test]
fn a_setup_that_fits_says_so_and_suggests_nothing() {
    let (_d, layout, set) = setup(&all_layers());
    let need = need_bytes(&layout, &set, gpu(4, 128));
    let v = fit(&layout, &set, gpu(4, 128), &device(need));
    assert!(v.fits);
    assert_eq!((v.need_bytes, v.available_bytes), (need, need));
    assert!(v.changes.is_empty());
}

#[test]
fn a_setup_that_does_not_fit_gets_changes_cheapest_first_each_with_its_own_estimate() {
    let (_d, layout, set) = setup(&all_layers());
    let setup = gpu(8, 512);
    let need = need_bytes(&layout, &set, setup);
    let v = fit(&layout, &set, setup, &device(need * 6 / 10));
    assert!(!v.fits);
    let kinds: Vec<&str> = v.changes.iter().map(|c| c.text.split(' ').next().unwrap()).collect();
    assert_eq!(kinds[..3], ["turn", "compute", "batch"], "{:?}", v.changes);
    for c in &v.changes {
        assert!(c.need_bytes < need, "{c:?} must need less than {need}");
        assert_eq!(c.fits, c.need_bytes <= v.available_bytes);
        let again = match &c.change {
            Change::GradientCheckpointing => need_bytes(
                &layout,
                &set,
                FitSetup {
                    gradient_checkpointing: true,
                    ..setup
                },
            ),
            Change::HalfPrecision => need_bytes(
                &layout,
                &set,
                FitSetup {
                    half_precision: true,
                    ..setup
                },
            ),
            Change::Batch {
                batch_size,
                gradient_accumulation,
            } => {
                assert_eq!(batch_size * gradient_accumulation, 8, "the same examples per update");
                need_bytes(
                    &layout,
                    &set,
                    FitSetup {
                        batch_size: *batch_size,
                        gradient_accumulation: *gradient_accumulation,
                        ..setup
                    },
                )
            }
            Change::QuantizeFrozen { format } => need_bytes(
                &layout,
                &set,
                FitSetup {
                    quantize_frozen: *format,
                    ..setup
                },
            ),
            Change::Optimizer8bit => need_bytes(
                &layout,
                &set,
                FitSetup {
                    optimizer: OptimizerKind::Adamw8bit,
                    ..setup
                },
            ),
            Change::Cutoff { seq_len } => need_bytes(
                &layout,
                &set,
                FitSetup {
                    seq_len: *seq_len,
                    ..setup
                },
            ),
            Change::Layers { layers } => {
                let ids = crate::ids::parse_layer_ids(layers, 6).unwrap();
                assert_eq!(ids.iter().max(), Some(&5), "the top of the selection stays");
                let kept: BTreeSet<String> = set
                    .iter()
                    .filter(|n| {
                        !n.starts_with("model.layers.")
                            || ids.iter().any(|i| n.starts_with(&format!("model.layers.{i}.")))
                    })
                    .cloned()
                    .collect();
                need_bytes(&layout, &kept, setup)
            }
            Change::Combined => continue,
        };
        assert_eq!(c.need_bytes, again, "{c:?}");
    }
    // The batch and the cutoff are the largest that fit: no larger batch with the same examples per update does,
    // and twice the cutoff does not.
    let batch = v.changes.iter().find_map(|c| match c.change {
        Change::Batch { batch_size, .. } => Some(batch_size),
        _ => None,
    });
    let batch = batch.expect("a smaller batch fits");
    for larger in (batch + 1..8).filter(|b| 8 % b == 0) {
        let s = FitSetup {
            batch_size: larger,
            gradient_accumulation: 8 / larger,
            ..setup
        };
        assert!(
            need_bytes(&layout, &set, s) > v.available_bytes,
            "batch {larger} would fit too"
        );
    }
    let cutoff = v.changes.iter().find_map(|c| match c.change {
        Change::Cutoff { seq_len } => Some(seq_len),
        _ => None,
    });
    let cutoff = cutoff.expect("a shorter cutoff fits");
    assert!(
        need_bytes(
            &layout,
            &set,
            FitSetup {
                seq_len: cutoff * 2,
                ..setup
            }
        ) > v.available_bytes
    );
}

#[test]
fn a_smaller_batch_keeps_the_examples_per_update_for_any_batch_size() {
    let (_d, layout, set) = setup(&all_layers());
    let mut seen = 0;
    for (batch, accumulation) in [(6u64, 1u64), (5, 1), (12, 2)] {
        let setup = FitSetup {
            gradient_accumulation: accumulation,
            ..gpu(batch, 512)
        };
        let need = need_bytes(&layout, &set, setup);
        let v = fit(&layout, &set, setup, &device(need * 7 / 10));
        let change = v.changes.iter().find_map(|c| match c.change {
            Change::Batch {
                batch_size,
                gradient_accumulation,
            } => Some((batch_size, gradient_accumulation)),
            _ => None,
        });
        if let Some((b, a)) = change {
            assert_eq!(
                b * a,
                batch * accumulation,
                "batch {batch} x {accumulation} became {b} x {a}"
            );
            assert!(b < batch);
            seen += 1;
        }
    }
    assert!(seen >= 2, "a smaller batch was offered for most shapes");
}

#[test]
fn together_adds_the_largest_batch_that_fits_with_checkpointing_and_half_precision() {
    let (_d, layout, set) = setup(&all_layers());
    let setup = gpu(8, 512);
    let with = |s: FitSetup| need_bytes(&layout, &set, s);
    let combined = FitSetup {
        gradient_checkpointing: true,
        half_precision: true,
        batch_size: 2,
        gradient_accumulation: 4,
        ..setup
    };
    let available = with(combined);
    let alone = [
        FitSetup {
            gradient_checkpointing: true,
            ..setup
        },
        FitSetup {
            half_precision: true,
            ..setup
        },
        FitSetup {
            batch_size: 1,
            gradient_accumulation: 8,
            ..setup
        },
    ];
    assert!(
        alone.iter().all(|s| with(*s) > available),
        "the test needs a device where no change fits alone"
    );
    let v = fit(&layout, &set, setup, &device(available));
    let together = v
        .changes
        .iter()
        .find(|c| c.change == Change::Combined)
        .expect("a combined change");
    assert!(together.fits, "{together:?}");
    assert_eq!(together.need_bytes, available);
    assert!(
        together.text.contains("batch 2 with 4 accumulation steps"),
        "{}",
        together.text
    );
}

#[test]
fn on_the_cpu_half_precision_is_not_offered_and_checkpointing_lowers_the_need() {
    let (_d, layout, set) = setup(&all_layers());
    let cpu = FitSetup {
        cpu: true,
        ..gpu(4, 256)
    };
    let need = need_bytes(&layout, &set, cpu);
    let v = fit(
        &layout,
        &set,
        cpu,
        &DeviceMemory {
            name: "this machine".into(),
            available_bytes: need / 2,
        },
    );
    assert!(v.changes.iter().all(|c| c.change != Change::HalfPrecision));
    let ckpt = v
        .changes
        .iter()
        .find(|c| c.change == Change::GradientCheckpointing)
        .unwrap();
    assert!(ckpt.need_bytes < need);
}

#[test]
fn checkpointing_is_offered_where_config_json_asks_for_the_routers_load_balancing_loss_too() {
    let (_d, mut layout, set) = setup(&all_layers());
    let small = device(need_bytes(&layout, &set, gpu(4, 128)) / 2);
    let offered = |layout: &ModelLayout| {
        let v = fit(layout, &set, gpu(4, 128), &small);
        v.changes.iter().any(|c| c.change == Change::GradientCheckpointing)
    };
    assert!(offered(&layout));
    // The router's load-balancing loss trains under checkpointing too (train's `checkpointed_backward`).
    layout.dims.experts = Some(crate::config::ExpertDims {
        count: 4,
        top_k: 2,
        width: 16,
        shared_width: None,
        router_loss: true,
    });
    assert!(offered(&layout));
}

#[test]
fn nothing_that_fits_is_left_out_and_impossible_devices_get_only_failing_changes() {
    let (_d, layout, set) = setup(&all_layers());
    let v = fit(&layout, &set, gpu(4, 128), &device(1));
    assert!(!v.fits);
    assert!(v.changes.iter().all(|c| !c.fits), "{:?}", v.changes);
}

/// A Llama-2-7B-shaped layout (header only: the weights are a sparse hole) with its top `n` layers trainable.
fn llama2_7b_top(n: usize) -> (tempfile::TempDir, ModelLayout, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::synth::SynthSpec {
        layers: 32,
        hidden: 4096,
        intermediate: 11008,
        heads: 32,
        kv_heads: 32,
        vocab: 32000,
        dtype: crate::safetensors::DType::BF16,
        fill: crate::synth::Fill::Sparse,
        tied: false,
        ..crate::synth::SynthSpec::tiny(crate::synth::Family::Llama, 32)
    };
    crate::synth::write_checkpoint(dir.path(), &spec).unwrap();
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    let p = crate::plan(
        &layout,
        &FreezeSpec {
            top: Some(n),
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap();
    (dir, layout, p.trainable.into_iter().collect())
}

#[test]
fn quantized_frozen_layers_count_their_blocks_and_are_offered_when_the_run_does_not_fit() {
    let (_d, layout, set) = llama2_7b_top(2);
    let bf16 = FitSetup {
        half_precision: true,
        gradient_checkpointing: true,
        ..gpu(1, 256)
    };
    let dense = need_bytes(&layout, &set, bf16);
    let q4 = need_bytes(
        &layout,
        &set,
        FitSetup {
            quantize_frozen: QuantizeFrozen::Q4K,
            ..bf16
        },
    );
    let q8 = need_bytes(
        &layout,
        &set,
        FitSetup {
            quantize_frozen: QuantizeFrozen::Q8_0,
            ..bf16
        },
    );
    // 30 frozen layers of 4 * 4096² + 3 * 4096 * 11008 projection weights: 2 bytes each dense, 0.5625 in q4_k and
    // 1.0625 in q8_0; the embeddings and lm_head (32000 * 4096 each) in q8_0 either way; one dequantized (f32, then
    // bf16) matrix at a time, the largest being lm_head.
    let frozen_projections: u64 = 30 * (4 * 4096 * 4096 + 3 * 4096 * 11008);
    let vocabulary: u64 = 2 * 32000 * 4096;
    let vocabulary_saved = vocabulary * 2 - vocabulary * 17 / 16;
    let transient = 32000 * 4096 * 6;
    assert_eq!(
        dense - q4,
        frozen_projections * 2 - frozen_projections * 9 / 16 + vocabulary_saved - transient
    );
    assert_eq!(
        dense - q8,
        frozen_projections * 2 - frozen_projections * 17 / 16 + vocabulary_saved - transient
    );
    let v = fit(&layout, &set, bf16, &device(q8 + (dense - q8) / 2));
    let offered = v
        .changes
        .iter()
        .find(|c| matches!(c.change, Change::QuantizeFrozen { .. }))
        .unwrap();
    assert_eq!(
        offered.change,
        Change::QuantizeFrozen {
            format: QuantizeFrozen::Q8_0
        },
        "the lightest that fits"
    );
    assert_eq!((offered.need_bytes, offered.fits), (q8, true));
    let v = fit(&layout, &set, bf16, &device(q4));
    let offered = v
        .changes
        .iter()
        .find(|c| matches!(c.change, Change::QuantizeFrozen { .. }))
        .unwrap();
    assert_eq!(
        offered.change,
        Change::QuantizeFrozen {
            format: QuantizeFrozen::Q4K
        }
    );
    let held = FitSetup {
        quantize_frozen: QuantizeFrozen::Q4K,
        ..bf16
    };
    let v = fit(&layout, &set, held, &device(q4 / 2));
    assert!(
        v.changes
            .iter()
            .all(|c| !matches!(c.change, Change::QuantizeFrozen { .. })),
        "nothing lighter"
    );
}

#[test]
fn adamw8bit_moments_count_on_the_cpu_but_not_on_a_gpu_where_they_live_on_the_host() {
    let (_d, layout, set) = setup(&all_layers());
    let with = |optimizer, cpu| FitSetup {
        optimizer,
        cpu,
        ..gpu(1, 64)
    };
    let need = |optimizer, cpu| need_bytes(&layout, &set, with(optimizer, cpu));
    assert_eq!(need(OptimizerKind::Adamw8bit, false), need(OptimizerKind::Sgd, false));
    assert!(need(OptimizerKind::Adamw8bit, true) > need(OptimizerKind::Sgd, true));
    assert!(need(OptimizerKind::Adamw, false) > need(OptimizerKind::Adamw8bit, false));
}

/// On the CPU in f32 an untied bf16 model's frozen token embeddings stay bf16 (train's lookup tables); on a GPU,
/// and where they are the head's matrix too, they are counted in the compute dtype.
#[test]
fn a_frozen_lookup_table_is_counted_as_stored_on_the_cpu() {
    let (_d, layout, set) = llama2_7b_top(2);
    let cpu = FitSetup {
        cpu: true,
        ..gpu(1, 256)
    };
    let table = 32000 * 4096;
    let gpu_need = need_bytes(&layout, &set, gpu(1, 256));
    let cpu_need = need_bytes(&layout, &set, cpu);
    // Each against the same layout without the table (the needs differ by their activations and update too).
    let mut without_table = layout.clone();
    for m in &mut without_table.non_layer_modules {
        m.tensors.retain(|t| t.name != "model.embed_tokens.weight");
    }
    let cpu_without = need_bytes(&without_table, &set, cpu);
    assert_eq!(cpu_need - cpu_without, table * 2, "2 bytes a value on the CPU");
    let gpu_without = need_bytes(&without_table, &set, gpu(1, 256));
    assert_eq!(gpu_need - gpu_without, table * 4, "4 bytes a value on a GPU");
}
