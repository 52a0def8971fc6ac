//! How a block op (a whole sublayer as one candle op, `mlp.rs` and `attn_block.rs`) hands candle the gradients
//! of its trainable weights. candle gives a gradient only to an op's operands, and a custom op has at most three:
//! the block op takes the input and, as its other two, the first two trainable weights; where more train, the
//! third operand is instead the end of a chain of [`Tap`]s, one-value ops whose operands are the remaining
//! weights (three on the first tap, two more on each next one). candle's backward pass reaches the taps after the
//! block op, and each hands on the gradients the block op left for its weights. The block op reads its weights'
//! values from its own copy of them, not from these operands.

use super::with_values;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// What the block op is applied to.
pub(super) struct Wired {
    /// The input, as given.
    pub input: Tensor,
    /// The block op's other two operands: the first two trainable weights (any weight where fewer train), or the
    /// first and the end of the tap chain.
    pub operands: (Tensor, Tensor),
    pub handoff: Handoff,
}

/// The block op's side of the wiring: which weights its own operands carry, and where it leaves the rest for the
/// taps.
pub(super) struct Handoff {
    /// The weight (index into the block's weight list) whose gradient the op's second operand carries, and the
    /// third's; None for the third where it is the tap chain.
    slots: [Option<usize>; 2],
    /// Whether the third operand is the tap chain, which must get a gradient for the taps' backward passes to run
    /// (candle requires one of every node on the way to a variable).
    chained: bool,
    /// Per weight, the gradient the block computed for a tap to hand on.
    grads: Arc<Mutex<Vec<Option<Tensor>>>>,
    /// Whether the input wants a gradient.
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
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut take = |slot: Option<usize>| slot.and_then(|i| grads[i].take());
        let (a, b) = (take(self.slots[0]), take(self.slots[1]));
        *self.grads.lock().expect("block gradients") = grads;
        let b = match self.chained {
            true => Some(Tensor::zeros(1, DType::F32, &Device::Cpu)?),
            false => b,
        };
        Ok((dx, a, b))
    }
}

/// The shared end of a block op's backward pass: runs `backward` on the values of x, dy and the block's weights
/// (`all`, in the block's order), makes tensors of the gradients it returns (the input's, and each weight's where
/// it trains) and hands them out as `handoff` says.
pub(super) fn block_backward(
    handoff: &Handoff,
    all: &[Tensor],
    x: &Tensor,
    dy: &Tensor,
    backward: impl FnOnce(&[f32], &[f32], &[&[f32]]) -> BlockGrads,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let mut tensors: Vec<&Tensor> = all.iter().collect();
    tensors.extend([x, &dy]);
    let (dx, dws) = with_values(&tensors, |v| {
        let (weights, rest) = v.split_at(all.len());
        Ok(backward(rest[0], rest[1], weights))
    })?;
    let cpu = Device::Cpu;
    let grads: Vec<Option<Tensor>> = dws
        .into_iter()
        .zip(all)
        .map(|(g, w)| g.map(|g| Tensor::from_vec(g, w.shape(), &cpu)).transpose())
        .collect::<Result<_>>()?;
    let dx = dx.map(|d| Tensor::from_vec(d, x.shape(), &cpu)).transpose()?;
    handoff.hand_out(grads, dx)
}

/// A block's gradients as plain buffers: the input's (where it wants one) and each weight's (where it trains).
pub(super) type BlockGrads = (Option<Vec<f32>>, Vec<Option<Vec<f32>>>);

/// Wires `x` and the block's weights (`all`, in the block's order) for a block op.
pub(super) fn wire(x: &Tensor, all: &[Tensor]) -> Result<Wired> {
    let trainable: Vec<usize> = (0..all.len()).filter(|&i| all[i].track_op()).collect();
    let grads = Arc::new(Mutex::new(vec![None; all.len()]));
    let chained = trainable.len() > 2;
    let mut chain: Option<Tensor> = None;
    if chained {
        let rest = &trainable[1..];
        let (first, more) = rest.split_at(3.min(rest.len()));
        let tap = Tap {
            grads: grads.clone(),
            slots: [Some(first[0]), Some(first[1]), first.get(2).copied()],
        };
        let third = &all[*first.last().expect("three or more train")];
        let mut end = all[first[0]].apply_op3(&all[first[1]], third, tap)?;
        for pair in more.chunks(2) {
            let tap = Tap {
                grads: grads.clone(),
                slots: [None, Some(pair[0]), pair.get(1).copied()],
            };
            end = end.apply_op3(&all[pair[0]], &all[pair[pair.len() - 1]], tap)?;
        }
        chain = Some(end);
    }
    let slot = |i: usize| trainable.get(i).copied();
    let operand = |i: usize| all[slot(i).unwrap_or(0)].clone();
    Ok(Wired {
        operands: (operand(0), chain.unwrap_or_else(|| operand(1))),
        handoff: Handoff {
            slots: [slot(0), if chained { None } else { slot(1) }],
            chained,
            grads,
            input_grad: x.track_op(),
            trainable: all.iter().map(Tensor::track_op).collect(),
        },
        input: x.clone(),
    })
}

/// One link of the tap chain: a single zero on the way forward; on the way back it hands candle the gradients
/// the block op left for its weight operands, and passes a gradient up the chain (its first operand, where that
/// is the previous tap).
struct Tap {
    grads: Arc<Mutex<Vec<Option<Tensor>>>>,
    /// The weights its three operands carry; None for the first where it is the previous tap.
    slots: [Option<usize>; 3],
}

impl CustomOp3 for Tap {
    fn name(&self) -> &'static str {
        "fused-block-tap"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(1)))
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut grads = self.grads.lock().expect("block gradients");
        let mut take = |slot: Option<usize>| slot.and_then(|i| grads[i].take());
        let first = match self.slots[0] {
            Some(i) => take(Some(i)),
            None => Some(dy.clone()),
        };
        Ok((first, take(self.slots[1]), take(self.slots[2])))
    }
}
