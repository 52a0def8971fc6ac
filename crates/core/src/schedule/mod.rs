//! Layer schedules: the `[freeze.schedule]` table of a run config or preset. A schedule moves the trainable set
//! through the layers the user selected (ids, top/bottom N, module filters) during a run:
//!
//! - `static`: the selection trains throughout (what a run without a schedule does).
//! - `progressive` (gradual unfreezing, ULMFiT): the top `group` layers first, the next lower group added every
//!   `interval`, until the whole selection trains; optionally each group a factor `lr_decay` slower than the one
//!   above it (discriminative learning rates; 2.6 in the paper).
//! - `cycle` (block coordinate descent, BAdam): one block of `group` layers at a time, switching every `interval`
//!   steps, in `order` ascending | descending | random (a fresh permutation each round, no repeats) | fixed (never
//!   switches); BAdam resets the optimizer state at each switch.
//! - `sample` (layer sampling, LISA): every `interval` steps, `gamma` layers drawn uniformly without replacement.
//!
//! The plan's modules outside the layers (`freeze.extra`) and the schedule's `always` modules train in every phase.
//! [`timeline`] turns plan + schedule into phases with exact trainable tensor sets; the trainer, the CLI and the app
//! only read that timeline.

pub mod interop;
mod timeline;

pub use timeline::{timeline, Phase, Timeline, TimelineContext};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Static,
    Progressive,
    Cycle,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum IntervalUnit {
    Steps,
    Epochs,
}

/// The order blocks (cycle) or groups (progressive) are visited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum BlockOrder {
    Ascending,
    Descending,
    Random,
    Fixed,
}

/// What happens to the optimizer state of a tensor when the trainable set changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum StatePolicy {
    /// Every tensor's moments and step count start over at each phase change (BAdam).
    Reset,
    /// A tensor's moments and step count survive the phases it sits out (LISA, as LMFlow leaves them).
    Keep,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Length of a phase. Defaults: progressive 1 epoch, cycle 50 steps (BAdam's `badam_switch_interval`), sample
    /// 20 steps (LMFlow's `lisa_interval_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// `steps` or `epochs`; default steps, except progressive (epochs, as in ULMFiT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<IntervalUnit>,
    /// Layers per group (progressive) or block (cycle); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// cycle: default ascending; progressive: descending (top group first) or ascending (bottom first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<BlockOrder>,
    /// cycle: the block (0-based, in ascending layer order) the run starts on; default the first in `order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_block: Option<usize>,
    /// sample: layers per phase; default 2 (LMFlow's `lisa_activated_layers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<usize>,
    /// cycle with random order, sample: the seed of the draws; default the run's `training.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Modules outside the layers that train in every phase (`embed_tokens`, `norm`, `lm_head`), as `extra`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub always: Vec<String>,
    /// progressive: each group's learning rate is the one above it divided by this (> 1 makes lower layers slower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<f64>,
    /// Default: reset for cycle (BAdam), keep otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_state: Option<StatePolicy>,
}

impl ScheduleSpec {
    pub fn is_static(&self) -> bool {
        self.kind == ScheduleKind::Static
    }

    pub fn state_policy(&self) -> StatePolicy {
        self.optimizer_state.unwrap_or(match self.kind {
            ScheduleKind::Cycle => StatePolicy::Reset,
            _ => StatePolicy::Keep,
        })
    }

    pub fn group(&self) -> usize {
        self.group.unwrap_or(1)
    }

    pub fn gamma(&self) -> usize {
        self.gamma.unwrap_or(2)
    }

    pub fn unit(&self) -> IntervalUnit {
        self.unit.unwrap_or(match self.kind {
            ScheduleKind::Progressive => IntervalUnit::Epochs,
            _ => IntervalUnit::Steps,
        })
    }

    pub fn interval(&self) -> u64 {
        self.interval.unwrap_or(match self.kind {
            ScheduleKind::Progressive => 1,
            ScheduleKind::Sample => 20,
            _ => 50,
        })
    }

    pub fn order(&self) -> BlockOrder {
        self.order.unwrap_or(match self.kind {
            ScheduleKind::Progressive => BlockOrder::Descending,
            _ => BlockOrder::Ascending,
        })
    }

