//! Phase changes of a layer schedule, as the timeline computed in core says: the trainable set changes (tensors
//! that stop training keep their trained values as constants), the decoder is rewired to the new tensors, the
//! optimizer follows the schedule's state policy, and the phase is announced to the event sink and metrics.jsonl.

use super::Run;
use crate::error::{candle, Result};
use crate::model::Decoder;
use candle_core::Var;
use freezetune_core::events::{EventSink, TrainEvent};
use freezetune_core::schedule::{Phase, ScheduleKind};

impl Run {
    /// Enters the phase the next step belongs to, if it is not the current one.
    pub(super) fn enter_phase_if_due(&mut self, sink: &dyn EventSink<TrainEvent>) -> Result<()> {
        let due = self.timeline.phase_at(self.progress.step);
        if self.phase == Some(due) {
            return Ok(());
        }
        let phase = &self.timeline.phases[due];
        self.params.set_trainable(&phase.trainable)?;
        self.model = Decoder::new(self.decoder_config.clone(), &self.params, &self.device.device)?;
        let vars: Vec<(String, Var)> = self.params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        self.optimizer
            .switch_params(vars, self.timeline.optimizer_state)
            .map_err(candle("moving the optimizer to the new phase's tensors"))?;
        self.optimizer.set_lr_scale(lr_scales(phase, self.optimizer.params()));
        self.phase = Some(due);
        if self.timeline.kind != ScheduleKind::Static {
            let event = TrainEvent::Phase {
                step: self.progress.step,
                phase: due,
                phases: self.timeline.phases.len(),
                end_step: phase.end_step,
                layers: phase.layers.clone(),
                trainable_params: phase.trainable_params,
            };
            tracing::info!(phase = due, step = self.progress.step, layers = ?phase.layers, "layer schedule phase");
            self.record(&event)?;
            sink.emit(event);
        }
        Ok(())
    }
}

/// The learning-rate factor of each of the optimizer's tensors in `phase` (1 unless the timeline says otherwise).
pub(super) fn lr_scales(phase: &Phase, params: &[(String, Var)]) -> Vec<f64> {
    params
        .iter()
        .map(|(name, _)| phase.lr_scale.get(name).copied().unwrap_or(1.0))
        .collect()
}
