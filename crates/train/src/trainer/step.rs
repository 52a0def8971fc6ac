//! One optimizer step: the micro-batches it takes, their forward and backward passes with gradients summed, then
//! one read from the device (the loss and the gradients' squared norm together), clipping, f16 loss-scale
//! bookkeeping and the update.

use super::scaler::Verdict;
use super::Run;
use crate::data::Example;
use crate::error::{candle, Result, TrainError};
use crate::model::Batch;
use crate::optim::{accumulate, squared_norm};
use crate::schedule::{lr_at, shuffle};
use candle_core::{DType, Tensor};
use freezetune_core::events::TrainEvent;
use freezetune_core::run_config::TrainingSection;

/// The order examples are visited in during `epoch`.
pub(super) fn epoch_order(t: &TrainingSection, examples: usize, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..examples).collect();
    if t.shuffle {
        shuffle(&mut order, t.seed.wrapping_add(epoch));
    }
    order
}

/// What one step measured, read back from the device at once.
struct StepStats {
    loss: f64,
    grad_norm: f64,
}

impl Run {
    /// The examples of the next step's micro-batches, advancing the data cursor (and the epoch).
    pub(super) fn next_micro_batches(&mut self) -> Vec<Vec<usize>> {
        let t = &self.config.training;
        let mut micro = Vec::with_capacity(t.gradient_accumulation_steps);
        for _ in 0..t.gradient_accumulation_steps {
            if self.progress.cursor == self.micro_per_epoch {
                self.progress.epoch += 1;
                self.progress.cursor = 0;
                self.order = epoch_order(t, self.data.train.len(), self.progress.epoch);
            }
            let start = self.progress.cursor * t.batch_size;
            micro.push(self.order[start..(start + t.batch_size).min(self.order.len())].to_vec());
            self.progress.cursor += 1;
        }
        micro
    }

    /// Runs one optimizer step over `micro` and returns its event.
    pub(super) fn step(&mut self, micro: &[Vec<usize>]) -> Result<TrainEvent> {
        let t = &self.config.training;
        let lr = lr_at(
            t.lr_scheduler,
            t.learning_rate,
            t.warmup_steps,
            self.total_steps,
            self.progress.step,
        );
        let loss_scale = self.progress.scaler.map(|s| s.scale);
        let (mut grads, loss, input_tokens) = self.gradients(micro, loss_scale.unwrap_or(1.0))?;
        let stats = read_stats(&loss, &grads, loss_scale.unwrap_or(1.0))?;
        let finite = stats.loss.is_finite() && stats.grad_norm.is_finite();
        let verdict = match &mut self.progress.scaler {
            Some(scaler) => {
                let v = scaler.judge(finite);
                if v == Verdict::Skip && scaler.exhausted() {
                    return Err(overflow_error(self.progress.step + 1));
                }
                v
            }
            None => Verdict::Apply { unscale: 1.0 },
        };
        if let Verdict::Apply { unscale } = verdict {
            let mut factor = unscale;
            if t.max_grad_norm > 0.0 && stats.grad_norm > t.max_grad_norm {
                factor *= t.max_grad_norm / (stats.grad_norm + 1e-6);
            }
            if factor != 1.0 {
                for g in grads.iter_mut().flatten() {
                    *g = (&*g * factor).map_err(candle("scaling gradients"))?;
                }
            }
            self.optimizer.step(&grads, lr).map_err(candle("optimizer step"))?;
        }
        let p = &mut self.progress;
        p.step += 1;
        p.tokens += input_tokens;
        p.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();
        p.optimizer_step = self.optimizer.steps_taken();
        self.last_loss = Some(stats.loss);
        Ok(TrainEvent::Step {
            step: p.step,
            epoch: p.epoch as f64 + p.cursor as f64 / self.micro_per_epoch as f64,
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens: p.tokens,
            tokens_per_second: p.tokens as f64 / p.elapsed_s.max(1e-9),
            elapsed_s: p.elapsed_s,
            loss_scale,
            skipped: verdict == Verdict::Skip,
        })
    }

    /// Forward and backward passes over the micro-batches: the summed parameter gradients (of the loss times
    /// `scale`), the scaled loss on the device, and the number of input tokens.
    fn gradients(&self, micro: &[Vec<usize>], scale: f64) -> Result<(Vec<Option<Tensor>>, Tensor, u64)> {
        let examples: Vec<Vec<&Example>> = micro
            .iter()
            .map(|idx| idx.iter().map(|&i| &self.data.train[i]).collect())
            .collect();
        let step_tokens: usize = examples.iter().flatten().map(|e| e.learned_tokens()).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; self.optimizer.params().len()];
        let mut loss_sum: Option<Tensor> = None;
        let mut input_tokens = 0u64;
        for batch_examples in &examples {
            let (batch, labels) = collate(batch_examples);
            input_tokens += batch.lengths.iter().sum::<usize>() as u64;
            // Every token of the optimizer step weighs the same, however the step is split into micro-batches.
            let token_weight = scale / step_tokens.max(1) as f64;
            let loss = if self.config.training.gradient_checkpointing {
                self.model
                    .checkpointed_backward(&batch, &labels, token_weight, &mut |store| {
                        accumulate(&mut grads, self.optimizer.collect(store)).map_err(candle("accumulating gradients"))
                    })?
            } else {
                let (mean, n) = self.model.loss(&batch, &labels)?;
                let loss = (mean * (n as f64 * token_weight)).map_err(candle("loss"))?;
                let store = loss.backward().map_err(candle("backward pass"))?;
                accumulate(&mut grads, self.optimizer.collect(&store)).map_err(candle("accumulating gradients"))?;
                loss.detach()
            };
            loss_sum = Some(match loss_sum {
                Some(sum) => (sum + loss).map_err(candle("loss"))?,
                None => loss,
            });
        }
        let loss = loss_sum.ok_or_else(|| TrainError::Config {
            path: self.config.data.train.clone(),
            reason: "an optimizer step got no batch".into(),
        })?;
        Ok((grads, loss, input_tokens))
    }
}

/// The step's one host read: the loss and the gradients' squared norm, stacked on the device, unscaled after.
fn read_stats(loss: &Tensor, grads: &[Option<Tensor>], scale: f64) -> Result<StepStats> {
    let err = candle("reading the step's loss and gradient norm");
    let sq = squared_norm(grads, loss.device()).map_err(&err)?;
    let both = Tensor::stack(&[&loss.to_dtype(DType::F32).map_err(&err)?, &sq], 0).map_err(&err)?;
    let v = both.to_vec1::<f32>().map_err(&err)?;
    Ok(StepStats {
        loss: v[0] as f64 / scale,
        grad_norm: (v[1] as f64).sqrt() / scale,
    })
}

fn overflow_error(step: u64) -> TrainError {
    TrainError::Config {
        path: "model.dtype".into(),
        reason: format!(
            "step {step}: the f16 gradients overflow even at the smallest loss scale; train in bf16 or f32 \
             (model.dtype), or lower the learning rate"
        ),
    }
}

/// Token ids of a batch, right-padded, and its labels padded with -100.
pub(crate) fn collate(examples: &[&Example]) -> (Batch, Vec<Vec<i64>>) {
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let labels = examples
        .iter()
        .map(|e| {
            e.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(-100, t - e.labels.len()))
                .collect()
        })
        .collect();
    let batch = Batch {
        input_ids: examples.iter().map(|e| e.input_ids.clone()).collect(),
        lengths: examples.iter().map(|e| e.input_ids.len()).collect(),
    };
    (batch, labels)
}
