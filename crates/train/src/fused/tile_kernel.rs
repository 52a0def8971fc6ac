//! The packed matmul's inner kernels for x86 CPUs with AVX-512 (`packed_gemm.rs`): a 14 × 32 tile of f32 sums,
//! the right operand's 32 columns in two registers and each row's value broadcast from memory, as BLIS and MKL
//! lay out AVX-512. Two kernels share the code and differ in one instruction: `vfmadd231ps` (one f32 product per
//! lane) and `vdpbf16ps` (AVX512-BF16: two bf16 products per lane, twice the multiply-adds of an f32 FMA where
//! the CPU runs it on all 512 bits at once). Inline assembly, because the AVX-512 intrinsics and target features
//! are not stable at this project's minimum Rust (1.85); `packed_gemm.rs` calls a kernel only after the CPU has
//! said it has the instructions.

/// Rows of the tile: 14 × 2 accumulator registers, two for the right operand's 32 columns, of AVX-512's 32.
pub(super) const MR: usize = 14;
/// Columns of the tile: two 16-lane registers.
pub(super) const NR: usize = 32;

/// Defines a tile kernel whose multiply-add is the instruction `$op` (`zmm_acc += zmm_b · broadcast(a)`).
macro_rules! tile_kernel {
    ($(#[$doc:meta])* $name:ident, $op:literal) => {
        $(#[$doc])*
        ///
        /// `c (MR × NR) = [c +] scale · Σ over the words of a · b`, row i of `c` at `c + i · row_bytes` bytes, its
        /// 32 columns contiguous; added to when `accumulate`, else overwritten. `a` holds `words` groups of MR
        /// u32s (one per row), `b` `words` groups of NR u32s (one per column); see `pack.rs` for what a word holds.
        ///
        /// # Safety
        /// The CPU must have the instruction (and AVX512-F); `words` ≥ 1; `a` must hold `words · MR` values, `b`
        /// `words · NR` (64-byte aligned for speed, not for correctness) and `c` the tile's rows, readable and
        /// writable.
        #[cfg(target_arch = "x86_64")]
        #[inline(never)]
        pub(super) unsafe fn $name(
            words: usize,
            a: *const u32,
            b: *const u32,
            c: *mut f32,
            row_bytes: isize,
            scale: f32,
            accumulate: bool,
        ) {
            assert!(
                words >= 1,
                "the loop runs at least once: zero words would count down from 2^64"
            );
            // Registers: zmm0..27 the tile's rows (row i in zmm 2i and 2i+1), zmm28/29 the word's 32 columns, and
            // zmm30/31 row i's word of `a` broadcast to all 16 lanes (`vbroadcastss`, alternating so that the next
            // row's load need not wait): one load per row and k instead of one per instruction, which CPUs with
            // two FMA ports and two load ports need. The sums then meet `c` in the same registers: scaled (vmulps)
            // or scaled and added (vfmadd213ps with c from memory). This function is compiled without AVX-512, so
            // zmm16..31 cannot even be named as clobbers, and the compiler keeps nothing in them or in the upper
            // halves; xmm0..15 are declared clobbered, and `vzeroupper` spares the SSE code after it the
            // AVX-to-SSE transition penalty. (Built with AVX-512 enabled, say target-cpu=native, nothing
            // vector-typed is live across the asm here either: the function holds pointers only, is never
            // inlined, and its callers see a call, which may clobber every vector register.)
            std::arch::asm!(
                "vpxord zmm0, zmm0, zmm0",
                "vpxord zmm1, zmm1, zmm1",
                "vpxord zmm2, zmm2, zmm2",
                "vpxord zmm3, zmm3, zmm3",
                "vpxord zmm4, zmm4, zmm4",
                "vpxord zmm5, zmm5, zmm5",
                "vpxord zmm6, zmm6, zmm6",
                "vpxord zmm7, zmm7, zmm7",
                "vpxord zmm8, zmm8, zmm8",
                "vpxord zmm9, zmm9, zmm9",
                "vpxord zmm10, zmm10, zmm10",
                "vpxord zmm11, zmm11, zmm11",
                "vpxord zmm12, zmm12, zmm12",
                "vpxord zmm13, zmm13, zmm13",
                "vpxord zmm14, zmm14, zmm14",
                "vpxord zmm15, zmm15, zmm15",
                "vpxord zmm16, zmm16, zmm16",
                "vpxord zmm17, zmm17, zmm17",
                "vpxord zmm18, zmm18, zmm18",
                "vpxord zmm19, zmm19, zmm19",
                "vpxord zmm20, zmm20, zmm20",
                "vpxord zmm21, zmm21, zmm21",
                "vpxord zmm22, zmm22, zmm22",
                "vpxord zmm23, zmm23, zmm23",
                "vpxord zmm24, zmm24, zmm24",
                "vpxord zmm25, zmm25, zmm25",
                "vpxord zmm26, zmm26, zmm26",
                "vpxord zmm27, zmm27, zmm27",
                "2:",
                "vmovups zmm28, [{b}]",
                "vmovups zmm29, [{b} + 64]",
                "vbroadcastss zmm30, dword ptr [{a} + 0]",
                concat!($op, " zmm0, zmm28, zmm30"),
                concat!($op, " zmm1, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 4]",
                concat!($op, " zmm2, zmm28, zmm31"),
                concat!($op, " zmm3, zmm29, zmm31"),
                "vbroadcastss zmm30, dword ptr [{a} + 8]",
                concat!($op, " zmm4, zmm28, zmm30"),
                concat!($op, " zmm5, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 12]",
                concat!($op, " zmm6, zmm28, zmm31"),
                concat!($op, " zmm7, zmm29, zmm31"),
                "vbroadcastss zmm30, dword ptr [{a} + 16]",
                concat!($op, " zmm8, zmm28, zmm30"),
                concat!($op, " zmm9, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 20]",
                concat!($op, " zmm10, zmm28, zmm31"),
                concat!($op, " zmm11, zmm29, zmm31"),
                "vbroadcastss zmm30, dword ptr [{a} + 24]",
                concat!($op, " zmm12, zmm28, zmm30"),
                concat!($op, " zmm13, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 28]",
                concat!($op, " zmm14, zmm28, zmm31"),
                concat!($op, " zmm15, zmm29, zmm31"),
                "vbroadcastss zmm30, dword ptr [{a} + 32]",
                concat!($op, " zmm16, zmm28, zmm30"),
                concat!($op, " zmm17, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 36]",
                concat!($op, " zmm18, zmm28, zmm31"),
                concat!($op, " zmm19, zmm29, zmm31"),
                "vbroadcastss zmm30, dword ptr [{a} + 40]",
                concat!($op, " zmm20, zmm28, zmm30"),
                concat!($op, " zmm21, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 44]",
                concat!($op, " zmm22, zmm28, zmm31"),
                concat!($op, " zmm23, zmm29, zmm31"),
                "vbroadcastss zmm30, dword ptr [{a} + 48]",
                concat!($op, " zmm24, zmm28, zmm30"),
                concat!($op, " zmm25, zmm29, zmm30"),
                "vbroadcastss zmm31, dword ptr [{a} + 52]",
                concat!($op, " zmm26, zmm28, zmm31"),
                concat!($op, " zmm27, zmm29, zmm31"),
                "add {a}, 56",
                "add {b}, 128",
                "dec {n}",
                "jnz 2b",
                "vbroadcastss zmm28, dword ptr [{s}]",
                "test {acc}, {acc}",
                "jnz 3f",
                "vmulps zmm0, zmm0, zmm28",
                "vmulps zmm1, zmm1, zmm28",
                "vmovups [{c}], zmm0",
                "vmovups [{c} + 64], zmm1",
                "add {c}, {rs}",
                "vmulps zmm2, zmm2, zmm28",
                "vmulps zmm3, zmm3, zmm28",
                "vmovups [{c}], zmm2",
                "vmovups [{c} + 64], zmm3",
                "add {c}, {rs}",
                "vmulps zmm4, zmm4, zmm28",
                "vmulps zmm5, zmm5, zmm28",
                "vmovups [{c}], zmm4",
                "vmovups [{c} + 64], zmm5",
                "add {c}, {rs}",
                "vmulps zmm6, zmm6, zmm28",
                "vmulps zmm7, zmm7, zmm28",
                "vmovups [{c}], zmm6",
                "vmovups [{c} + 64], zmm7",
                "add {c}, {rs}",
                "vmulps zmm8, zmm8, zmm28",
                "vmulps zmm9, zmm9, zmm28",
                "vmovups [{c}], zmm8",
                "vmovups [{c} + 64], zmm9",
                "add {c}, {rs}",
                "vmulps zmm10, zmm10, zmm28",
                "vmulps zmm11, zmm11, zmm28",
                "vmovups [{c}], zmm10",
                "vmovups [{c} + 64], zmm11",
                "add {c}, {rs}",
                "vmulps zmm12, zmm12, zmm28",
                "vmulps zmm13, zmm13, zmm28",
                "vmovups [{c}], zmm12",
                "vmovups [{c} + 64], zmm13",
                "add {c}, {rs}",
                "vmulps zmm14, zmm14, zmm28",
                "vmulps zmm15, zmm15, zmm28",
                "vmovups [{c}], zmm14",
                "vmovups [{c} + 64], zmm15",
                "add {c}, {rs}",
                "vmulps zmm16, zmm16, zmm28",
                "vmulps zmm17, zmm17, zmm28",
                "vmovups [{c}], zmm16",
                "vmovups [{c} + 64], zmm17",
                "add {c}, {rs}",
                "vmulps zmm18, zmm18, zmm28",
                "vmulps zmm19, zmm19, zmm28",
                "vmovups [{c}], zmm18",
                "vmovups [{c} + 64], zmm19",
                "add {c}, {rs}",
                "vmulps zmm20, zmm20, zmm28",
                "vmulps zmm21, zmm21, zmm28",
                "vmovups [{c}], zmm20",
                "vmovups [{c} + 64], zmm21",
                "add {c}, {rs}",
                "vmulps zmm22, zmm22, zmm28",
                "vmulps zmm23, zmm23, zmm28",
                "vmovups [{c}], zmm22",
                "vmovups [{c} + 64], zmm23",
                "add {c}, {rs}",
                "vmulps zmm24, zmm24, zmm28",
                "vmulps zmm25, zmm25, zmm28",
                "vmovups [{c}], zmm24",
                "vmovups [{c} + 64], zmm25",
                "add {c}, {rs}",
                "vmulps zmm26, zmm26, zmm28",
                "vmulps zmm27, zmm27, zmm28",
                "vmovups [{c}], zmm26",
                "vmovups [{c} + 64], zmm27",
                "add {c}, {rs}",
                "jmp 4f",
                "3:",
                "vfmadd213ps zmm0, zmm28, [{c}]",
                "vfmadd213ps zmm1, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm0",
                "vmovups [{c} + 64], zmm1",
                "add {c}, {rs}",
                "vfmadd213ps zmm2, zmm28, [{c}]",
                "vfmadd213ps zmm3, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm2",
                "vmovups [{c} + 64], zmm3",
                "add {c}, {rs}",
                "vfmadd213ps zmm4, zmm28, [{c}]",
                "vfmadd213ps zmm5, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm4",
                "vmovups [{c} + 64], zmm5",
                "add {c}, {rs}",
                "vfmadd213ps zmm6, zmm28, [{c}]",
                "vfmadd213ps zmm7, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm6",
                "vmovups [{c} + 64], zmm7",
                "add {c}, {rs}",
                "vfmadd213ps zmm8, zmm28, [{c}]",
                "vfmadd213ps zmm9, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm8",
                "vmovups [{c} + 64], zmm9",
                "add {c}, {rs}",
                "vfmadd213ps zmm10, zmm28, [{c}]",
                "vfmadd213ps zmm11, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm10",
                "vmovups [{c} + 64], zmm11",
                "add {c}, {rs}",
                "vfmadd213ps zmm12, zmm28, [{c}]",
                "vfmadd213ps zmm13, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm12",
                "vmovups [{c} + 64], zmm13",
                "add {c}, {rs}",
                "vfmadd213ps zmm14, zmm28, [{c}]",
                "vfmadd213ps zmm15, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm14",
                "vmovups [{c} + 64], zmm15",
                "add {c}, {rs}",
                "vfmadd213ps zmm16, zmm28, [{c}]",
                "vfmadd213ps zmm17, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm16",
                "vmovups [{c} + 64], zmm17",
                "add {c}, {rs}",
                "vfmadd213ps zmm18, zmm28, [{c}]",
                "vfmadd213ps zmm19, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm18",
                "vmovups [{c} + 64], zmm19",
                "add {c}, {rs}",
                "vfmadd213ps zmm20, zmm28, [{c}]",
                "vfmadd213ps zmm21, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm20",
                "vmovups [{c} + 64], zmm21",
                "add {c}, {rs}",
                "vfmadd213ps zmm22, zmm28, [{c}]",
                "vfmadd213ps zmm23, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm22",
                "vmovups [{c} + 64], zmm23",
                "add {c}, {rs}",
                "vfmadd213ps zmm24, zmm28, [{c}]",
                "vfmadd213ps zmm25, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm24",
                "vmovups [{c} + 64], zmm25",
                "add {c}, {rs}",
                "vfmadd213ps zmm26, zmm28, [{c}]",
                "vfmadd213ps zmm27, zmm28, [{c} + 64]",
                "vmovups [{c}], zmm26",
                "vmovups [{c} + 64], zmm27",
                "add {c}, {rs}",
                "4:",
                "vzeroupper",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                n = inout(reg) words => _,
                c = inout(reg) c => _,
                rs = in(reg) row_bytes,
                s = in(reg) &scale,
                acc = in(reg) accumulate as usize,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                options(nostack),
            );
        }
    };
}

tile_kernel!(
    /// f32 products, one per lane per instruction (`vfmadd231ps`): each word is a row's or column's f32 at one k.
    tile_f32,
    "vfmadd231ps"
);

tile_kernel!(
    /// bf16 products, two per lane per instruction (`vdpbf16ps`, AVX512-BF16): each word is a row's or column's
    /// bf16 values at k = 2p and 2p + 1, the first in the lower half.
    tile_bf16,
    "vdpbf16ps"
);

/// Elsewhere there are no such kernels; `packed_gemm` says no before anything could call them.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn tile_f32(_: usize, _: *const u32, _: *const u32, _: *mut f32, _: isize, _: f32, _: bool) {
    unreachable!("the packed matmul runs only where the CPU has AVX-512")
}

/// See [`tile_f32`]'s stub.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn tile_bf16(_: usize, _: *const u32, _: *const u32, _: *mut f32, _: isize, _: f32, _: bool) {
    unreachable!("the packed matmul runs only where the CPU has AVX512-BF16")
}
