//! Inspection speed on a Llama-3-70B-shaped sharded checkpoint (80 layers, 30 shards, bf16; the data sections are
//! sparse holes, so the headers are real and the disk cost is nil). Prints the time of `ModelLayout::inspect` and of
//! a plan on it.
//!
//! Run: `cargo run --release -p freezetune-bench --bin bench-inspect [-- DIR]`

use anyhow::Result;
use freezetune_core::synth::{write_checkpoint, SynthSpec};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use std::time::Instant;

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("freezetune-bench-70b"));
    let spec = SynthSpec::llama_70b_sparse();
    if !dir.join("model.safetensors.index.json").exists() {
        let t = Instant::now();
        write_checkpoint(&dir, &spec)?;
        println!(
            "wrote sparse 70B checkpoint to {} in {:.2?}",
            dir.display(),
            t.elapsed()
        );
    }
    let runs = 10;
    let mut times = Vec::new();
    let mut layout = None;
    for _ in 0..runs {
        let t = Instant::now();
        layout = Some(ModelLayout::inspect(&dir)?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let layout = layout.expect("ran");
    times.sort_by(f64::total_cmp);
    println!(
        "inspect: {} layers, {} tensors in {} shards, {:.1}B parameters, {:.1} GiB of weights",
        layout.num_layers,
        layout.tensors().count(),
        layout.files.len(),
        layout.total_params as f64 / 1e9,
        layout.weight_bytes() as f64 / (1u64 << 30) as f64
    );
    println!(
        "inspect time over {runs} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        times[0],
        times[runs / 2],
        times[runs - 1]
    );
    let spec = FreezeSpec {
        layers: Some("0-9,40,70-79".into()),
        extra: vec!["norm".into()],
        ..Default::default()
    };
    let t = Instant::now();
    let p = plan(
        &layout,
        &spec,
        PlanOptions {
            batch_size: 1,
            seq_len: 4096,
        },
    )?;
    println!(
        "plan time: {:.2} ms ({} trainable tensors, {:.2}B trainable params, estimate {:.1} GiB at batch 1 x 4096)",
        t.elapsed().as_secs_f64() * 1e3,
        p.trainable.len(),
        p.trainable_params as f64 / 1e9,
        p.memory.total_bytes as f64 / (1u64 << 30) as f64
    );
    Ok(())
}
