//! Rotary embedding fused with the split into heads. The composite path reshapes a projection (batch, seq,
//! heads·head_dim) to heads, copies it contiguous, then rotates it with narrow, neg, cat, two broadcast products and
//! an add — seven recorded nodes whose backward computes (and keeps) gradients for the constant cos/sin tables too.
//! Here one pass reads the projection and writes the rotated heads (batch, heads, seq, head_dim); its backward is
//! one pass the other way and differentiates only the input.

use super::f32s;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `x` (batch, seq, heads, head_dim) → rotated (batch, heads, seq, head_dim), with f32 `cos`/`sin` (seq, head_dim)
/// laid out as HF's `rotate_half` wants them (the two halves of a row share each frequency).
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    split_heads(x, x.dim(2)?, Some((cos, sin)))
}

/// A projection `x` (batch, seq, heads·head_dim), or already (batch, seq, heads, head_dim), as heads (batch, heads,
/// seq, head_dim), rotated by `rotation`'s cos/sin tables (seq, head_dim) where given: one node, where reshape,
/// transpose and copy would record three.
pub fn split_heads(x: &Tensor, heads: usize, rotation: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (b, t) = (x.dim(0)?, x.dim(1)?);
    let width = x.elem_count() / (b * t).max(1);
    let d = width / heads.max(1);
    if !(x.rank() == 3 || x.rank() == 4 && x.dim(2)? == heads) || heads * d != width {
        bail!("split_heads: {:?} is not {heads} heads", x.shape())
    }
    let tables = rotation.map(|(cos, sin)| tables_of(cos, sin, t, d)).transpose()?;
    let op = Rope {
        tables,
        dims: (b, t, heads, d),
        input_shape: x.shape().clone(),
        backward: false,
    };
    x.contiguous()?.apply_op1(op)
}

/// The values of f32 cos/sin tables (seq, head_dim), checked against `t` positions of heads of `d`.
pub(super) fn tables_of(cos: &Tensor, sin: &Tensor, t: usize, d: usize) -> Result<Tables> {
    if cos.dims2()? != (t, d) || sin.dims2()? != (t, d) || d % 2 != 0 {
        bail!(
            "rope: tables {:?}/{:?} do not fit {t} positions of heads of {d}",
            cos.shape(),
            sin.shape()
        )
    }
    let values = |t: &Tensor| -> Result<Arc<Vec<f32>>> { Ok(Arc::new(t.flatten_all()?.to_vec1::<f32>()?)) };
    Ok((values(cos)?, values(sin)?))
}

/// cos and sin (seq, head_dim), row-major.
pub(super) type Tables = (Arc<Vec<f32>>, Arc<Vec<f32>>);

struct Rope {
    /// None: the heads are split, not rotated.
    tables: Option<Tables>,
    /// batch, seq, heads, head_dim.
    dims: (usize, usize, usize, usize),
    /// The forward pass's input shape, which its backward pass gives back.
    input_shape: Shape,
    /// The backward pass: (batch, heads, seq, head_dim) → the input's layout, rotating by −angle.
    backward: bool,
}

/// `out = rotate(row)` by the angles whose cos/sin are `c`/`s` (forward), or by their negatives (backward).
#[inline]
fn rotate(row: &[f32], c: &[f32], s: &[f32], backward: bool, out: &mut [f32]) {
    let half = row.len() / 2;
    let (x1, x2) = row.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    let (c1, c2) = c.split_at(half);
    let (s1, s2) = s.split_at(half);
    if backward {
        // dx1 = dy1·c1 + dy2·s2, dx2 = dy2·c2 − dy1·s1 (the transpose of the forward map).
        for j in 0..half {
            o1[j] = x1[j] * c1[j] + x2[j] * s2[j];
            o2[j] = x2[j] * c2[j] - x1[j] * s1[j];
        }
    } else {
        // y1 = x1·c1 − x2·s1, y2 = x2·c2 + x1·s2.
        for j in 0..half {
            o1[j] = x1[j] * c1[j] - x2[j] * s1[j];
            o2[j] = x2[j] * c2[j] + x1[j] * s2[j];
        }
    }
}

/// Where a projection's heads sit in its rows: each of the batch·seq rows is `stride` values wide, and its
/// heads' `heads·head_dim` values start at column `offset` (a fused q/k/v projection holds three such ranges).
#[derive(Clone, Copy)]
pub(super) struct Columns {
    pub stride: usize,
    pub offset: usize,
}

/// The heads (batch, heads, seq, head_dim) of the rows of `x` laid out as `cols`, rotated by `tables` where given.
pub(super) fn to_heads(
    x: &[f32],
    cols: Columns,
    dims: (usize, usize, usize, usize),
    tables: Option<&Tables>,
) -> Vec<f32> {
    let (b, t, h, d) = dims;
    assert!(x.len() >= b * t * cols.stride && cols.offset + h * d <= cols.stride);
    let mut out = vec![0f32; b * h * t * d];
    out.par_chunks_mut(t * d).enumerate().for_each(|(bh, block)| {
        let (bi, hi) = (bh / h, bh % h);
        for (ti, o) in block.chunks_mut(d).enumerate() {
            let src = &x[(bi * t + ti) * cols.stride + cols.offset + hi * d..][..d];
            match tables {
                Some((cos, sin)) => rotate(src, &cos[ti * d..][..d], &sin[ti * d..][..d], false, o),
                None => o.copy_from_slice(src),
            }
        }
    });
    out
}

