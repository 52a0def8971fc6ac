//! Learning-rate schedules as in transformers' `get_*_schedule_with_warmup` (the k-th update, 0-based, uses
//! `lr × lambda(k)`), and the seeded shuffle that fixes the data order.

use freezetune_core::run_config::LrScheduler;

/// Learning rate of update `k` (0-based) out of `total`.
pub fn lr_at(kind: LrScheduler, base: f64, warmup: u64, total: u64, k: u64) -> f64 {
    if k < warmup {
        return base * k as f64 / warmup.max(1) as f64;
    }
    let progress = (k - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match kind {
        LrScheduler::Constant => base,
        LrScheduler::Linear => base * (1.0 - progress).max(0.0),
        LrScheduler::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0),
    }
}

/// Fisher–Yates with a small deterministic generator: the same seed gives the same order on every machine.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = freezetune_core::synth::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        assert_eq!(lr_at(LrScheduler::Constant, 1.0, 0, 10, 5), 1.0);
        assert_eq!(
            lr_at(LrScheduler::Linear, 1.0, 2, 10, 0),
            0.0,
            "warmup starts at 0 as in transformers"
        );
        assert_eq!(lr_at(LrScheduler::Linear, 1.0, 2, 10, 1), 0.5);
        assert_eq!(lr_at(LrScheduler::Linear, 1.0, 2, 10, 6), 0.5);
        assert!((lr_at(LrScheduler::Cosine, 1.0, 0, 10, 5) - 0.5).abs() < 1e-12);
        assert!(lr_at(LrScheduler::Cosine, 1.0, 0, 10, 10).abs() < 1e-12);
    }

    #[test]
    fn shuffle_is_deterministic() {
        let mut a: Vec<u32> = (0..20).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        assert_ne!(a, (0..20).collect::<Vec<_>>());
    }
}
