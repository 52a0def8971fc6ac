//! The bf16 matmul's kernel on Intel's AMX (Sapphire Rapids on): eight tile registers of 16 rows × 64 bytes and
//! `tdpbf16ps`, which multiplies a 16 × 32 tile of bf16s by a 32 × 16 one into 16 × 16 f32 sums in one
//! instruction (8192 multiply-adds; about 16 times what a core's two AVX-512 FMA ports do in the same cycles,
//! and measured 3-4x the f32 FMA peak on an Emerald Rapids Xeon). Same arithmetic as the AVX512-BF16 kernel
//! (`tile_kernel.rs`): bf16 operands, products and sums in f32. Inline assembly, as the other kernels: AMX
//! intrinsics are not stable Rust.
//!
//! Linux hands AMX's 8 KiB of tile state to a process only when asked (`arch_prctl(ARCH_REQ_XCOMP_PERM)`);
//! without that the first tile instruction is an illegal instruction. [`supported`] asks once, and says no where
//! the CPU, the OS or the kernel's answer says no.
//!
//! Under test, on a CPU without AMX (or with `FREEZETUNE_AMX=0`), [`block`] is a scalar stand-in with the same
//! contract, so that the driver (`amx_gemm.rs`: padding, strides, the direct and buffered stores) is tested on
//! every machine.

/// Rows of the kernel's block: two tiles of 16.
pub(super) const MR: usize = 32;
/// Columns of the kernel's block: two tiles of 16, as many as a strip of the AVX-512 kernels' right operand
/// (`tile_kernel::NR`), whose packing this kernel reads as it is.
pub(super) const NR: usize = 32;
/// Packed words (pairs of k) one step of the kernel takes: a tile row of 64 bytes.
pub(super) const STEP_WORDS: usize = 16;

/// Whether this CPU and OS run AMX's bf16 tiles (permission asked and granted, once per process), and the
/// AVX512-BF16 kernel that the packing runs beside.
pub fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if !cpu_has_amx_bf16() || !super::packed_gemm::available() {
            return false;
        }
        let granted = permission_granted();
        if !granted {
            eprintln!(
                "this CPU has AMX but the OS did not grant its tile state (it needs Linux 5.16 or newer, and a \
                 hypervisor that passes it on): auto computes in f32 here, and bf16 keeps its tensors in bf16"
            );
        }
        granted
    })
}

/// Whether the bf16 matmul runs on AMX's tiles: [`supported`], and `FREEZETUNE_AMX` is not `0` (which keeps the
/// bf16 matmuls on the AVX512-BF16 kernel, to compare the two; `auto` still picks bf16 on such a CPU).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| supported() && std::env::var("FREEZETUNE_AMX").map_or(true, |v| v != "0"))
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 exists where leaf 0 says so. (The call is safe from Rust
    // 1.87 on; this project builds with 1.85 too.)
    #[allow(unused_unsafe)]
    let (max_leaf, leaf7) = unsafe {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        (__cpuid(0).eax, __cpuid_count(7, 0))
    };
    // EDX bit 22: AMX-BF16, bit 24: AMX-TILE.
    max_leaf >= 7 && leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

/// Asks Linux for the tile data state (XTILEDATA, feature 18); it says no on kernels before 5.16 or where the
/// hypervisor hides it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn permission_granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which state the kernel lets the process use.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn permission_granted() -> bool {
    false
}

/// The tile configuration `ldtilecfg` reads (palette 1): tmm0..7 all 16 rows of 64 bytes.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

#[cfg(target_arch = "x86_64")]
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Runs `f` with this thread's tiles configured, and hands the tile state back after (`tilerelease`), however `f`
/// ends: a thread holding tile state makes every context switch save 8 KiB more.
///
/// # Safety
/// [`supported`] must have said yes (under test, where [`available`] says no, this runs `f` alone, for the
/// stand-in).
pub(super) unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    if cfg!(test) && !available() {
        return f();
    }
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: the tiles were configured below; releasing them only returns them to their initial state.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                std::arch::asm!("tilerelease", options(nostack, nomem))
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
    let _release = Release;
    f()
}

