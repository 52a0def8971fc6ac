//! OpenBLAS's `cblas_sgemm`, loaded at run time when asked for and the machine has it (Debian/Ubuntu
//! `libopenblas0`, Fedora `openblas`): nothing links against it, so no package depends on it. Off unless
//! `FREEZETUNE_BLAS` says otherwise, because measured in training it lost: on an AMD EPYC (Zen 4, 2 threads) its
//! sgemm beat `gemm` at some shapes alone (bench-matmul) but the step got ~15% slower with it, its own thread pool
//! spinning against rayon's. `FREEZETUNE_BLAS=auto` measures both backends per shape (`gemm.rs`) and keeps the
//! faster; `=openblas` uses it for every matmul big enough to be measured (for A/B runs on other CPUs, e.g.
//! Intel's, where PyTorch's MKL leads); `=/path/lib.so` loads that file and measures as `auto` does. With `auto`
//! a shape's backend depends on timings, so two runs of one config may round differently (within f32 rounding of
//! each other); the default never varies.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

type Sgemm = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
) -> ();

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// Whether `FREEZETUNE_BLAS=openblas` asks for OpenBLAS everywhere instead of measuring per shape.
pub fn forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("FREEZETUNE_BLAS").is_ok_and(|v| v == "openblas"))
}

/// A loaded OpenBLAS.
pub struct Blas {
    sgemm: Sgemm,
    /// "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64", as the library describes itself.
    pub description: String,
    _lib: libloading::Library,
}

/// The system's OpenBLAS, loaded once when `FREEZETUNE_BLAS` asks for it, with its thread count set to rayon's;
/// None otherwise or where there is none.
pub fn openblas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(load).as_ref()
}

fn load() -> Option<Blas> {
    let setting = std::env::var("FREEZETUNE_BLAS").unwrap_or_default();
    let candidates: Vec<String> = match setting.as_str() {
        "" | "off" | "0" | "gemm" => return None,
        "auto" | "openblas" => ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"]
            .map(String::from)
            .to_vec(),
        path => vec![path.to_string()],
    };
    candidates.iter().find_map(|name| load_from(name))
}

/// OpenBLAS from the file or library name `name`, with its thread count set to rayon's; None if it does not
/// load or lacks `cblas_sgemm`.
pub fn load_from(name: &str) -> Option<Blas> {
    // SAFETY: loading OpenBLAS runs its initialisers, which only detect the CPU and size its buffers.
    let lib = unsafe { libloading::Library::new(name) }.ok()?;
    // SAFETY: the symbols have OpenBLAS's documented C signatures.
    unsafe {
        let sgemm: Sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
        if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
            set(rayon::current_num_threads() as c_int);
        }
        let text = |symbol: &[u8]| {
            lib.get::<unsafe extern "C" fn() -> *const c_char>(symbol)
                .ok()
                .map(|f| CStr::from_ptr(f()).to_string_lossy().trim().to_string())
        };
        let description = text(b"openblas_get_config\0").unwrap_or_else(|| name.to_string());
        let description = match text(b"openblas_get_corename\0") {
            Some(c) if !description.contains(&c) => format!("{description}, {c} kernels"),
            _ => description,
        };
        Some(Blas {
            sgemm,
            description,
            _lib: lib,
        })
    }
}

