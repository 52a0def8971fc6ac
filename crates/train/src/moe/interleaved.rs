//! Experts stacked as gpt-oss stores them (`ExpertWeights::Interleaved`): per expert, `gate_up` is the transpose
//! of a linear's weight (hidden × 2·width) with gate and up in alternate columns and a bias (2·width), and `down`
//! (width × hidden) has a bias (hidden). They run as two graph nodes of three operands each, so that no expert is
//! ever sliced out of a stacked tensor by candle's ops (a narrow's backward pads every slice's gradient to the
//! stack's size, once per expert):
//!
//! - `up`: (x, gate_up, gate_up_bias) → each expert's activated products for its rows (Σ rows × width); its
//!   backward recomputes the projections;
//! - `down`: (products, down, down_bias) → each expert's output (Σ rows × hidden).
//!
//! Between them the graph keeps the products, what a dense MLP keeps too. On the CPU in f32 both nodes run over
//! plain buffers, the experts in parallel (`interleaved_cpu.rs`); elsewhere (CUDA, Metal, half precision) as
//! candle ops, one expert after another. Frozen experts held in blocks (`quantize_frozen`, or MXFP4 as released)
//! are unpacked one expert at a time, for the length of its matmuls.

use super::activation::GateActivation;
use super::interleaved_cpu as cpu;
use super::stacked_cpu::{self, with_experts, Dims};
use super::{no_rows, operand_grads, scatter_rows, stacked};
use crate::fused::with_values;
use crate::node::attach3;
use crate::params::StackedWeight;
use candle_core::{DType, Result, Tensor, D};

pub(crate) struct Interleaved {
    pub gate_up: StackedWeight,
    pub gate_up_bias: Tensor,
    pub down: StackedWeight,
    pub down_bias: Tensor,
    pub activation: GateActivation,
}

impl Interleaved {
    /// Each expert's output for its rows of `x` (tokens, hidden), experts in order: (Σ rows, hidden) in `x`'s
    /// dtype. `groups[e]` are expert e's rows.
    pub fn forward(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let products = self.up(x, groups)?;
        self.down(&products, groups)
    }

    /// Whether both nodes run on the CPU over plain buffers (`interleaved_cpu.rs`): f32 activations, weights and
    /// biases.
    fn on_cpu(&self, x: &Tensor) -> bool {
        let f32_biases = [&self.gate_up_bias, &self.down_bias]
            .iter()
            .all(|b| b.dtype() == DType::F32);
        stacked_cpu::applies(x, [&self.gate_up, &self.down]) && f32_biases
    }

    fn up(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let cpu = self.on_cpu(x);
        let value = match cpu {
            true => self.cpu_up(x, groups)?,
            false => self.composite_up(x, groups)?,
        };
        let gate_up = self.gate_up.operand(x.device())?;
        let (weights, bias, groups, act) = (
            self.gate_up.clone(),
            self.gate_up_bias.clone(),
            groups.to_vec(),
            self.activation,
        );
        attach3(
            "interleaved-experts-up",
            [x, &gate_up, &self.gate_up_bias],
            value,
            Box::new(move |[x, w, b], _, grad| match cpu {
                true => cpu_up_backward([x, w, b], &weights, grad, &groups, act),
                false => up_backward([x, w, b], (&weights, &bias), grad, &groups, act),
            }),
        )
    }