/// The way back from [`to_heads`]: the heads' gradient `dy` (batch, heads, seq, head_dim), rotated back, written
/// into the `cols` columns of `out`'s rows (the other columns are left as they are).
pub(super) fn from_heads(
    dy: &[f32],
    dims: (usize, usize, usize, usize),
    tables: Option<&Tables>,
    out: &mut [f32],
    cols: Columns,
) {
    let (b, t, h, d) = dims;
    assert!(dy.len() == b * h * t * d && out.len() >= b * t * cols.stride && cols.offset + h * d <= cols.stride);
    out.par_chunks_mut(cols.stride)
        .take(b * t)
        .enumerate()
        .for_each(|(row, o)| {
            let (bi, ti) = (row / t, row % t);
            for (hi, o) in o[cols.offset..][..h * d].chunks_mut(d).enumerate() {
                let src = &dy[((bi * h + hi) * t + ti) * d..][..d];
                match tables {
                    Some((cos, sin)) => rotate(src, &cos[ti * d..][..d], &sin[ti * d..][..d], true, o),
                    None => o.copy_from_slice(src),
                }
            }
        });
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        if self.backward {
            "fused-rope-grad"
        } else {
            "fused-rope"
        }
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "rope")?;
        let (b, t, h, d) = self.dims;
        if x.len() != b * t * h * d {
            bail!("rope: {} values for {b}x{t}x{h}x{d}", x.len())
        }
        let cols = Columns {
            stride: h * d,
            offset: 0,
        };
        if self.backward {
            let mut out = vec![0f32; x.len()];
            from_heads(x, self.dims, self.tables.as_ref(), &mut out, cols);
            Ok((CpuStorage::F32(out), self.input_shape.clone()))
        } else {
            let out = to_heads(x, cols, self.dims, self.tables.as_ref());
            Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
        }
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let grad = Rope {
            tables: self.tables.clone(),
            dims: self.dims,
            input_shape: self.input_shape.clone(),
            backward: true,
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&grad)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, randn, value_and_grads};
    use super::*;

    fn tables(t: usize, d: usize) -> (Tensor, Tensor) {
        let angles = randn(&[t, d / 2], 30);
        let angles = Tensor::cat(&[&angles, &angles], 1).unwrap();
        (angles.cos().unwrap(), angles.sin().unwrap())
    }

    #[test]
    fn rope_heads_matches_reshape_then_the_composite_rope() {
        let (b, t, h, d) = (2, 5, 3, 8);
        let (cos, sin) = tables(t, d);
        let x = randn(&[b, t, h, d], 31);
        let probe = randn(&[b, h, t, d], 32);
        let fused = value_and_grads(std::slice::from_ref(&x), &probe, |v| rope_heads(&v[0], &cos, &sin));
        let composite = value_and_grads(std::slice::from_ref(&x), &probe, |v| {
            crate::ops::apply_rope(&v[0].transpose(1, 2)?.contiguous()?, &cos, &sin)
        });
        assert_close(&fused, &composite, 1e-5);
    }

    #[test]
    fn split_heads_takes_the_flat_projection_rotated_or_not() {
        let (b, t, h, d) = (2, 5, 3, 8);
        let (cos, sin) = tables(t, d);
        let x = randn(&[b, t, h * d], 34);
        let probe = randn(&[b, h, t, d], 35);
        let rotated = value_and_grads(std::slice::from_ref(&x), &probe, |v| {
            split_heads(&v[0], h, Some((&cos, &sin)))
        });
        let composite = value_and_grads(std::slice::from_ref(&x), &probe, |v| {
            let heads = v[0].reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()?;
            crate::ops::apply_rope(&heads, &cos, &sin)
        });
        assert_close(&rotated, &composite, 1e-5);
        let split = value_and_grads(std::slice::from_ref(&x), &probe, |v| split_heads(&v[0], h, None));
        let composite = value_and_grads(std::slice::from_ref(&x), &probe, |v| {
            v[0].reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()
        });
        assert_close(&split, &composite, 1e-7);
        assert_eq!(
            split[1].dims(),
            x.dims(),
            "the gradient comes back in the input's shape"
        );
        assert!(split_heads(&x, 5, None).is_err(), "24 values per row are not 5 heads");
    }

    #[test]
    fn rope_heads_rejects_tables_of_another_length() {
        let (cos, sin) = tables(4, 8);
        let err = rope_heads(&randn(&[1, 5, 2, 8], 33), &cos, &sin).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