/// How cblas reads a `rows × cols` matrix stored with strides (`rs`, `cs`), row-major: stored as it is (NoTrans,
/// leading dimension `rs`) or transposed (Trans, leading dimension `cs`). cblas refuses a leading dimension below
/// the row length it implies (it prints an error and computes nothing), so where a dimension is 1 and its stride
/// means nothing, the smallest valid leading dimension is used. None where cblas cannot read the layout.
fn cblas_view(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(c_int, c_int)> {
    let valid = |ld: usize, min: usize| (ld >= min.max(1) && ld <= c_int::MAX as usize).then_some(ld as c_int);
    let stored = || {
        let ld = if rows <= 1 {
            cols.max(1)
        } else {
            usize::try_from(rs).ok()?
        };
        (cs == 1 || cols <= 1).then_some(())?;
        valid(ld, cols).map(|ld| (NO_TRANS, ld))
    };
    let transposed = || {
        let ld = if cols <= 1 {
            rows.max(1)
        } else {
            usize::try_from(cs).ok()?
        };
        (rs == 1 || rows <= 1).then_some(())?;
        valid(ld, rows).map(|ld| (TRANS, ld))
    };
    stored().or_else(transposed)
}

impl Blas {
    /// `dst (m×n) = lhs (m×k) · rhs (k×n)` (overwriting dst), each given as (pointer, row stride, column stride).
    /// Returns false, touching nothing, where cblas cannot express a layout (dst must be stored row-major).
    ///
    /// # Safety
    /// Every pointer must address a matrix of the stated shape and strides, and `dst` must not be read or
    /// written by another thread meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        dst: (*mut f32, isize, isize),
        lhs: (*const f32, isize, isize),
        rhs: (*const f32, isize, isize),
    ) -> bool {
        let fits = |x: usize| x <= c_int::MAX as usize;
        let views = (
            cblas_view(m, k, lhs.1, lhs.2),
            cblas_view(k, n, rhs.1, rhs.2),
            cblas_view(m, n, dst.1, dst.2),
        );
        let (Some((ta, lda)), Some((tb, ldb)), Some((NO_TRANS, ldc))) = views else {
            return false;
        };
        if m == 0 || n == 0 || k == 0 || !(fits(m) && fits(n) && fits(k)) {
            return false;
        }
        (self.sgemm)(
            ROW_MAJOR, ta, tb, m as c_int, n as c_int, k as c_int, 1.0, lhs.0, lda, rhs.0, ldb, 0.0, dst.0, ldc,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lhs (m×k) · rhs (k×n)` the slow way, from (values, row stride, column stride).
    fn reference(m: usize, n: usize, k: usize, lhs: (&[f32], isize, isize), rhs: (&[f32], isize, isize)) -> Vec<f32> {
        let at =
            |(v, rs, cs): (&[f32], isize, isize), i: usize, j: usize| v[(i as isize * rs + j as isize * cs) as usize];
        (0..m * n)
            .map(|ij| (0..k).map(|p| at(lhs, ij / n, p) * at(rhs, p, ij % n)).sum())
            .collect()
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919) % 200) as f32 * 0.01 - 1.0)
            .collect()
    }

    #[test]
    fn sgemm_reads_every_layout_and_degenerate_dimension_as_gemm_does() {
        let Some(blas) = ["libopenblas.so.0", "libopenblas.so"].iter().find_map(|n| load_from(n)) else {
            eprintln!("no OpenBLAS on this machine: nothing to check");
            return;
        };
        // (m, n, k): ordinary, and each dimension 1 (where a stride means nothing and cblas is strict).
        for (m, n, k) in [(7, 5, 3), (4, 1, 6), (5, 3, 1), (1, 4, 5)] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            for (lhs_t, rhs_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let lhs = if lhs_t {
                    (&a[..], 1, m as isize)
                } else {
                    (&a[..], k as isize, 1)
                };
                let rhs = if rhs_t {
                    (&b[..], 1, k as isize)
                } else {
                    (&b[..], n as isize, 1)
                };
                let mut out = vec![f32::NAN; m * n];
                // SAFETY: a holds m·k values and b k·n, read with the strides of their layout; out is m×n.
                let ran = unsafe {
                    blas.sgemm(
                        m,
                        n,
                        k,
                        (out.as_mut_ptr(), n as isize, 1),
                        (lhs.0.as_ptr(), lhs.1, lhs.2),
                        (rhs.0.as_ptr(), rhs.1, rhs.2),
                    )
                };
                assert!(
                    ran,
                    "{m}x{n}x{k} lhs_t {lhs_t} rhs_t {rhs_t}: cblas should take this layout"
                );
                let want = reference(m, n, k, lhs, rhs);
                for (got, want) in out.iter().zip(&want) {
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{m}x{n}x{k} lhs_t {lhs_t} rhs_t {rhs_t}: {got} vs {want}"
                    );
                }
            }
        }
        // A layout cblas cannot read is declined, not computed wrongly.
        let a = values(12, 3);
        let mut out = vec![0f32; 4];
        // SAFETY: nothing is read or written when the layout is declined.
        let ran = unsafe {
            blas.sgemm(
                2,
                2,
                3,
                (out.as_mut_ptr(), 2, 1),
                (a.as_ptr(), 6, 2),
                (a.as_ptr(), 2, 1),
            )
        };
        assert!(!ran, "neither stride of the left operand is 1");
    }
}
