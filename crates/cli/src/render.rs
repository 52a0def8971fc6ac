//! Text output: tables for people, and the error printer shared by every subcommand.

use freezetune_core::layout::ModelLayout;
use freezetune_core::{FreezePlan, TrainState};
use std::fmt::Write;

pub fn print_error(err: &anyhow::Error, json: bool) {
    let typed = err.chain().find_map(|e| {
        e.downcast_ref::<freezetune_core::Error>()
            .map(|e| e.to_json())
            .or_else(|| e.downcast_ref::<freezetune_hub::HubError>().map(|e| e.to_json()))
            .or_else(|| {
                e.downcast_ref::<freezetune_gguf::GgufError>()
                    .map(|e| serde_json::json!({"kind": e.kind(), "message": e.to_string()}))
            })
            .or_else(|| {
                e.downcast_ref::<freezetune_train::TrainError>()
                    .map(|e| serde_json::json!({"kind": e.kind(), "message": e.to_string()}))
            })
    });
    if json {
        let obj = match typed {
            Some(mut j) => {
                j["message"] = message(err).into();
                j
            }
            None => serde_json::json!({"kind": "error", "message": message(err)}),
        };
        println!("{}", serde_json::json!({ "error": obj }));
    } else {
        eprintln!("error: {}", message(err));
    }
}

/// The error and its causes joined by ": ", as `{err:#}` does, except that a cause whose text the message already
/// ends with is not repeated (errors such as `{path}: {source}` print their source themselves).
fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text = format!("{text}: {part}");
        }
    }
    text
}

/// One event as a JSON line on stdout, flushed at once (`--events jsonl`: a parent process reads them as they
/// come). A closed pipe means the parent is gone: the line is dropped, and a run still checkpoints when cancelled.
pub fn event_line(event: &impl serde::Serialize) {
    use std::io::Write as _;
    let line = serde_json::to_string(event).expect("events serialise");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// `1234567` -> `1.23M`.
pub fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The layout as a table; `kinds` is each layer's attention kind from the decoder's description, or why FreezeTune
/// cannot train the model.
pub fn layout_table(l: &ModelLayout, kinds: std::result::Result<Vec<String>, String>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Model        {}", l.model_dir.display());
    let _ = writeln!(
        s,
        "Architecture {} ({})",
        l.architecture,
        l.model_type.as_deref().unwrap_or("?")
    );
    let _ = writeln!(s, "Layers       {} under {}", l.num_layers, l.layer_prefix);
    let _ = writeln!(s, "Parameters   {} ({})", count(l.total_params), l.total_params);
    let tie = if l.tie_word_embeddings {
        "tied (lm_head shares embed_tokens)"
    } else {
        "untied"
    };
    let _ = writeln!(s, "Embeddings   {tie}");
    let files: Vec<String> = l
        .files
        .iter()
        .map(|f| format!("{} ({} tensors, {})", f.name, f.tensors, bytes(f.bytes)))
        .collect();
    let _ = writeln!(s, "Weights      {}", files.join(", "));
    // Tensors stored in blocks the trainer keeps while they are frozen (FP8, MXFP4, a GGUF file's types).
    let mut held: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in l.tensors().filter(|t| t.frozen_block_bytes().is_some()) {
        *held
            .entry(t.gguf.as_ref().map_or("", |b| b.ggml_type.as_str()))
            .or_default() += 1;
    }
    if !held.is_empty() {
        let kinds: Vec<String> = held.iter().map(|(kind, n)| format!("{n} tensors in {kind}")).collect();
        let _ = writeln!(s, "Blocks       {} (held in them while frozen)", kinds.join(", "));
    }
    let kinds = match kinds {
        Ok(k) => k,
        Err(reason) => {
            let _ = writeln!(s, "Training     refused: {reason}");
            Vec::new()
        }
    };
    let kind_width = kinds.iter().map(String::len).max().unwrap_or(0).max("attention".len());
    let names = l.layer_module_names();
    let kind_head = if kinds.is_empty() {
        String::new()
    } else {
        format!("{:<kind_width$}  ", "attention")
    };
    let _ = writeln!(s, "\n{:>5}  {:>10}  {kind_head}{}", "layer", "params", names.join("  "));
    for layer in l.layers.iter().rev() {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                let p = layer
                    .modules
                    .iter()
                    .find(|m| &m.name == n)
                    .map(|m| count(m.params))
                    .unwrap_or("-".into());
                format!("{p:>w$}", w = n.len())
            })
            .collect();
        let kind = match kinds.get(layer.id) {
            Some(k) => format!("{k:<kind_width$}  "),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{:>5}  {:>10}  {kind}{}",
            layer.id,
            count(layer.params),
            cells.join("  ")
        );
    }
    let _ = writeln!(s, "\nOutside the layers:");
    for m in &l.non_layer_modules {
        let shapes: Vec<String> = m
            .tensors
            .iter()
            .map(|t| format!("{} {:?} {}", t.name, t.shape, t.dtype))
            .collect();
        let _ = writeln!(s, "  {:<16} {:>10}  {}", m.name, count(m.params), shapes.join("; "));
    }
    if !l.unplanned.is_empty() {
        // Buffers and multi-token-prediction heads: in the checkpoint, not parameters of the model it trains.
        let values: u64 = l.unplanned.iter().map(|t| t.params).sum();
        let first: Vec<&str> = l.unplanned.iter().take(3).map(|t| t.name.as_str()).collect();
        let more = match l.unplanned.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "\nNever trained, written back unchanged (buffers, multi-token prediction, shared layers' key/value tensors): {} tensors, {} values: {}{more}",
            l.unplanned.len(),
            count(values),
            first.join(", ")
        );
    }
    for w in &l.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

