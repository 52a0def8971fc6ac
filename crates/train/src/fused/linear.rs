//! A trainable linear layer, `y = x · Wᵀ`, as one op. The composite (flatten the rows, transpose the weight,
//! matmul, reshape back) records four nodes, and candle's backward pass gives every node a zero-filled,
//! activation-sized gradient buffer and adds into it; its matmul backward also computes the input's gradient when
//! nothing below wants it (the lowest trainable layer over frozen embeddings). Here the forward pass is one gemm
//! over all rows, and the backward pass one op that computes `dW = dyᵀ·x` straight in the weight's layout and
//! `dx = dy·W` only when the input is part of the graph.

use super::f32s;
use super::gemm::{matmul_fastest, matmul_on, parallelism, written, Mat};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `x (…, k) · wᵀ` for a weight `w` (n, k); returns (…, n).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    if x.dim(candle_core::D::Minus1)? != k {
        bail!("linear: input {:?} does not fit a weight of {n}x{k}", x.shape())
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// `x (…, k) · wᵀ` for `w` (n, k), or `x (…, k) · w` for `w` (k, n) when not `transposed`, recording nothing
/// for the backward pass: a frozen layer's forward pass and its input gradient. One matmul over all rows, on the
/// faster backend for the shape.
pub fn matmul_no_grad(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    let (r, c) = w.dims2()?;
    let k = if transposed { c } else { r };
    if x.dim(candle_core::D::Minus1)? != k {
        bail!("matmul: input {:?} does not fit a weight of {r}x{c}", x.shape())
    }
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &Plain { transposed })
}

/// `x (m×k) · wᵀ` for `w` (n, k), both contiguous row-major slices, on the faster backend for the shape.
pub fn rows_times_weight_t(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    rows_times_weight(x, w, m, n, k, true)
}

/// `x (m×k) · wᵀ` for `w` stored (n, k), or `x · w` for `w` stored (k, n) when not `transposed`; both contiguous
/// row-major slices.
pub fn rows_times_weight(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, transposed: bool) -> Result<Vec<f32>> {
    if x.len() != m * k || w.len() != n * k {
        let weight = if transposed {
            format!("({n}x{k})ᵀ")
        } else {
            format!("{k}x{n}")
        };
        bail!("matmul: {} and {} values for {m}x{k} times {weight}", x.len(), w.len())
    }
    Ok(times_weight(x, w, m, n, k, transposed))
}

/// `dst (n × k) += aᵀ · b` for `a` (rows × n) and `b` (rows × k), both contiguous row-major: a weight's gradient
/// summed over blocks of rows in place, with no buffer per block.
pub fn add_transposed_times(dst: &mut [f32], a: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Result<()> {
    if a.len() != rows * n || b.len() != rows * k || dst.len() != n * k {
        bail!(
            "matmul: {} and {} values for ({rows}x{n})ᵀ times {rows}x{k} into {}",
            a.len(),
            b.len(),
            dst.len()
        )
    }
    let par = parallelism(rows, n, k);
    // SAFETY: a is rows×n, b rows×k and dst n×k, contiguous (checked above); dst is borrowed mutably here alone.
    unsafe {
        matmul_on(
            par,
            n,
            k,
            rows,
            Mat(dst.as_mut_ptr(), k as isize, 1),
            true,
            Mat(a.as_ptr(), 1, n as isize),
            Mat(b.as_ptr(), k as isize, 1),
        );
    }
    Ok(())
}

/// `aᵀ · b` for `a` (rows × n) and `b` (rows × k), both contiguous row-major: the (n × k) product a weight's
/// gradient `dyᵀ · x` is, read through strides as the trainable linear's backward reads it, with no transposed copy.
pub fn transposed_times(a: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    if a.len() != rows * n || b.len() != rows * k {
        bail!(
            "matmul: {} and {} values for ({rows}x{n})ᵀ times {rows}x{k}",
            a.len(),
            b.len()
        )
    }
    let par = parallelism(rows, n, k);
    // SAFETY: a is rows×n and b rows×k, contiguous (checked above); the product overwrites all n·k values.
    Ok(unsafe {
        written(n * k, |out| {
            let at = Mat(a.as_ptr(), 1, n as isize);
            matmul_fastest(
                par,
                n,
                k,
                rows,
                Mat(out, k as isize, 1),
                at,
                Mat(b.as_ptr(), k as isize, 1),
            );
        })
    })
}

/// `x (m×k) · wᵀ` for `w` stored (n, k), or `x · w` for `w` stored (k, n) when not `transposed`, into a new
/// (m×n) buffer. The callers check that `x` holds m·k values and `w` n·k.
fn times_weight(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, transposed: bool) -> Vec<f32> {
    check_operands(x, w, m, n, k);
    // SAFETY: the product overwrites all m·n values (k > 0 is not needed: gemm writes zeros for k = 0).
    unsafe { written(m * n, |out| times_weight_raw(out, x, w, m, n, k, transposed)) }
}

/// As [`times_weight`], overwriting the first m·n values of `out`.
pub(super) fn times_weight_into(out: &mut [f32], x: &[f32], w: &[f32], m: usize, n: usize, k: usize, transposed: bool) {
    check_operands(x, w, m, n, k);
    assert!(out.len() >= m * n, "times_weight: output shorter than its shape");
    // SAFETY: out holds m·n values (asserted above) and is this call's alone.
    unsafe { times_weight_raw(out.as_mut_ptr(), x, w, m, n, k, transposed) }
}

fn check_operands(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "times_weight: operands shorter than their shapes"
    );
}

