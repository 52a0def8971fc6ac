//! Adafactor (`optimizer = "adafactor"`) as transformers' `Adafactor` runs under HF Trainer's `optim="adafactor"`:
//! the learning rate as given (`relative_step=False`, `scale_parameter=False`), no first moment (`beta1=None`),
//! eps (1e-30, 1e-3), update clipping at RMS 1.0 and `decay_rate` -0.8. A matrix keeps only running means of its
//! squared gradient's rows and columns (their outer product, normalised, stands for the full second moment), so its
//! state is (rows + columns) values instead of AdamW's 2 × rows × columns; a vector keeps a full second moment.
//! Computed with candle ops in f32 (every device), one tensor at a time.

use crate::optim_state::SavedState;
use candle_core::{DType, Device, Result, Tensor, Var, D};
use std::collections::BTreeMap;

/// Added to the squared gradient (transformers' `eps[0]`).
const EPS_SQUARED: f64 = 1e-30;
/// Updates are scaled down to this root mean square.
const CLIP_THRESHOLD: f64 = 1.0;
/// β2 at step t is 1 − t^DECAY_RATE.
const DECAY_RATE: f64 = -0.8;

/// A tensor's second-moment estimate.
#[derive(Clone)]
pub enum SecondMoment {
    /// Matrices (and higher ranks): running means over the last dimension (`row`) and the one before (`col`).
    Factored { row: Tensor, col: Tensor },
    /// Vectors: the full running mean.
    Full(Tensor),
}

#[derive(Clone)]
pub struct AdafactorState {
    pub v: SecondMoment,
    pub step: u64,
}

impl AdafactorState {
    /// Zero state for a gradient shaped like `g`.
    pub fn zeros(g: &Tensor) -> Result<AdafactorState> {
        let dims = g.dims();
        let v = if dims.len() >= 2 {
            let row = Tensor::zeros(&dims[..dims.len() - 1], DType::F32, g.device())?;
            let mut col_dims = dims[..dims.len() - 2].to_vec();
            col_dims.push(dims[dims.len() - 1]);
            SecondMoment::Factored {
                row,
                col: Tensor::zeros(col_dims, DType::F32, g.device())?,
            }
        } else {
            SecondMoment::Full(Tensor::zeros(dims, DType::F32, g.device())?)
        };
        Ok(AdafactorState { v, step: 0 })
    }
}

impl SavedState for AdafactorState {
    /// Checkpoint tensors: `vr.<name>` / `vc.<name>` (factored) or `v.<name>`, and the step count `t.<name>`.
    fn save(&self, name: &str, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        match &self.v {
            SecondMoment::Factored { row, col } => {
                out.insert(format!("vr.{name}"), row.clone());
                out.insert(format!("vc.{name}"), col.clone());
            }
            SecondMoment::Full(v) => {
                out.insert(format!("v.{name}"), v.clone());
            }
        }
        out.insert(format!("t.{name}"), Tensor::new(self.step as i64, &Device::Cpu)?);
        Ok(())
    }

    /// What [`AdafactorState::save`] wrote for `name`, if anything.
    fn load(name: &str, tensors: &BTreeMap<String, Tensor>, default_step: u64) -> Result<Option<AdafactorState>> {
        let get = |prefix: &str| tensors.get(&format!("{prefix}.{name}")).cloned();
        let v = match (get("vr"), get("vc"), get("v")) {
            (Some(row), Some(col), _) => SecondMoment::Factored { row, col },
            (_, _, Some(v)) => SecondMoment::Full(v),
            _ => return Ok(None),
        };
        let step = match get("t") {
            Some(t) => t.to_dtype(DType::I64)?.to_scalar::<i64>()? as u64,
            None => default_step,
        };
        Ok(Some(AdafactorState { v, step }))
    }

