//! Experts stacked in two tensors (Qwen3.5 MoE: `gate_up` experts × 2·width × hidden, gate rows first; `down`
//! experts × hidden × width), run as one graph node. Slicing an expert out of a stacked tensor with candle's ops
//! would give each slice's gradient the stacked tensor's full size (a narrow's backward pads), once per expert;
//! the node instead writes each expert's gradient into its place once. It keeps only its inputs and its output,
//! and its backward pass recomputes each expert's gate and up projections. A GLU of SiLU or GELU-tanh. Frozen experts held
//! quantized (`quantize_frozen`) are dequantized one expert at a time, for the length of its matmuls. On the CPU
//! in f32 both passes run over plain buffers, the experts in parallel (`stacked_cpu.rs`); elsewhere (CUDA, Metal,
//! half precision) as candle ops, one expert after another.

use super::activation::GateActivation;
use super::stacked_cpu::{self, with_experts, Dims, Wanted};
use super::{no_rows, operand_grads, scatter_rows, stacked};
use crate::fused::with_values;
use crate::node::attach3;
use crate::params::StackedWeight;
use candle_core::{DType, Device, Result, Tensor};

pub(crate) struct Stacked {
    pub gate_up: StackedWeight,
    pub down: StackedWeight,
    pub width: usize,
    /// SiLU or GELU-tanh.
    pub activation: GateActivation,
}

impl StackedWeight {
    /// Expert `e`'s matrix in `dtype`, outside the graph.
    pub(super) fn matrix(&self, e: usize, dtype: DType) -> Result<Tensor> {
        match self {
            StackedWeight::Dense(t) => t.detach().get(e)?.to_dtype(dtype),
            StackedWeight::Quantized(experts) => crate::quant::dequantize(&experts[e], dtype),
            StackedWeight::Mxfp4(packed) => packed.matrix(e, dtype),
        }
    }

    /// The node's operand: the tensor itself, or, for blocks (frozen, never given a gradient), a placeholder.
    pub(super) fn operand(&self, device: &Device) -> Result<Tensor> {
        match self {
            StackedWeight::Dense(t) => Ok(t.clone()),
            StackedWeight::Quantized(_) | StackedWeight::Mxfp4(_) => Tensor::zeros(1, DType::F32, device),
        }
    }
}

impl Stacked {
    /// Each expert's SwiGLU output for its rows of `x` (tokens, hidden), experts in order: (Σ rows, hidden) in
    /// `x`'s dtype. `groups[e]` are expert e's rows.
    pub fn forward(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let value = match stacked_cpu::applies(x, [&self.gate_up, &self.down]) {
            true => self.cpu_forward(x, groups)?,
            false => self.composite_forward(x, groups)?,
        };
        let (gate_up, down) = (self.gate_up.operand(x.device())?, self.down.operand(x.device())?);
        let weights = (self.gate_up.clone(), self.down.clone());
        let dims = Dims {
            hidden: x.dim(1)?,
            width: self.width,
        };
        let (groups, activation) = (groups.to_vec(), self.activation);
        attach3(
            "stacked-experts",
            [x, &gate_up, &down],
            value,
            Box::new(move |[x, gate_up, down], _, grad| {
                let weights = (&weights.0, &weights.1);
                match stacked_cpu::applies(x, [weights.0, weights.1]) {
                    true => cpu_backward([x, gate_up, down], weights, grad, &groups, (dims, activation)),
                    false => backward([x, gate_up, down], weights, grad, &groups, (dims, activation)),
                }
            }),
        )
    }

