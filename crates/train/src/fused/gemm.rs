//! Direct calls into the `gemm` crate (candle's own CPU matmul) on raw strided f32 matrices, for fused kernels
//! that write straight into their output layout instead of going through candle's matmul and a copy.

pub(super) use gemm::Parallelism;

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub *mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element `offset` past the start (a method, so closures capture the `Shared`, not its raw pointer).
    ///
    /// # Safety
    /// `offset` must be inside the buffer.
    pub(super) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// A strided matrix: pointer, row stride, column stride.
#[derive(Clone, Copy)]
pub(super) struct Mat(pub *const f32, pub isize, pub isize);

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` on the calling thread.
///
/// # Safety
/// Every pointer must address a matrix of the stated shape and strides, and `dst` must not be written by another
/// thread meanwhile.
pub(super) unsafe fn matmul(m: usize, n: usize, k: usize, dst: Mat, accumulate: bool, lhs: Mat, rhs: Mat) {
    matmul_on(Parallelism::None, m, n, k, dst, accumulate, lhs, rhs)
}

/// As [`matmul`], split across `par`'s threads.
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_on(
    par: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0 as *mut f32,
        dst.2,
        dst.1,
        accumulate,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    )
}
