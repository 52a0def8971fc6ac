//! The pre-norm a block op (`mlp.rs`, `attn_block.rs`) starts with and the residual add it ends with, over plain
//! row buffers: the forward pass keeps only each row's 1/rms, and the normed rows are made again where the
//! backward pass needs them.

use super::{add_into, inv_rms, norm_grad_row, norm_row, rows_per_task};
use rayon::prelude::*;

/// What a block keeps of its post-norm for the backward pass: the norm's input (y, rows of x's width) and each
/// row's 1/rms.
pub(super) struct PostNormInput {
    y: Vec<f32>,
    inv_rms: Vec<f32>,
}

/// A block's output: `x + m · y`, or `x + m · post(y)` where the block has a post-norm (Gemma's), with `y`
/// (rows of x's width) written by `project(out, accumulate, scale)`, which adds `scale · y` into `out` when
/// `accumulate`. Returns the output and, under a post-norm, what [`gradient_through_post`] needs.
///
/// # Safety
/// `project` must write (or, accumulating, add into) exactly x's length of values at the pointer it is given,
/// and read none of them when not accumulating (that buffer starts unwritten).
pub(super) unsafe fn residual_through_post(
    x: &[f32],
    post: Option<&[f32]>,
    (offset, eps, m): (f32, f32, f32),
    project: impl Fn(*mut f32, bool, f32),
) -> (Vec<f32>, Option<PostNormInput>) {
    let mut out = x.to_vec();
    let Some(post) = post else {
        project(out.as_mut_ptr(), true, m);
        return (out, None);
    };
    let y = super::gemm::written(x.len(), |y| project(y, false, 1.0));
    let (inv, normed_y) = normed(&y, post, offset, eps);
    out.iter_mut().zip(&normed_y).for_each(|(o, n)| *o += m * n);
    (out, Some(PostNormInput { y, inv_rms: inv }))
}

/// The way back through [`residual_through_post`] to y: the gradient reaching y and the factor still to apply to
/// it (`m · dy` as `(dy, m)` without a post-norm; through the post-norm's backward pass, with no residual of its
/// own, as `(dy', 1)` with one), and the post-norm weight's gradient.
pub(super) fn gradient_through_post<'a>(
    dy: &'a [f32],
    saved: Option<PostNormInput>,
    post: Option<&[f32]>,
    (offset, m): (f32, f32),
) -> (std::borrow::Cow<'a, [f32]>, f32, Option<Vec<f32>>) {
    debug_assert_eq!(
        saved.is_some(),
        post.is_some(),
        "a post-norm's input is kept exactly where there is one"
    );
    match (saved, post) {
        (Some(PostNormInput { y, inv_rms }), Some(post)) => {
            let scaled: Vec<f32> = dy.iter().map(|g| g * m).collect();
            let (dy_y, dpost) = rms_norm_backward(&y, &scaled, &inv_rms, post, offset, None);
            (dy_y.into(), 1.0, Some(dpost))
        }
        _ => (dy.into(), m, None),
    }
}

/// Each row's 1/rms and the normed rows `x / rms · (w + offset)`, rows of `w.len()`.
pub(super) fn normed(x: &[f32], w: &[f32], offset: f32, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = x.par_chunks(w.len()).map(|r| inv_rms(r, eps)).collect();
    let normed = renormed(x, &inv, w, offset);
    (inv, normed)
}

/// `x / rms · (w + offset)` per row, from each row's 1/rms.
pub(super) fn renormed(x: &[f32], inv: &[f32], w: &[f32], offset: f32) -> Vec<f32> {
    let h = w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h).zip(inv))
        .for_each(|(o, (r, &s))| norm_row(r, s, w, offset, o));
    out
}

/// The RMSNorm's backward pass ([`norm_grad_row`]) with the residual's gradient `dy` added where the norm's input
/// also feeds a residual (a pre-norm; a post-norm has none): dx = dy + the norm's input gradient; and the norm
/// weight's gradient Σ_rows dn·n.
pub(super) fn rms_norm_backward(
    x: &[f32],
    dnormed: &[f32],
    inv: &[f32],
    w: &[f32],
    offset: f32,
    dy: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let h = w.len();
    let w_offset: Vec<f32> = w.iter().map(|w| w + offset).collect();
    let rows = rows_per_task(x.len() / h);
    let mut dx = dy.map_or_else(|| vec![0f32; x.len()], <[f32]>::to_vec);
    let dw = dx
        .par_chunks_mut(rows * h)
        .zip(x.par_chunks(rows * h).zip(dnormed.par_chunks(rows * h)))
        .zip(inv.par_chunks(rows))
        .map(|((dxb, (xb, dnb)), invb)| {
            let mut dw = vec![0f32; h];
            for (((dxr, xr), dnr), &r) in dxb.chunks_mut(h).zip(xb.chunks(h)).zip(dnb.chunks(h)).zip(invb) {
                norm_grad_row(xr, dnr, r, &w_offset, dxr, &mut dw);
            }
            dw
        })
        .reduce(|| vec![0f32; h], add_into);
    (dx, dw)
}
