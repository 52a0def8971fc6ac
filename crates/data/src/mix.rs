//! Several datasets as one, as LLaMA-Factory's `mix_strategy` does it through Hugging Face `interleave_datasets`:
//! `concat` appends them; `interleave_under` draws each next row from a dataset chosen by weight until the first
//! one runs out; `interleave_over` goes on, restarting the ones that ran out, until every dataset has been used
//! whole. Seeded, so a run draws the same rows every time.

use freezetune_core::data_spec::Mix;

/// The rows of `sets` mixed by `mix` with `weights` (one per set, positive; empty: the sets take turns, as
/// `interleave_datasets` without probabilities does).
pub fn mix<T: Clone>(sets: Vec<Vec<T>>, weights: &[f64], mix: Mix, seed: u64) -> Vec<T> {
    let (sets, weights): (Vec<Vec<T>>, Vec<f64>) = match weights.len() == sets.len() {
        true => sets
            .into_iter()
            .zip(weights.iter().copied())
            .filter(|(s, _)| !s.is_empty())
            .unzip(),
        false => (sets.into_iter().filter(|s| !s.is_empty()).collect(), Vec::new()),
    };
    if mix == Mix::Concat || sets.len() < 2 {
        return sets.into_iter().flatten().collect();
    }
    // Shares relative to the largest weight: a sum of huge weights cannot overflow to infinity.
    let largest = weights.iter().copied().fold(0.0f64, f64::max);
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / largest;
            Some(*acc)
        })
        .collect();
    let mut rng = SplitMix(seed ^ 0x1A7E_41EA_5EED);
    let (mut next, mut exhausted) = (vec![0usize; sets.len()], vec![false; sets.len()]);
    let mut out = Vec::new();
    for turn in 0usize.. {
        let i = match cumulative.last() {
            Some(total) => {
                let u = rng.unit() * total;
                cumulative.iter().position(|c| u < *c).unwrap_or(sets.len() - 1)
            }
            None => turn % sets.len(),
        };
        if next[i] == sets[i].len() {
            // interleave_over: start this one again (it has been used whole).
            next[i] = 0;
        }
        out.push(sets[i][next[i]].clone());
        next[i] += 1;
        if next[i] == sets[i].len() {
            exhausted[i] = true;
            // interleave_under stops right after a dataset's last row, as Hugging Face's first_exhausted does.
            if mix == Mix::InterleaveUnder || exhausted.iter().all(|e| *e) {
                break;
            }
        }
    }
    out
}

/// splitmix64: small, seedable, good enough to draw datasets by weight.
struct SplitMix(u64);

impl SplitMix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_set_the_shares_within_five_percent_over_two_thousand_rows() {
        let sets = vec![vec![0u8; 5000], vec![1u8; 5000], vec![2u8; 5000]];
        let rows = mix(sets, &[0.5, 0.3, 0.2], Mix::InterleaveUnder, 42);
        let first = &rows[..2000];
        for (k, want) in [(0u8, 0.5), (1, 0.3), (2, 0.2)] {
            let share = first.iter().filter(|r| **r == k).count() as f64 / 2000.0;
            assert!((share - want).abs() < 0.05, "dataset {k}: {share} for {want}");
        }
    }

    #[test]
    fn under_stops_at_the_first_exhausted_and_over_uses_every_row() {
        let sets = || vec![vec!["a"; 10], (0..100).map(|_| "b").collect::<Vec<_>>()];
        let under = mix(sets(), &[1.0, 1.0], Mix::InterleaveUnder, 1);
        assert_eq!(under.iter().filter(|r| **r == "a").count(), 10);
        assert!(under.len() < 110);
        let over = mix(sets(), &[1.0, 1.0], Mix::InterleaveOver, 1);
        assert!(over.iter().filter(|r| **r == "b").count() >= 100);
        assert!(over.iter().filter(|r| **r == "a").count() > 10, "the small one repeats");
        assert_eq!(mix(sets(), &[], Mix::Concat, 1).len(), 110);
        assert_eq!(mix(sets(), &[1.0, 1.0], Mix::InterleaveUnder, 1), under, "seeded");
    }
}
