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
//! Between them the graph keeps the products, what a dense MLP keeps too. Every op is a candle op, on every
//! backend, one expert after another. Frozen experts held quantized (`quantize_frozen`) are dequantized one expert
//! at a time, for the length of its matmuls.

use super::activation::GateActivation;
use super::{no_rows, scatter_rows, stacked};
use crate::node::attach3;
use crate::params::StackedWeight;
use candle_core::{Result, Tensor, D};

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

    fn up(&self, x: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
        let x_c = x.detach();
        let mut products = Vec::new();
        for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let pass = UpPass::new(&x_c, &self.gate_up, &self.gate_up_bias, e, rows)?;
            products.push(self.activation.forward(&pass.gate()?, &pass.up()?)?);
        }
        let value = Tensor::cat(&products, 0)?;
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
            Box::new(move |[x, w, b], _, grad| up_backward([x, w, b], (&weights, &bias), grad, &groups, act)),
        )
    }

    fn down(&self, products: &Tensor, groups: &[Vec<u32>]) -> Result<Tensor> {
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
        let value = Tensor::cat(&outputs, 0)?;
        let down = self.down.operand(products.device())?;
        let (weights, groups) = (self.down.clone(), groups.to_vec());
        attach3(
            "interleaved-experts-down",
            [products, &down, &self.down_bias],
            value,
            Box::new(move |[p, w, b], _, grad| down_backward([p, w, b], &weights, grad, &groups)),
        )
    }
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