/// c (32 × 32 f32) = [c +] Σ over `steps` steps of a · b, row i of `c` at `c + i · c_row_bytes`, its 32
/// columns contiguous; added to when `accumulate`. `a` holds 32 rows of `steps · 16` words (pairs of bf16s, the
/// earlier k in the lower half), row i at `a + i · a_row_bytes`; `b` holds `steps · 16` rows of 32 words, one per
/// column (a strip of `pack_bf16_strips::<32>`).
///
/// # Safety
/// Inside [`with_tiles`]; `steps` ≥ 1; the operands must hold what is said above and `c`'s rows be readable and
/// writable.
pub(super) unsafe fn block(
    steps: usize,
    a: (*const u32, isize),
    b: *const u32,
    c: (*mut f32, isize),
    accumulate: bool,
) {
    #[cfg(test)]
    if !available() {
        return stand_in(steps, a, b, c, accumulate);
    }
    #[cfg(target_arch = "x86_64")]
    tile_block(steps, a, b, c, accumulate);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (steps, a, b, c, accumulate);
        unreachable!("AMX runs only on x86-64: `supported` says no elsewhere");
    }
}

/// [`block`] on the tiles.
///
/// # Safety
/// As for [`block`], with AMX [`supported`].
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn tile_block(
    steps: usize,
    (a, a_row_bytes): (*const u32, isize),
    b: *const u32,
    (c, c_row_bytes): (*mut f32, isize),
    accumulate: bool,
) {
    assert!(steps >= 1, "the loop runs at least once");
    // tmm0..3 the block's four 16 × 16 sums (rows 0-15 and 16-31 × columns 0-15 and 16-31), tmm4/5 the two row
    // halves of a's step, tmm6/7 the two column halves of b's. A tile row is 64 bytes: a's rows are `a_row_bytes`
    // apart, b's 128 (its strip holds all 32 columns of a word row), c's `c_row_bytes`.
    std::arch::asm!(
        "test {acc}, {acc}",
        "jz 3f",
        "tileloadd tmm0, [{c} + {crs} * 1]",
        "tileloadd tmm1, [{c} + {crs} * 1 + 64]",
        "tileloadd tmm2, [{c_low} + {crs} * 1]",
        "tileloadd tmm3, [{c_low} + {crs} * 1 + 64]",
        "jmp 2f",
        "3:",
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a} + {ars} * 1]",
        "tileloadd tmm5, [{a_low} + {ars} * 1]",
        "tileloadd tmm6, [{b} + {brs} * 1]",
        "tileloadd tmm7, [{b} + {brs} * 1 + 64]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a}, 64",
        "add {a_low}, 64",
        "add {b}, 2048",
        "dec {n}",
        "jnz 2b",
        "tilestored [{c} + {crs} * 1], tmm0",
        "tilestored [{c} + {crs} * 1 + 64], tmm1",
        "tilestored [{c_low} + {crs} * 1], tmm2",
        "tilestored [{c_low} + {crs} * 1 + 64], tmm3",
        n = inout(reg) steps => _,
        a = inout(reg) a => _,
        a_low = inout(reg) a.byte_offset(16 * a_row_bytes) => _,
        ars = in(reg) a_row_bytes,
        b = inout(reg) b => _,
        brs = in(reg) (NR * 4) as isize,
        c = in(reg) c,
        c_low = in(reg) c.byte_offset(16 * c_row_bytes),
        crs = in(reg) c_row_bytes,
        acc = in(reg) accumulate as usize,
        options(nostack),
    );
}

/// [`block`]'s arithmetic in scalar code, for the tests of the driver on CPUs without AMX: each pair of bf16s
/// multiplied and summed in f32, as `tdpbf16ps` does (up to the order of the sums).
///
/// # Safety
/// As for [`block`].
#[cfg(test)]
unsafe fn stand_in(
    steps: usize,
    (a, a_row_bytes): (*const u32, isize),
    b: *const u32,
    (c, c_row_bytes): (*mut f32, isize),
    accumulate: bool,
) {
    let bf16 = |bits: u32| f32::from_bits(bits << 16);
    for i in 0..MR {
        let (a_row, c_row) = (
            a.byte_offset(i as isize * a_row_bytes),
            c.byte_offset(i as isize * c_row_bytes),
        );
        for j in 0..NR {
            let mut sum = if accumulate { *c_row.add(j) } else { 0.0 };
            for p in 0..steps * STEP_WORDS {
                let (x, y) = (*a_row.add(p), *b.add(p * NR + j));
                sum += bf16(x & 0xffff) * bf16(y & 0xffff) + bf16(x >> 16) * bf16(y >> 16);
            }
            *c_row.add(j) = sum;
        }
    }
}