    /// The forward value as candle ops, one expert after another.
    fn composite_forward(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let mut outputs = Vec::new();
        for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let pass = ExpertPass::new(&x.detach(), &self.gate_up, &self.down, e, rows, self.width)?;
            outputs.push(pass.product(self.activation)?.matmul(&pass.down.t()?)?);
        }
        Tensor::cat(&outputs, 0)
    }

    /// The forward value on the CPU in f32 (`stacked_cpu.rs`).
    fn cpu_forward(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let hidden = x.dim(1)?;
        let dims = Dims {
            hidden,
            width: self.width,
        };
        let values = with_values(&[&x.contiguous()?], |v| {
            with_experts(&self.gate_up, |gate_up| {
                with_experts(&self.down, |down| {
                    stacked_cpu::forward(v[0], (gate_up, down), groups, (dims, self.activation))
                })
            })
        })?;
        let rows = values.len() / hidden;
        Tensor::from_vec(values, (rows, hidden), x.device())
    }
}

/// [`backward`] on the CPU in f32 (`stacked_cpu.rs`): the same gradients.
fn cpu_backward(
    inputs: [&Tensor; 3],
    weights: (&StackedWeight, &StackedWeight),
    grad: &Tensor,
    groups: &[Vec<u32>],
    dims: (Dims, GateActivation),
) -> Result<[Option<Tensor>; 3]> {
    let [x, gate_up, down] = inputs;
    let wanted = Wanted {
        input: x.track_op(),
        gate_up: gate_up.track_op(),
        down: down.track_op(),
    };
    let grads = with_values(&[&x.contiguous()?, &grad.contiguous()?], |v| {
        with_experts(weights.0, |gu| {
            with_experts(weights.1, |dn| {
                stacked_cpu::backward(v[0], v[1], (gu, dn), groups, dims, &wanted)
            })
        })
    })?;
    operand_grads([grads.input, grads.gate_up, grads.down], [x, gate_up, down])
}

/// One expert's forward pass over its rows, in the activations' dtype.
struct ExpertPass {
    rows: Tensor,
    input: Tensor,
    gate_up: Tensor,
    down: Tensor,
    gate: Tensor,
    up: Tensor,
}

impl ExpertPass {
    fn new(
        x: &Tensor,
        gate_up: &StackedWeight,
        down: &StackedWeight,
        e: usize,
        rows: &[u32],
        width: usize,
    ) -> Result<ExpertPass> {
        let rows = Tensor::from_slice(rows, rows.len(), x.device())?;
        let input = x.index_select(&rows, 0)?;
        let gate_up = gate_up.matrix(e, x.dtype())?;
        let projected = input.matmul(&gate_up.t()?)?;
        Ok(ExpertPass {
            gate: projected.narrow(1, 0, width)?,
            up: projected.narrow(1, width, width)?,
            down: down.matrix(e, x.dtype())?,
            rows,
            input,
            gate_up,
        })
    }

    /// act(gate) · up.
    fn product(&self, activation: GateActivation) -> Result<Tensor> {
        activation.forward(&self.gate, &self.up)
    }
}