fn mark(state: TrainState) -> &'static str {
    match state {
        TrainState::Trainable => "●",
        TrainState::Frozen => "·",
        TrainState::Partial => "◐",
    }
}

pub fn plan_table(l: &ModelLayout, p: &FreezePlan) -> String {
    let mut s = String::new();
    let mode = match p.mode {
        freezetune_core::FreezeMode::Native => "native",
        freezetune_core::FreezeMode::Llamafactory => "LLaMA-Factory",
    };
    let _ = writeln!(
        s,
        "{} — {} layers, {} parameters, {mode} mode",
        l.architecture,
        l.num_layers,
        count(l.total_params)
    );
    let names = l.layer_module_names();
    let _ = writeln!(
        s,
        "\n{:>5}  {:<9}  {:>10}  {}",
        "layer",
        "state",
        "trainable",
        names.join("  ")
    );
    for layer in p.layers.iter().rev() {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                let m = layer
                    .modules
                    .iter()
                    .find(|m| &m.name == n)
                    .map(|m| mark(m.state))
                    .unwrap_or(" ");
                format!("{m:^w$}", w = n.len())
            })
            .collect();
        let state = format!("{:?}", layer.state).to_lowercase();
        let _ = writeln!(
            s,
            "{:>5}  {:<9}  {:>10}  {}",
            layer.id,
            state,
            count(layer.trainable_params),
            cells.join("  ")
        );
    }
    let extras: Vec<String> = p
        .extra_modules
        .iter()
        .map(|m| format!("{} {}", mark(m.state), m.name))
        .collect();
    let _ = writeln!(s, "\nOutside the layers: {}", extras.join("   "));
    let _ = writeln!(
        s,
        "Trainable: {} tensors, {} of {} parameters ({:.2}%), layers {}",
        p.trainable.len(),
        count(p.trainable_params),
        count(p.total_params),
        p.trainable_percent,
        if p.trainable_layer_ids.is_empty() {
            "none"
        } else {
            &p.trainable_layer_ids
        }
    );
    let m = &p.memory;
    let _ = writeln!(
        s,
        "Memory (batch {}, seq {}): {} total = frozen weights {} + trainable weights {} + gradients {} + AdamW {} + update {} + activations {}",
        m.batch_size,
        m.seq_len,
        bytes(m.total_bytes),
        bytes(m.frozen_weight_bytes),
        bytes(m.trainable_weight_bytes),
        bytes(m.gradient_bytes),
        bytes(m.optimizer_bytes),
        bytes(m.update_bytes),
        m.activation_bytes.map(bytes).unwrap_or_else(|| "unknown (config lacks sizes)".into())
    );
    let _ = writeln!(
        s,
        "  on the CPU in f32 (fused kernels, in-place AdamW): {} total, activations {}",
        bytes(m.cpu_total_bytes),
        m.cpu_activation_bytes.map(bytes).unwrap_or_else(|| "unknown".into())
    );
    for w in &p.warnings {
        let _ = writeln!(s, "warning [{}]: {}", w.code, w.message);
    }
    s
}