    /// Rejects keys that do not apply to the kind, and values no schedule can have.
    pub fn validate(&self) -> Result<()> {
        let kind = self.kind_name();
        let set: [(&str, bool, &[ScheduleKind]); 8] = [
            ("interval", self.interval.is_some(), &MOVING),
            ("unit", self.unit.is_some(), &MOVING),
            (
                "group",
                self.group.is_some(),
                &[ScheduleKind::Progressive, ScheduleKind::Cycle],
            ),
            (
                "order",
                self.order.is_some(),
                &[ScheduleKind::Progressive, ScheduleKind::Cycle],
            ),
            ("start_block", self.start_block.is_some(), &[ScheduleKind::Cycle]),
            ("gamma", self.gamma.is_some(), &[ScheduleKind::Sample]),
            ("lr_decay", self.lr_decay.is_some(), &[ScheduleKind::Progressive]),
            ("optimizer_state", self.optimizer_state.is_some(), &MOVING),
        ];
        for (key, present, kinds) in set {
            if present && !kinds.contains(&self.kind) {
                let names: Vec<String> = kinds.iter().map(|k| format!("{:?}", kind_name(*k))).collect();
                return Err(bad(format!(
                    "`{key}` does not apply to kind = {kind:?}; it is for kind = {}",
                    names.join(" or ")
                )));
            }
        }
        if self.seed.is_some() && !(self.kind == ScheduleKind::Sample || self.order() == BlockOrder::Random) {
            return Err(bad(format!(
                "`seed` does not apply to kind = {kind:?} without order = \"random\": nothing is drawn"
            )));
        }
        if self.interval == Some(0) {
            return Err(bad("interval = 0: a phase lasts at least one step (or epoch)".into()));
        }
        if self.group == Some(0) || self.gamma == Some(0) {
            return Err(bad("group and gamma count layers: at least 1".into()));
        }
        if self.kind == ScheduleKind::Progressive
            && self.order() != BlockOrder::Descending
            && self.order() != BlockOrder::Ascending
        {
            return Err(bad(
                "progressive unfreezing goes order = \"descending\" (top first) or \"ascending\" (bottom first)".into(),
            ));
        }
        if let Some(d) = self.lr_decay {
            if !(d.is_finite() && d > 0.0) {
                return Err(bad(format!("lr_decay = {d}: a positive factor (2.6 in ULMFiT)")));
            }
        }
        Ok(())
    }

    fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }
}

const MOVING: [ScheduleKind; 3] = [ScheduleKind::Progressive, ScheduleKind::Cycle, ScheduleKind::Sample];

pub fn kind_name(kind: ScheduleKind) -> &'static str {
    match kind {
        ScheduleKind::Static => "static",
        ScheduleKind::Progressive => "progressive",
        ScheduleKind::Cycle => "cycle",
        ScheduleKind::Sample => "sample",
    }
}

fn bad(message: String) -> Error {
    Error::BadSchedule { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ScheduleSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_follow_the_reference_implementations() {
        let cycle = parse("kind = \"cycle\"");
        assert_eq!(
            (cycle.interval(), cycle.group(), cycle.order()),
            (50, 1, BlockOrder::Ascending)
        );
        assert_eq!(cycle.state_policy(), StatePolicy::Reset);
        let sample = parse("kind = \"sample\"");
        assert_eq!(
            (sample.interval(), sample.gamma(), sample.state_policy()),
            (20, 2, StatePolicy::Keep)
        );
        let progressive = parse("kind = \"progressive\"");
        assert_eq!((progressive.interval(), progressive.unit()), (1, IntervalUnit::Epochs));
        assert_eq!(progressive.order(), BlockOrder::Descending);
        assert!(parse("").is_static());
    }

    #[test]
    fn unknown_keys_and_keys_of_another_kind_are_errors() {
        let err = toml::from_str::<ScheduleSpec>("kind = \"cycle\"\nintervall = 5").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = parse("kind = \"cycle\"\ngamma = 2").validate().unwrap_err().to_string();
        assert!(err.contains("`gamma` does not apply to kind = \"cycle\""), "{err}");
        let err = parse("interval = 5").validate().unwrap_err().to_string();
        assert!(err.contains("kind = \"static\""), "{err}");
        let err = parse("kind = \"cycle\"\nseed = 3").validate().unwrap_err().to_string();
        assert!(err.contains("nothing is drawn"), "{err}");
        assert!(parse("kind = \"cycle\"\norder = \"random\"\nseed = 3")
            .validate()
            .is_ok());
        let err = parse("kind = \"sample\"\ninterval = 0")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("interval = 0"), "{err}");
        let err = parse("kind = \"progressive\"\norder = \"random\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("descending"), "{err}");
        let err = parse("kind = \"progressive\"\nlr_decay = -1.0")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("positive"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let spec = parse(
            "kind = \"progressive\"\ninterval = 2\nunit = \"steps\"\ngroup = 2\nlr_decay = 2.6\nalways = [\"norm\"]",
        );
        assert_eq!(parse(&toml::to_string(&spec).unwrap()), spec);
    }
}