    /// The up node's value as candle ops, one expert after another.
    fn composite_up(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let x_c = x.detach();
        let mut products = Vec::new();
        for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let pass = UpPass::new(&x_c, &self.gate_up, &self.gate_up_bias, e, rows)?;
            products.push(self.activation.forward(&pass.gate()?, &pass.up()?)?);
        }
        Tensor::cat(&products, 0)
    }

    /// The up node's value on the CPU in f32 (`interleaved_cpu.rs`).
    fn cpu_up(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let dims = up_dims(x, &self.gate_up_bias)?;
        let values = with_values(&[&x.contiguous()?, &self.gate_up_bias.contiguous()?], |v| {
            with_experts(&self.gate_up, |gate_up| {
                let up = cpu::Up {
                    gate_up,
                    bias: v[1],
                    act: self.activation,
                    dims,
                };
                up.forward(v[0], groups)
            })
        })?;
        let rows = values.len() / dims.width;
        Tensor::from_vec(values, (rows, dims.width), x.device())
    }

    fn down(&self, products: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let cpu = self.on_cpu(products);
        let value = match cpu {
            true => self.cpu_down(products, groups)?,
            false => self.composite_down(products, groups)?,
        };
        let down = self.down.operand(products.device())?;
        let (weights, groups) = (self.down.clone(), groups.to_vec());
        attach3(
            "interleaved-experts-down",
            [products, &down, &self.down_bias],
            value,
            Box::new(move |[p, w, b], _, grad| match cpu {
                true => cpu_down_backward([p, w, b], &weights, grad, &groups),
                false => down_backward([p, w, b], &weights, grad, &groups),
            }),
        )
    }

    /// The down node's value as candle ops, one expert after another.
    fn composite_down(&self, products: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let p_c = products.detach();
        let mut outputs = Vec::new();
        let mut start = 0;
        for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let p = p_c.narrow(0, start, rows.len())?;
            start += rows.len();
            let down = self.down.matrix(e, p.dtype())?;
            outputs.push(
                p.matmul(&down)?
                    .broadcast_add(&self.down_bias.detach().get(e)?.to_dtype(p.dtype())?)?,
            );
        }
        Tensor::cat(&outputs, 0)
    }

    /// The down node's value on the CPU in f32 (`interleaved_cpu.rs`).
    fn cpu_down(&self, products: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let dims = down_dims(products, &self.down_bias)?;
        let values = with_values(&[&products.contiguous()?, &self.down_bias.contiguous()?], |v| {
            with_experts(&self.down, |down| {
                let node = cpu::Down { down, bias: v[1], dims };
                node.forward(v[0], groups)
            })
        })?;
        let rows = values.len() / dims.hidden;
        Tensor::from_vec(values, (rows, dims.hidden), products.device())
    }
}

/// The sizes of an up node, from its input (rows × hidden) and its bias (experts × 2·width).
fn up_dims(x: &Tensor, bias: &Tensor) -> Result<Dims> {
    Ok(Dims {
        hidden: x.dim(1)?,
        width: bias.dim(1)? / 2,
    })
}

/// The sizes of a down node, from its input (rows × width) and its bias (experts × hidden).
fn down_dims(products: &Tensor, bias: &Tensor) -> Result<Dims> {
    Ok(Dims {
        hidden: bias.dim(1)?,
        width: products.dim(1)?,
    })
}

/// One expert's gate and up projections over its rows, in the activations' dtype.
struct UpPass {
    rows: Tensor,
    input: Tensor,
    matrix: Tensor,
    /// (rows, width, 2): gate at 0, up at 1 of the last axis.
    projected: Tensor,
}

impl UpPass {
    fn new(x: &Tensor, gate_up: &StackedWeight, bias: &Tensor, e: usize, rows: &[u32]) -> Result<UpPass> {
        let rows = Tensor::from_slice(rows, rows.len(), x.device())?;
        let input = x.index_select(&rows, 0)?;
        let matrix = gate_up.matrix(e, x.dtype())?;
        let bias = bias.detach().get(e)?.to_dtype(x.dtype())?;
        let projected = input.matmul(&matrix)?.broadcast_add(&bias)?;
        let (n, both) = projected.dims2()?;
        Ok(UpPass {
            projected: projected.reshape((n, both / 2, 2))?,
            rows,
            input,
            matrix,
        })
    }

    fn gate(&self) -> Result<Tensor> {
        self.projected.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)
    }

    fn up(&self) -> Result<Tensor> {
        self.projected.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)
    }
}

/// The gradients of the up node's tracked operands (x, gate_up or its placeholder, gate_up_bias) from its
/// output's gradient (Σ rows, width).
fn up_backward(
    inputs: [&Tensor; 3],
    (weights, bias): (&StackedWeight, &Tensor),
    grad: &Tensor,
    groups: &[Vec<u32>],
    act: GateActivation,
) -> Result<[Option<Tensor>; 3]> {
    let [x, gate_up, gate_up_bias] = inputs;
    let x_c = x.detach();
    let mut input_grads = Vec::new();
    let (mut matrix_grads, mut bias_grads) = (Vec::new(), Vec::new());
    let mut start = 0;
    for (e, rows) in groups.iter().enumerate() {
        if rows.is_empty() {
            no_rows(e, [(gate_up, &mut matrix_grads), (gate_up_bias, &mut bias_grads)])?;
            continue;
        }
        let pass = UpPass::new(&x_c, weights, bias, e, rows)?;
        let dp = grad.narrow(0, start, rows.len())?;
        start += rows.len();
        let (d_gate, d_up) = act.backward(&pass.gate()?, &pass.up()?, &dp)?;
        // Back into alternate columns: (rows, width, 2) → (rows, 2·width).
        let d_projected = Tensor::stack(&[&d_gate, &d_up], 2)?.flatten_from(1)?;
        if gate_up.track_op() {
            matrix_grads.push(pass.input.t()?.matmul(&d_projected)?.to_dtype(gate_up.dtype())?);
        }
        if gate_up_bias.track_op() {
            bias_grads.push(d_projected.sum(0)?.to_dtype(gate_up_bias.dtype())?);
        }
        if x.track_op() {
            input_grads.push((pass.rows.clone(), d_projected.matmul(&pass.matrix.t()?)?));
        }
    }
    let dx = match x.track_op() {
        true => Some(scatter_rows(x, &input_grads)?),
        false => None,
    };
    Ok([dx, stacked(matrix_grads, gate_up)?, stacked(bias_grads, gate_up_bias)?])
}

