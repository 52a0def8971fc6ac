//! How a block op (a whole sublayer as one candle op, `mlp.rs` and `attn_block.rs`) hands candle the gradients
//! of its trainable weights. candle gives a gradient only to an op's operands, and a custom op has at most three:
//! the block op takes the input and two trainable weights, and each further pair rides on a [`Tap`] on the input —
//! the identity on the way forward; on the way back it hands candle the gradients the block op left for its pair.
//! The block op reads its weights' values from its own copy of them, not from these operands.

use super::f32s;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// What the block op is applied to.
pub(super) struct Wired {
    /// The input, through the taps if there are any.
    pub input: Tensor,
    /// The block op's two weight operands: the first two trainable weights (any weight where there are fewer).
    pub operands: (Tensor, Tensor),
    pub handoff: Handoff,
}

/// The block op's side of the wiring: which weights its own operands carry, and where it leaves the rest for the
/// taps.
pub(super) struct Handoff {
    /// The weights (indices into the block's weight list) whose gradients the op's second and third operands
    /// carry.
    slots: [Option<usize>; 2],
    /// Whether the input comes through a tap, which must get a gradient for its backward pass to run (candle
    /// requires one of every node on the way to a variable) even where it hands none on.
    tapped: bool,
    /// Per weight, the gradient the block computed for a tap to hand on.
    grads: Arc<Mutex<Vec<Option<Tensor>>>>,
    /// Whether the input (before any tap) wants a gradient.
    pub input_grad: bool,
    /// Per weight, whether it wants a gradient.
    pub trainable: Vec<bool>,
}

impl Handoff {
    /// Whether a backward pass will run through the block: only then need it keep anything.
    pub fn backward_runs(&self) -> bool {
        self.input_grad || self.trainable.contains(&true)
    }

    /// From the block's backward pass, every weight's gradient (in the block's order) and the input's: leaves
    /// the taps' gradients for them and returns the op's own three.
    pub fn hand_out(
        &self,
        mut grads: Vec<Option<Tensor>>,
        dx: Option<Tensor>,
        dy: &Tensor,
    ) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
        let mut take = |slot: Option<usize>| slot.and_then(|i| grads[i].take());
        let (a, b) = (take(self.slots[0]), take(self.slots[1]));
        *self.grads.lock().expect("block gradients") = grads;
        // Any tensor will do for a tap that wants no input gradient: it drops it.
        let dx = dx.or_else(|| self.tapped.then(|| dy.clone()));
        (dx, a, b)
    }
}

/// Wires `x` and the block's weights (`all`, in the block's order) for a block op.
pub(super) fn wire(x: &Tensor, all: &[Tensor]) -> Result<Wired> {
    let trainable: Vec<usize> = (0..all.len()).filter(|&i| all[i].track_op()).collect();
    let grads = Arc::new(Mutex::new(vec![None; all.len()]));
    let mut input = x.clone();
    for pair in trainable.get(2..).unwrap_or_default().chunks(2) {
        let slots = [Some(pair[0]), pair.get(1).copied()];
        let second = &all[pair.get(1).copied().unwrap_or(pair[0])];
        let tap = Tap {
            grads: grads.clone(),
            slots,
        };
        input = input.apply_op3(&all[pair[0]], second, tap)?;
    }
    let slot = |i: usize| trainable.get(i).copied();
    let operand = |i: usize| all[slot(i).unwrap_or(0)].clone();
    Ok(Wired {
        operands: (operand(0), operand(1)),
        handoff: Handoff {
            slots: [slot(0), slot(1)],
            tapped: trainable.len() > 2,
            grads,
            input_grad: x.track_op(),
            trainable: all.iter().map(Tensor::track_op).collect(),
        },
        input,
    })
}

/// The identity on the block's input, carrying two more weights: its backward pass passes the input's gradient
/// down and hands candle the gradients the block op left for those weights.
struct Tap {
    grads: Arc<Mutex<Vec<Option<Tensor>>>>,
    slots: [Option<usize>; 2],
}

impl CustomOp3 for Tap {
    fn name(&self) -> &'static str {
        "fused-block-tap"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(f32s(xs, xl, "block input")?.to_vec()),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut grads = self.grads.lock().expect("block gradients");
        let mut take = |slot: Option<usize>| slot.and_then(|i| grads[i].take());
        let (a, b) = (take(self.slots[0]), take(self.slots[1]));
        Ok((x.track_op().then(|| dy.clone()), a, b))
    }
}