/// # Safety
/// `out` must address m·n writable values that no one else uses meanwhile; x and w as `check_operands` asks.
unsafe fn times_weight_raw(out: *mut f32, x: &[f32], w: &[f32], m: usize, n: usize, k: usize, transposed: bool) {
    // w read as (k × n): stored (n, k) row-major that is strides (1, k); stored (k, n), strides (n, 1).
    let rhs = if transposed {
        Mat(w.as_ptr(), 1, k as isize)
    } else {
        Mat(w.as_ptr(), n as isize, 1)
    };
    let dst = Mat(out, n as isize, 1);
    matmul_fastest(parallelism(m, n, k), m, n, k, dst, Mat(x.as_ptr(), k as isize, 1), rhs);
}

struct Plain {
    transposed: bool,
}

impl CustomOp2 for Plain {
    fn name(&self) -> &'static str {
        "fused-matmul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(xs, xl, "matmul input")?, f32s(ws, wl, "matmul weight")?);
        let (r, c) = wl.shape().dims2()?;
        let (n, k) = if self.transposed { (r, c) } else { (c, r) };
        let m = rows(xl.dims());
        let out = times_weight(x, w, m, n, k, self.transposed);
        let mut shape = xl.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

struct Linear;

fn rows(dims: &[usize]) -> usize {
    dims[..dims.len() - 1].iter().product()
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        // The forward pass is the plain product; only the backward differs.
        Plain { transposed: true }.cpu_fwd(xs, xl, ws, wl)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let input_grad = x.track_op();
        let grad = LinearGrad { input_grad };
        let packed = dy.contiguous()?.apply_op3_no_bwd(x, w, &grad)?;
        let dw = packed.narrow(0, 0, w.elem_count())?.reshape(w.shape())?;
        let dx = if input_grad {
            Some(packed.narrow(0, w.elem_count(), x.elem_count())?.reshape(x.shape())?)
        } else {
            None
        };
        Ok((dx, Some(dw)))
    }
}

