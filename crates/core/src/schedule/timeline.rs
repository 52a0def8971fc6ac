//! A schedule made concrete for one run: phases (step ranges) with the exact trainable tensors of each, the memory
//! the largest needs, and everything ever trained. Deterministic in (layout, plan, schedule, context), so a resumed
//! run rebuilds the same timeline and the app draws what the trainer will do.

use super::{kind_name, BlockOrder, IntervalUnit, ScheduleKind, ScheduleSpec, StatePolicy};
use crate::error::{Error, Result};
use crate::memory::{estimate_memory, MemoryEstimate};
use crate::plan::{FreezePlan, PlanOptions};
use crate::synth::Rng;
use crate::ModelLayout;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the run adds to the schedule: its length, its epochs and its seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimelineContext {
    pub total_steps: u64,
    /// Optimizer steps per epoch (for intervals in epochs).
    pub steps_per_epoch: u64,
    /// The run's `training.seed`, used when the schedule names none.
    pub seed: u64,
    pub options: PlanOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Phase {
    pub index: usize,
    /// First optimizer step of the phase (0-based) and the step after its last.
    pub start_step: u64,
    pub end_step: u64,
    /// The selection's layers active in this phase, ascending.
    pub layers: Vec<usize>,
    /// Sorted names of every tensor that trains in this phase.
    pub trainable: Vec<String>,
    pub trainable_params: u64,
    /// Learning-rate factors of tensors that do not train at the base rate (progressive with `lr_decay`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lr_scale: BTreeMap<String, f64>,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Timeline {
    pub kind: ScheduleKind,
    pub total_steps: u64,
    /// Steps per phase (the last phase may be shorter; a progressive run's last phase lasts to the end).
    pub interval_steps: u64,
    /// The layers the schedule moves through: the plan's layers holding a trainable tensor.
    pub layers: Vec<usize>,
    /// Tensors that train in every phase (the plan's tensors outside the layers, and `always`).
    pub always: Vec<String>,
    pub optimizer_state: StatePolicy,
    pub phases: Vec<Phase>,
    /// The phase needing the most memory, and its estimate: what the device must hold.
    pub peak_phase: usize,
    pub peak_memory: MemoryEstimate,
    /// Sorted union of every phase's tensors: what a checkpoint keeps, what `final/` may change.
    pub ever_trainable: Vec<String>,
    /// Things the user should know (a run too short to reach every group, ...).
    pub notes: Vec<String>,
}

impl Timeline {
    /// The index of the phase that optimizer step `step` (0-based) belongs to.
    pub fn phase_at(&self, step: u64) -> usize {
        self.phases.iter().rposition(|p| p.start_step <= step).unwrap_or(0)
    }

    /// Whether a tensor trains in any phase.
    pub fn ever_trains(&self, name: &str) -> bool {
        self.ever_trainable.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }
}

/// The timeline of `spec` over `plan` (whose trainable set is the selection the schedule moves through).
pub fn timeline(
    layout: &ModelLayout,
    plan: &FreezePlan,
    spec: &ScheduleSpec,
    ctx: TimelineContext,
) -> Result<Timeline> {
    spec.validate()?;
    let trainable: BTreeSet<&str> = plan.trainable.iter().map(String::as_str).collect();
    let layer_tensors: BTreeMap<usize, Vec<String>> = layout
        .layers
        .iter()
        .map(|l| {
            let names: Vec<String> = l
                .tensors()
                .filter(|t| trainable.contains(t.name.as_str()))
                .map(|t| t.name.clone())
                .collect();
            (l.id, names)
        })
        .filter(|(_, names)| !names.is_empty())
        .collect();
    let selection: Vec<usize> = layer_tensors.keys().copied().collect();
    let in_layers: BTreeSet<&str> = layer_tensors.values().flatten().map(String::as_str).collect();
    let mut always: BTreeSet<String> = trainable
        .iter()
        .filter(|n| !in_layers.contains(*n))
        .map(|n| n.to_string())
        .collect();
    for name in &spec.always {
        let module = crate::native::resolve_extra(layout, name)?;
        always.extend(module.tensors.iter().map(|t| t.name.clone()));
    }
    if !spec.is_static() && selection.is_empty() {
        return Err(Error::BadSchedule {
            message: format!(
                "kind = {:?} moves through layers, but the selection trains none; select layers (top, bottom, \
                 layers, all_layers)",
                kind_name(spec.kind)
            ),
        });
    }
    let interval_steps = match spec.unit() {
        IntervalUnit::Steps => spec.interval(),
        IntervalUnit::Epochs => spec.interval() * ctx.steps_per_epoch.max(1),
    };
    let seed = spec.seed.unwrap_or(ctx.seed);
    let mut notes = Vec::new();
    let spans = match spec.kind {
        ScheduleKind::Static => vec![(0, ctx.total_steps, selection.clone(), BTreeMap::new())],
        ScheduleKind::Progressive => progressive(spec, &selection, interval_steps, ctx.total_steps, &mut notes)?,
        ScheduleKind::Cycle => cycle(spec, &selection, interval_steps, ctx.total_steps, seed)?,
        ScheduleKind::Sample => sample(spec, &selection, interval_steps, ctx.total_steps, seed)?,
    };
    let phases = build_phases(layout, &layer_tensors, &always, merge_repeats(spans), ctx.options);
    let peak = phases
        .iter()
        .max_by_key(|p| p.memory_bytes)
        .expect("at least one phase");
    let peak_set: BTreeSet<String> = peak.trainable.iter().cloned().collect();
    let (peak_phase, peak_memory) = (peak.index, estimate_memory(layout, &peak_set, ctx.options));
    let ever: BTreeSet<String> = phases.iter().flat_map(|p| p.trainable.iter().cloned()).collect();
    Ok(Timeline {
        kind: spec.kind,
        total_steps: ctx.total_steps,
        interval_steps,
        layers: selection,
        always: always.into_iter().collect(),
        optimizer_state: spec.state_policy(),
        phases,
        peak_phase,
        peak_memory,
        ever_trainable: ever.into_iter().collect(),
        notes,
    })
}

/// A phase before its tensors are filled in: start, end, active layers, per-layer learning-rate factors.
type Span = (u64, u64, Vec<usize>, BTreeMap<usize, f64>);

/// `layers` (ascending) in groups of `size`: counted from the bottom, or from the top for `from_top`, each group
/// ascending inside.
fn groups(layers: &[usize], size: usize, from_top: bool) -> Vec<Vec<usize>> {
    if from_top {
        let mut rev: Vec<Vec<usize>> = layers.rchunks(size).map(<[usize]>::to_vec).collect();
        rev.iter_mut().for_each(|g| g.sort_unstable());
        rev
    } else {
        layers.chunks(size).map(<[usize]>::to_vec).collect()
    }
}

fn check_fits(what: &str, n: usize, layers: &[usize]) -> Result<()> {
    if n > layers.len() {
        return Err(Error::BadSchedule {
            message: format!(
                "{what} = {n}, but the selection has {} layer{}; choose at most {}",
                layers.len(),
                if layers.len() == 1 { "" } else { "s" },
                layers.len()
            ),
        });
    }
    Ok(())
}

fn progressive(
    spec: &ScheduleSpec,
    layers: &[usize],
    every: u64,
    total: u64,
    notes: &mut Vec<String>,
) -> Result<Vec<Span>> {
    check_fits("group", spec.group(), layers)?;
    let from_top = spec.order() == BlockOrder::Descending;
    let groups = groups(layers, spec.group(), from_top);
    let decay = spec.lr_decay.unwrap_or(1.0);
    // Discriminative rates follow depth, whatever the unfreezing order: the top group trains at the base rate.
    let depth_groups = if from_top {
        groups.clone()
    } else {
        groups.iter().rev().cloned().collect()
    };
    let factor: BTreeMap<usize, f64> = depth_groups
        .iter()
        .enumerate()
        .flat_map(|(g, ids)| ids.iter().map(move |&l| (l, decay.powi(-(g as i32)))))
        .filter(|(_, f)| *f != 1.0)
        .collect();
    // Phases that start before the run ends; the last of them lasts to the end.
    let reachable = groups.len().min(total.div_ceil(every).max(1) as usize);
    if reachable < groups.len() {
        notes.push(format!(
            "the run ends at step {total}, before {} of the {} groups unfreeze; lengthen it or shorten the interval",
            groups.len() - reachable,
            groups.len()
        ));
    }
    let mut active = Vec::new();
    let mut spans = Vec::new();
    for (p, group) in groups.iter().take(reachable).enumerate() {
        active.extend(group.iter().copied());
        active.sort_unstable();
        let start = p as u64 * every;
        let end = if p + 1 == reachable { total } else { start + every };
        let scale = active.iter().filter_map(|l| factor.get(l).map(|f| (*l, *f))).collect();
        spans.push((start, end, active.clone(), scale));
    }
    Ok(spans)
}

fn cycle(spec: &ScheduleSpec, layers: &[usize], every: u64, total: u64, seed: u64) -> Result<Vec<Span>> {
    check_fits("group", spec.group(), layers)?;
    let blocks = groups(layers, spec.group(), false);
    let n = blocks.len();
    let order = spec.order();
    let start = match (spec.start_block, order) {
        (Some(s), _) if s >= n => {
            return Err(Error::BadSchedule {
                message: format!("start_block = {s}, but there are {n} blocks (0-{})", n - 1),
            })
        }
        (Some(s), _) => s,
        (None, BlockOrder::Descending) => n - 1,
        (None, _) => 0,
    };
    let mut rng = seeded(seed);
    let mut round: Vec<usize> = Vec::new();
    let mut spans = Vec::new();
    let phases = total.div_ceil(every).max(1);
    for i in 0..phases {
        let b = match order {
            BlockOrder::Ascending => (start + i as usize) % n,
            BlockOrder::Descending => (start + n - (i as usize % n)) % n,
            BlockOrder::Fixed => start,
            BlockOrder::Random => {
                if round.is_empty() {
                    round = permutation(n, &mut rng);
                    if i == 0 && spec.start_block.is_some() {
                        let at = round.iter().position(|&x| x == start).expect("in the permutation");
                        round.swap(at, n - 1);
                    }
                }
                round.pop().expect("refilled")
            }
        };
        spans.push((
            i * every,
            ((i + 1) * every).min(total),
            blocks[b].clone(),
            BTreeMap::new(),
        ));
    }
    Ok(spans)
}

fn sample(spec: &ScheduleSpec, layers: &[usize], every: u64, total: u64, seed: u64) -> Result<Vec<Span>> {
    check_fits("gamma", spec.gamma(), layers)?;
    let mut rng = seeded(seed);
    let phases = total.div_ceil(every).max(1);
    Ok((0..phases)
        .map(|i| {
            // A partial Fisher–Yates: the first gamma of a shuffle, so no layer is drawn twice in one phase.
            let mut pool = layers.to_vec();
            for j in 0..spec.gamma() {
                let k = j + (rng.next_u64() % (pool.len() - j) as u64) as usize;
                pool.swap(j, k);
            }
            let mut drawn = pool[..spec.gamma()].to_vec();
            drawn.sort_unstable();
            (i * every, ((i + 1) * every).min(total), drawn, BTreeMap::new())
        })
        .collect())
}

/// A seeded generator; the mixing keeps seed 0 (a fixed point of xorshift) usable.
fn seeded(seed: u64) -> Rng {
    Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

/// A permutation of `0..n` (Fisher–Yates).
fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    v
}

/// Consecutive spans with the same layers and rates are one phase: nothing changes at their boundary.
fn merge_repeats(spans: Vec<Span>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if last.2 == s.2 && last.3 == s.3 => last.1 = s.1,
            _ => out.push(s),
        }
    }
    out
}

fn build_phases(
    layout: &ModelLayout,
    layer_tensors: &BTreeMap<usize, Vec<String>>,
    always: &BTreeSet<String>,
    spans: Vec<Span>,
    options: PlanOptions,
) -> Vec<Phase> {
    let params: BTreeMap<&str, u64> = layout.tensors().map(|t| (t.name.as_str(), t.params)).collect();
    spans
        .into_iter()
        .enumerate()
        .map(|(index, (start_step, end_step, layers, scale))| {
            let mut set = always.clone();
            let mut lr_scale = BTreeMap::new();
            for l in &layers {
                let names = &layer_tensors[l];
                set.extend(names.iter().cloned());
                if let Some(f) = scale.get(l) {
                    lr_scale.extend(names.iter().map(|n| (n.clone(), *f)));
                }
            }
            let memory_bytes = estimate_memory(layout, &set, options).total_bytes;
            Phase {
                index,
                start_step,
                end_step,
                layers,
                trainable_params: set.iter().map(|n| params.get(n.as_str()).copied().unwrap_or(0)).sum(),
                trainable: set.into_iter().collect(),
                lr_scale,
                memory_bytes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
