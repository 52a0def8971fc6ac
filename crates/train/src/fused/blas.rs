//! OpenBLAS's `cblas_sgemm`, loaded at run time when asked for and the machine has it (Debian/Ubuntu
//! `libopenblas0`, Fedora `openblas`): nothing links against it, so no package depends on it. Off unless
//! `FREEZETUNE_BLAS` says otherwise, because measured in training it lost: on an AMD EPYC (Zen 4, 2 threads) its
//! sgemm beat `gemm` at some shapes alone (bench-matmul) but the step got ~15% slower with it, its own thread pool
//! spinning against rayon's. `FREEZETUNE_BLAS=auto` measures both backends per shape (`gemm.rs`) and keeps the
//! faster; `=openblas` uses it for every matmul it can take (for A/B runs on other CPUs, e.g. Intel's, where
//! PyTorch's MKL leads); `=/path/lib.so` loads that file and measures as `auto` does.

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
    candidates.iter().find_map(|name| {
        // SAFETY: loading OpenBLAS runs its initialisers, which only detect the CPU and size its buffers.
        let lib = unsafe { libloading::Library::new(name) }.ok()?;
        // SAFETY: the symbols have OpenBLAS's documented C signatures.
        unsafe {
            let sgemm: Sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
            if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                set(rayon::current_num_threads() as c_int);
            }
            let description = lib
                .get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_config\0")
                .ok()
                .map(|f| CStr::from_ptr(f()).to_string_lossy().trim().to_string())
                .unwrap_or_else(|| name.clone());
            let core = lib
                .get::<unsafe extern "C" fn() -> *const c_char>(b"openblas_get_corename\0")
                .ok()
                .map(|f| CStr::from_ptr(f()).to_string_lossy().trim().to_string());
            let description = match core {
                Some(c) if !description.contains(&c) => format!("{description}, {c} kernels"),
                _ => description,
            };
            Some(Blas {
                sgemm,
                description,
                _lib: lib,
            })
        }
    })
}

/// A matrix as cblas takes it, row-major: its pointer, whether it is stored transposed, and its leading dimension.
/// None where neither stride is 1 (cblas cannot read it).
fn cblas_view(rows_stride: isize, cols_stride: isize) -> Option<(c_int, c_int)> {
    match (rows_stride, cols_stride) {
        (rs, 1) if rs >= 1 => Some((NO_TRANS, rs as c_int)),
        (1, cs) if cs >= 1 => Some((TRANS, cs as c_int)),
        _ => None,
    }
}

impl Blas {
    /// `dst (m×n) = lhs (m×k) · rhs (k×n)` (overwriting dst), each given as (pointer, row stride, column stride).
    /// Returns false, touching nothing, where cblas cannot express a layout (dst must have unit column stride).
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
        let (Some((ta, lda)), Some((tb, ldb))) = (cblas_view(lhs.1, lhs.2), cblas_view(rhs.1, rhs.2)) else {
            return false;
        };
        if dst.2 != 1 || dst.1 < 1 || !(fits(m) && fits(n) && fits(k) && fits(dst.1 as usize)) {
            return false;
        }
        (self.sgemm)(
            ROW_MAJOR,
            ta,
            tb,
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            lhs.0,
            lda,
            rhs.0,
            ldb,
            0.0,
            dst.0,
            dst.1 as c_int,
        );
        true
    }
}