/// A layer schedule's timeline: one row per phase (the first 24), and the grid of which layer trains when.
pub fn timeline_table(t: &freezetune_core::schedule::Timeline) -> String {
    use freezetune_core::ids::format_layer_ids;
    use freezetune_core::schedule::{kind_name, StatePolicy};
    let mut s = String::new();
    let policy = match t.optimizer_state {
        StatePolicy::Reset => "optimizer state reset at each switch",
        StatePolicy::Keep => "optimizer state kept per tensor",
    };
    let _ = writeln!(
        s,
        "\nschedule {}: {} phase(s) over {} steps, {} steps each; {policy}",
        kind_name(t.kind),
        t.phases.len(),
        t.total_steps,
        t.interval_steps
    );
    if !t.always.is_empty() {
        let _ = writeln!(s, "always trained: {}", t.always.join(", "));
    }
    let _ = writeln!(
        s,
        "{:<7} {:<13} {:<14} {:>11} {:>12}",
        "phase", "steps", "layers", "trainable", "memory"
    );
    const SHOWN: usize = 24;
    for p in t.phases.iter().take(SHOWN) {
        let steps = format!("{}-{}", p.start_step + 1, p.end_step);
        let _ = writeln!(
            s,
            "{:<7} {:<13} {:<14} {:>11} {:>12}",
            p.index,
            steps,
            format_layer_ids(&p.layers),
            count(p.trainable_params),
            bytes(p.memory_bytes)
        );
    }
    if t.phases.len() > SHOWN {
        let _ = writeln!(s, "... {} more phases (--json shows all)", t.phases.len() - SHOWN);
    }
    // Layers down (top layer first, as the picker draws the stack), phases across: '#' trains.
    let _ = writeln!(s, "\nlayer  phases 0-{}", t.phases.len().min(60).saturating_sub(1));
    for &l in t.layers.iter().rev() {
        let row: String = t
            .phases
            .iter()
            .take(60)
            .map(|p| if p.layers.contains(&l) { '#' } else { '.' })
            .collect();
        let _ = writeln!(s, "{l:>5}  {row}");
    }
    let _ = writeln!(
        s,
        "peak memory: phase {}, {} (estimate)",
        t.peak_phase,
        bytes(t.peak_memory.total_bytes)
    );
    for note in &t.notes {
        let _ = writeln!(s, "note: {note}");
    }
    s
}

/// The fit verdict: need against the device's memory, then the changes with their estimates.
pub fn fit_verdict(v: &freezetune_core::fit::FitVerdict) -> String {
    let gib = |b: u64| b as f64 / 1024f64.powi(3);
    let mut out = format!(
        "\nneeds {:.2} GiB; {} has {:.2} GiB free: {}\n",
        gib(v.need_bytes),
        v.device,
        gib(v.available_bytes),
        if v.fits { "fits" } else { "does not fit" }
    );
    if !v.changes.is_empty() {
        out.push_str("cheapest changes that would make it fit:\n");
        for c in &v.changes {
            let mark = if c.fits { "fits" } else { "not enough" };
            let _ = writeln!(out, "  {:<10} {:>9.2} GiB  {}", mark, gib(c.need_bytes), c.text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_the_message_already_ends_with_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder");
        let err = anyhow::Error::new(freezetune_core::Error::Io {
            path: "/m".into(),
            source: io,
        })
        .context("inspecting /m");
        assert_eq!(super::message(&err), "inspecting /m: /m: not a folder");
        let plain = anyhow::anyhow!("root cause").context("reading x");
        assert_eq!(super::message(&plain), "reading x: root cause");
    }
}