/// The gradients of the node's tracked operands (`inputs`: x, then the weights or their placeholders), from its
/// output's gradient `grad` (Σ rows, hidden); `weights` are the experts as held.
fn backward(
    inputs: [&Tensor; 3],
    weights: (&StackedWeight, &StackedWeight),
    grad: &Tensor,
    groups: &[Vec<u32>],
    (dims, activation): (Dims, GateActivation),
) -> Result<[Option<Tensor>; 3]> {
    let [x, gate_up, down] = inputs;
    let width = dims.width;
    let x_c = x.detach();
    let mut input_grads = Vec::new();
    let mut gate_up_grads = Vec::new();
    let mut down_grads = Vec::new();
    let mut start = 0;
    for (e, rows) in groups.iter().enumerate() {
        if rows.is_empty() {
            no_rows(e, [(gate_up, &mut gate_up_grads), (down, &mut down_grads)])?;
            continue;
        }
        let pass = ExpertPass::new(&x_c, weights.0, weights.1, e, rows, width)?;
        let dy = grad.narrow(0, start, rows.len())?;
        start += rows.len();
        let d_product = dy.matmul(&pass.down)?;
        if down.track_op() {
            down_grads.push(dy.t()?.matmul(&pass.product(activation)?)?.to_dtype(down.dtype())?);
        }
        let (d_gate, d_up) = activation.backward(&pass.gate, &pass.up, &d_product)?;
        let d_projected = Tensor::cat(&[&d_gate, &d_up], 1)?;
        if gate_up.track_op() {
            gate_up_grads.push(d_projected.t()?.matmul(&pass.input)?.to_dtype(gate_up.dtype())?);
        }
        if x.track_op() {
            input_grads.push((pass.rows.clone(), d_projected.matmul(&pass.gate_up)?));
        }
    }
    let dx = match x.track_op() {
        true => Some(scatter_rows(x, &input_grads)?),
        false => None,
    };
    Ok([dx, stacked(gate_up_grads, gate_up)?, stacked(down_grads, down)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The node's output and gradients against the same experts computed with candle's own ops per expert, with
    /// either activation.
    #[test]
    fn matches_the_experts_computed_one_by_one() {
        for activation in [GateActivation::Silu, GateActivation::GeluTanh] {
            check_against_candle_ops(activation);
        }
    }

    fn check_against_candle_ops(activation: GateActivation) {
        let dev = Device::Cpu;
        let (experts, width, hidden, tokens) = (3, 4, 5, 6);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (tokens, hidden), &dev).unwrap()).unwrap();
        let gate_up = Var::from_tensor(&Tensor::randn(0f32, 0.5, (experts, 2 * width, hidden), &dev).unwrap()).unwrap();
        let down = Var::from_tensor(&Tensor::randn(0f32, 0.5, (experts, hidden, width), &dev).unwrap()).unwrap();
        // Expert 1 gets no rows; rows repeat across experts, as a token's top-k choices do.
        let groups = vec![vec![0u32, 2, 5], vec![], vec![1, 2, 3, 4]];
        let stacked = Stacked {
            gate_up: StackedWeight::Dense(gate_up.as_tensor().clone()),
            down: StackedWeight::Dense(down.as_tensor().clone()),
            width,
            activation,
        };
        let y = stacked.forward(x.as_tensor(), &groups).unwrap();
        let mut plain = Vec::new();
        for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let xe = x.index_select(&Tensor::new(rows.as_slice(), &dev).unwrap(), 0).unwrap();
            let gu = xe.matmul(&gate_up.get(e).unwrap().t().unwrap()).unwrap();
            let gate = gu.narrow(1, 0, width).unwrap();
            let gate = match activation {
                GateActivation::GeluTanh => gate.gelu().unwrap(),
                _ => gate.silu().unwrap(),
            };
            let p = (gate * gu.narrow(1, width, width).unwrap()).unwrap();
            plain.push(p.matmul(&down.get(e).unwrap().t().unwrap()).unwrap());
        }
        let plain = Tensor::cat(&plain, 0).unwrap();
        let probe = Tensor::randn(0f32, 1.0, y.shape(), &dev).unwrap();
        let (ga, gb) = (
            (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
            (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{activation:?}: {what} differs by {diff}");
        };
        close(&y, &plain, "output");
        for (v, what) in [(&x, "input"), (&gate_up, "gate_up"), (&down, "down")] {
            close(ga.get(v).unwrap(), gb.get(v).unwrap(), what);
        }
        assert_eq!(ga.get(&gate_up).unwrap().dtype(), DType::F32);
        // The CPU passes (what the node ran here) against the candle-op passes other devices run.
        let (cpu, composite) = (
            stacked.cpu_forward(x.as_tensor(), &groups).unwrap(),
            stacked.composite_forward(x.as_tensor(), &groups).unwrap(),
        );
        close(&cpu, &composite, "forward passes");
        let inputs = [x.as_tensor(), gate_up.as_tensor(), down.as_tensor()];
        let weights = (&stacked.gate_up, &stacked.down);
        let dims = Dims { hidden, width };
        let a = cpu_backward(inputs, weights, &probe, &groups, (dims, activation)).unwrap();
        let b = backward(inputs, weights, &probe, &groups, (dims, activation)).unwrap();
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            close(
                a.as_ref().unwrap(),
                b.as_ref().unwrap(),
                &format!("backward pass, operand {i}"),
            );
        }
    }
}