/// `[dW, dx]` of [`Linear`] in one buffer; `dx` only when `input_grad`.
struct LinearGrad {
    input_grad: bool,
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, x, w) = (f32s(gs, gl, "grad")?, f32s(xs, xl, "input")?, f32s(ws, wl, "weight")?);
        let (n, k) = wl.shape().dims2()?;
        let m = rows(xl.dims());
        let len = n * k + if self.input_grad { m * k } else { 0 };
        let (ni, ki) = (n as isize, k as isize);
        let par = parallelism(m, n, k);
        // SAFETY: dy is m×n, x m×k, w n×k, all contiguous; dW (n×k) and dx (m×k) are disjoint parts of `out`
        // that the two products overwrite in full.
        let out = unsafe {
            written(len, |out| {
                let dyt = Mat(dy.as_ptr(), 1, ni);
                matmul_fastest(par, n, k, m, Mat(out, ki, 1), dyt, Mat(x.as_ptr(), ki, 1));
                if self.input_grad {
                    let dx = Mat(out.add(n * k), ki, 1);
                    matmul_fastest(par, m, k, n, dx, Mat(dy.as_ptr(), ni, 1), Mat(w.as_ptr(), ki, 1));
                }
            })
        };
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, randn, value_and_grads};
    use super::*;
    use candle_core::Var;

    fn composite(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let k = x.dim(candle_core::D::Minus1)?;
        let mut shape = x.dims().to_vec();
        *shape.last_mut().unwrap() = w.dim(0)?;
        x.reshape((x.elem_count() / k, k))?.matmul(&w.t()?)?.reshape(shape)
    }

    #[test]
    fn linear_matches_the_composite_matmul_in_value_and_gradient() {
        for (dims, n) in [(vec![2usize, 3, 5], 4usize), (vec![7, 33], 65), (vec![2, 64, 96], 130)] {
            let k = *dims.last().unwrap();
            let (x, w) = (randn(&dims, 1), randn(&[n, k], 2));
            let mut out_dims = dims.clone();
            *out_dims.last_mut().unwrap() = n;
            let probe = randn(&out_dims, 3);
            let fused = value_and_grads(&[x.clone(), w.clone()], &probe, |t| linear(&t[0], &t[1]));
            let reference = value_and_grads(&[x, w], &probe, |t| composite(&t[0], &t[1]));
            assert_close(&fused, &reference, 1e-3);
        }
    }

    #[test]
    fn plain_matmuls_match_candle_on_either_backend() {
        // Big enough that the backend is measured (gemm against OpenBLAS where the machine has it).
        let x = randn(&[2, 128, 192], 7);
        let w = randn(&[320, 192], 8);
        let reference = composite(&x, &w).unwrap();
        for _ in 0..2 {
            // The first call measures and picks, the second runs the pick: both give the product.
            let y = matmul_no_grad(&x, &w, true).unwrap();
            assert_close(&[y], std::slice::from_ref(&reference), 1e-4);
        }
        let stored = w.t().unwrap().contiguous().unwrap();
        assert_close(&[matmul_no_grad(&x, &stored, false).unwrap()], &[reference], 1e-4);
        let chosen = super::super::matmul_choices();
        assert_eq!(
            chosen.iter().any(|c| c.starts_with("256x192x320 ")),
            super::super::blas::openblas().is_some() && !super::super::blas::forced(),
            "a measured shape's backend is recorded: {chosen:?}"
        );
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rows = rows_times_weight_t(&xs, &ws, 256, 320, 192).unwrap();
        let direct = Tensor::from_vec(rows, (2, 128, 320), x.device()).unwrap();
        assert_close(&[direct], &[composite(&x, &w).unwrap()], 1e-4);
        assert!(
            rows_times_weight_t(&xs, &ws, 256, 320, 191).is_err(),
            "a size mismatch is refused"
        );
    }

    #[test]
    fn a_transposed_product_matches_candle() {
        let (a, b) = (randn(&[96, 40], 11), randn(&[96, 56], 12));
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let product = transposed_times(&values(&a), &values(&b), 96, 40, 56).unwrap();
        let reference = a.t().unwrap().matmul(&b).unwrap();
        let got = Tensor::from_vec(product, (40, 56), a.device()).unwrap();
        assert_close(&[got], &[reference], 1e-4);
        assert!(
            transposed_times(&values(&a), &values(&b), 96, 40, 55).is_err(),
            "a size mismatch is refused"
        );
    }

    #[test]
    fn linear_over_a_constant_input_gives_only_the_weight_its_gradient() {
        let x = randn(&[3, 4, 8], 4);
        let w = Var::from_tensor(&randn(&[6, 8], 5)).unwrap();
        let probe = randn(&[3, 4, 6], 6);
        let y = linear(&x, w.as_tensor()).unwrap();
        let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let y_ref = composite(&x, w.as_tensor()).unwrap();
        let grads_ref = (y_ref * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(
            &[grads.get(&w).unwrap().clone()],
            &[grads_ref.get(&w).unwrap().clone()],
            1e-4,
        );
        assert!(grads.get(&x).is_none(), "no gradient for an input outside the graph");
        let input_shaped = grads
            .get_ids()
            .filter_map(|id| grads.get_id(*id))
            .filter(|g| g.dims() == x.dims())
            .count();
        assert_eq!(input_shaped, 0, "no input gradient is computed at all");
    }
}