/// The gradients of the down node's tracked operands (products, down or its placeholder, down_bias).
fn down_backward(
    inputs: [&Tensor; 3],
    weights: &StackedWeight,
    grad: &Tensor,
    groups: &[Vec<u32>],
) -> Result<[Option<Tensor>; 3]> {
    let [products, down, down_bias] = inputs;
    let p_c = products.detach();
    let (mut product_grads, mut matrix_grads, mut bias_grads) = (Vec::new(), Vec::new(), Vec::new());
    let mut start = 0;
    for (e, rows) in groups.iter().enumerate() {
        if rows.is_empty() {
            no_rows(e, [(down, &mut matrix_grads), (down_bias, &mut bias_grads)])?;
            continue;
        }
        let (p, dy) = (p_c.narrow(0, start, rows.len())?, grad.narrow(0, start, rows.len())?);
        start += rows.len();
        if down.track_op() {
            matrix_grads.push(p.t()?.matmul(&dy)?.to_dtype(down.dtype())?);
        }
        if down_bias.track_op() {
            bias_grads.push(dy.sum(0)?.to_dtype(down_bias.dtype())?);
        }
        if products.track_op() {
            product_grads.push(dy.matmul(&weights.matrix(e, dy.dtype())?.t()?)?);
        }
    }
    let dp = match products.track_op() {
        true => Some(Tensor::cat(&product_grads, 0)?),
        false => None,
    };
    Ok([dp, stacked(matrix_grads, down)?, stacked(bias_grads, down_bias)?])
}

/// [`up_backward`] on the CPU in f32 (`interleaved_cpu.rs`): the same gradients.
fn cpu_up_backward(
    inputs: [&Tensor; 3],
    weights: &StackedWeight,
    grad: &Tensor,
    groups: &[Vec<u32>],
    act: GateActivation,
) -> Result<[Option<Tensor>; 3]> {
    let [x, gate_up, bias] = inputs;
    let wanted = wanted(inputs);
    let operands = [&x.contiguous()?, &grad.contiguous()?, &bias.contiguous()?];
    let grads = with_values(&operands, |v| {
        with_experts(weights, |gate_up| {
            let up = cpu::Up {
                gate_up,
                bias: v[2],
                act,
                dims: up_dims(x, bias)?,
            };
            up.backward(v[0], v[1], groups, &wanted)
        })
    })?;
    operand_grads([grads.rows, grads.matrix, grads.bias], [x, gate_up, bias])
}

/// [`down_backward`] on the CPU in f32 (`interleaved_cpu.rs`): the same gradients.
fn cpu_down_backward(
    inputs: [&Tensor; 3],
    weights: &StackedWeight,
    grad: &Tensor,
    groups: &[Vec<u32>],
) -> Result<[Option<Tensor>; 3]> {
    let [products, down, bias] = inputs;
    let wanted = wanted(inputs);
    let operands = [&products.contiguous()?, &grad.contiguous()?, &bias.contiguous()?];
    let grads = with_values(&operands, |v| {
        with_experts(weights, |down| {
            let node = cpu::Down {
                down,
                bias: v[2],
                dims: down_dims(products, bias)?,
            };
            node.backward(v[0], v[1], groups, &wanted)
        })
    })?;
    operand_grads([grads.rows, grads.matrix, grads.bias], [products, down, bias])
}

