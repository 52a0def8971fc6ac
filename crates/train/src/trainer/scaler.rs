//! Dynamic loss scaling for f16 runs, as torch's `GradScaler`: the loss is multiplied by a large scale so that
//! small gradients survive f16's narrow range; a step whose gradients overflow (inf/nan) is skipped and the scale
//! halved; after `GROWTH_INTERVAL` good steps in a row the scale doubles. bf16 and f32 runs need none (bf16 has
//! f32's exponent range).

use serde::{Deserialize, Serialize};

const INIT_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: u64 = 2000;
/// Below this the run is not recovering: every step overflows even with a tiny scale.
const MIN_SCALE: f64 = 1.0 / 65536.0;

/// The scaler's state, saved in checkpoints so a resumed run scales exactly as an uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the last change of scale.
    pub good_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }
}

/// What the scaler made of one step's gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Finite: apply the update with gradients divided by the scale that produced them.
    Apply { unscale: f64 },
    /// Overflowed: skip the update.
    Skip,
}

impl LossScaler {
    /// Judges a step by whether its (scaled) loss and gradient norm are finite, and sets the next step's scale.
    pub fn judge(&mut self, finite: bool) -> Verdict {
        if !finite {
            self.scale = (self.scale * BACKOFF_FACTOR).max(MIN_SCALE);
            self.good_steps = 0;
            return Verdict::Skip;
        }
        let unscale = 1.0 / self.scale;
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= GROWTH_FACTOR;
            self.good_steps = 0;
        }
        Verdict::Apply { unscale }
    }

    /// True once the scale has hit its floor and the step still overflows: the run cannot recover.
    pub fn exhausted(&self) -> bool {
        self.scale <= MIN_SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_skips_and_halves_growth_doubles_after_the_interval() {
        let mut s = LossScaler::default();
        assert_eq!(s.judge(false), Verdict::Skip);
        assert_eq!(s.scale, 32768.0);
        assert_eq!(s.judge(true), Verdict::Apply { unscale: 1.0 / 32768.0 });
        for _ in 1..GROWTH_INTERVAL {
            s.judge(true);
        }
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.good_steps, 0);
        for _ in 0..40 {
            s.judge(false);
        }
        assert!(s.exhausted());
    }
}