    fn to_device(self, device: &Device) -> Result<AdafactorState> {
        let v = match &self.v {
            SecondMoment::Factored { row, col } => SecondMoment::Factored {
                row: row.to_device(device)?,
                col: col.to_device(device)?,
            },
            SecondMoment::Full(v) => SecondMoment::Full(v.to_device(device)?),
        };
        Ok(AdafactorState { v, step: self.step })
    }
}

/// Root mean square of `t`, as a scalar tensor.
fn rms(t: &Tensor) -> Result<Tensor> {
    t.sqr()?.mean_all()?.sqrt()
}

/// One Adafactor update of `var` from gradient `g` at learning rate `lr` (decoupled weight decay scaled by `lr`,
/// as transformers applies it).
pub fn step(var: &Var, g: &Tensor, state: AdafactorState, lr: f64, weight_decay: f64) -> Result<AdafactorState> {
    let g = g.to_dtype(DType::F32)?;
    let step = state.step + 1;
    let beta2t = 1.0 - (step as f64).powf(DECAY_RATE);
    let squared = (g.sqr()? + EPS_SQUARED)?;
    let (update, v) = match state.v {
        SecondMoment::Factored { row, col } => {
            let rank = g.rank();
            let row = ((row * beta2t)? + (squared.mean(D::Minus1)? * (1.0 - beta2t))?)?;
            let col = ((col * beta2t)? + (squared.mean(rank - 2)? * (1.0 - beta2t))?)?;
            // transformers' _approx_sq_grad: rsqrt(row / mean(row)) ⊗ rsqrt(col).
            let r = row
                .broadcast_div(&row.mean_keepdim(D::Minus1)?)?
                .sqrt()?
                .recip()?
                .unsqueeze(D::Minus1)?;
            let c = col.unsqueeze(rank - 2)?.sqrt()?.recip()?;
            let update = r.broadcast_mul(&c)?.mul(&g)?;
            (update, SecondMoment::Factored { row, col })
        }
        SecondMoment::Full(v) => {
            let v = ((v * beta2t)? + (squared * (1.0 - beta2t))?)?;
            (v.sqrt()?.recip()?.mul(&g)?, SecondMoment::Full(v))
        }
    };
    let clip = (rms(&update)? / CLIP_THRESHOLD)?.maximum(1.0)?;
    let update = (update.broadcast_div(&clip)? * lr)?;
    let p = var.as_tensor();
    let decayed = if weight_decay != 0.0 {
        (p + (p * (-weight_decay * lr))?)?
    } else {
        p.clone()
    };
    var.set(&(decayed - update)?)?;
    Ok(AdafactorState { v, step })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal to f32 rounding: within 1e-6 of the larger magnitude.
    fn assert_close(ours: &Tensor, theirs: &Tensor, what: &str) {
        let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()),
                "{what}: {x} against transformers' {y}"
            );
        }
    }

    /// transformers' own Adafactor, three steps on a matrix and a vector
    /// (tests/fixtures/scripts/make_adafactor_reference.py).
    #[test]
    fn three_steps_match_transformers_adafactor() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/reference/adafactor.safetensors"
        );
        let r = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let meta: Vec<f64> = r["meta"]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let (lr, weight_decay) = (meta[0], meta[1]);
        for which in ["matrix", "vector"] {
            let var = Var::from_tensor(&r[&format!("{which}.p0")]).unwrap();
            let mut state = AdafactorState::zeros(var.as_tensor()).unwrap();
            for step in 1..=3 {
                let g = &r[&format!("{which}.g{}", step - 1)];
                state = super::step(&var, g, state, lr, weight_decay).unwrap();
                let want = &r[&format!("{which}.p{step}")];
                let diff = (var.as_tensor() - want).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-6, "{which}, step {step}: {diff} from transformers'");
            }
            match &state.v {
                SecondMoment::Factored { row, col } => {
                    assert_close(row, &r[&format!("{which}.row")], &format!("{which} row"));
                    assert_close(col, &r[&format!("{which}.col")], &format!("{which} col"));
                }
                SecondMoment::Full(v) => assert_close(v, &r[&format!("{which}.v")], &format!("{which} v")),
            }
        }
    }
}