/// The gradients a node's operands record a graph for.
fn wanted([rows, matrix, bias]: [&Tensor; 3]) -> cpu::Wanted {
    cpu::Wanted {
        rows: rows.track_op(),
        matrix: matrix.track_op(),
        bias: bias.track_op(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap();
        diff.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Both nodes' output and gradients against the experts computed with candle's autograd per expert, and the
    /// CPU passes (what the nodes run here) against the candle-op passes other devices run, on values that cross
    /// the activation's limits.
    #[test]
    fn matches_the_experts_computed_one_by_one() {
        let dev = Device::Cpu;
        let (experts, width, hidden, tokens) = (3, 4, 5, 6);
        let var =
            |shape: &[usize], std: f32| Var::from_tensor(&Tensor::randn(0f32, std, shape, &dev).unwrap()).unwrap();
        let x = var(&[tokens, hidden], 1.0);
        let gate_up = var(&[experts, hidden, 2 * width], 1.0);
        let gate_up_bias = var(&[experts, 2 * width], 0.5);
        let down = var(&[experts, width, hidden], 0.5);
        let down_bias = var(&[experts, hidden], 0.5);
        let (alpha, limit) = (1.702, 1.0);
        let node = Interleaved {
            gate_up: StackedWeight::Dense(gate_up.as_tensor().clone()),
            gate_up_bias: gate_up_bias.as_tensor().clone(),
            down: StackedWeight::Dense(down.as_tensor().clone()),
            down_bias: down_bias.as_tensor().clone(),
            activation: GateActivation::Clamped { alpha, limit },
        };
        // Expert 1 gets no rows; rows repeat across experts, as a token's top-k choices do.
        let groups = vec![vec![0u32, 2, 5], vec![], vec![1, 2, 3, 4]];
        let y = node.forward(x.as_tensor(), &groups).unwrap();
        let mut plain = Vec::new();
        let mut clamped = 0f32;
        for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let xe = x.index_select(&Tensor::new(rows.as_slice(), &dev).unwrap(), 0).unwrap();
            let gu = xe.matmul(&gate_up.get(e).unwrap()).unwrap();
            let gu = gu.broadcast_add(&gate_up_bias.get(e).unwrap()).unwrap();
            let gu = gu.reshape((rows.len(), width, 2)).unwrap();
            let (g, u) = (gu.narrow(2, 0, 1).unwrap(), gu.narrow(2, 1, 1).unwrap());
            clamped += g
                .gt(limit)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let g = g.minimum(limit).unwrap();
            let glu = (&g * crate::ops::sigmoid(&(&g * alpha).unwrap()).unwrap()).unwrap();
            let p = ((u.clamp(-limit, limit).unwrap() + 1.0).unwrap() * glu)
                .unwrap()
                .squeeze(2)
                .unwrap();
            let out = p.matmul(&down.get(e).unwrap()).unwrap();
            plain.push(out.broadcast_add(&down_bias.get(e).unwrap()).unwrap());
        }
        assert!(
            clamped > 0.0,
            "no gate crosses the limit: the test would not see the clamp"
        );
        let plain = Tensor::cat(&plain, 0).unwrap();
        let probe = Tensor::randn(0f32, 1.0, y.shape(), &dev).unwrap();
        let (ga, gb) = (
            (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
            (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        assert!(max_diff(&y, &plain) < 1e-5, "output differs");
        let vars = [&x, &gate_up, &gate_up_bias, &down, &down_bias];
        for (i, v) in vars.iter().enumerate() {
            let d = max_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
            assert!(d < 1e-5, "gradient of operand {i} differs by {d}");
        }
        // The CPU passes against the candle-op passes, value and every gradient.
        assert!(node.on_cpu(x.as_tensor()), "the test must run the CPU passes");
        let products = node.composite_up(x.as_tensor(), &groups).unwrap();
        assert!(max_diff(&node.cpu_up(x.as_tensor(), &groups).unwrap(), &products) < 1e-5);
        let out = node.composite_down(&products, &groups).unwrap();
        assert!(max_diff(&node.cpu_down(&products, &groups).unwrap(), &out) < 1e-5);
        let products = Var::from_tensor(&products).unwrap();
        let up_in = [x.as_tensor(), gate_up.as_tensor(), gate_up_bias.as_tensor()];
        let down_in = [products.as_tensor(), down.as_tensor(), down_bias.as_tensor()];
        let dp = Tensor::randn(0f32, 1.0, products.shape(), &dev).unwrap();
        let (act, bias) = (node.activation, &node.gate_up_bias);
        let pairs = [
            (
                cpu_up_backward(up_in, &node.gate_up, &dp, &groups, act).unwrap(),
                up_backward(up_in, (&node.gate_up, bias), &dp, &groups, act).unwrap(),
            ),
            (
                cpu_down_backward(down_in, &node.down, &probe, &groups).unwrap(),
                down_backward(down_in, &node.down, &probe, &groups).unwrap(),
            ),
        ];
        for (node_at, (a, b)) in pairs.iter().enumerate() {
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                let d = max_diff(a.as_ref().unwrap(), b.as_ref().unwrap());
                assert!(d < 1e-5, "node {node_at}, operand {i}: the passes differ by {d}");
            }
        }
    }
}
