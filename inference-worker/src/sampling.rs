//! Next-token choice from logits: greedy at temperature 0, otherwise temperature, top-k
//! and nucleus (top-p) sampling from a seeded generator.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings of one request, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// The id of the next token.
    pub fn next_token(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.params.temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = candidates[0].1;
        let mut total = 0.0f32;
        for candidate in &mut candidates {
            candidate.1 = (candidate.1 - max).exp();
            total += candidate.1;
        }
        if self.params.top_p < 1.0 {
            let mut kept = 0.0f32;
            let mut keep = candidates.len();
            for (i, candidate) in candidates.iter().enumerate() {
                kept += candidate.1 / total;
                if kept >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|c| c.1).sum();
        }
        let mut point = self.rng.random::<f32>() * total;
        for &(id, weight) in &candidates {
            if point < weight {
                return id;
            }
            point -= weight;
        }
        candidates[candidates.len() - 1].0
    }
}

/// The first index of the largest logit.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_greedy() {
        let mut sampler = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        });
        assert_eq!(sampler.next_token(&[0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn top_k_one_always_picks_the_best() {
        let mut sampler = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(7),
            ..SamplingParams::default()
        });
        for _ in 0..50 {
            assert_eq!(sampler.next_token(&[0.0, 1.0, 0.9, 0.5]), 1);
        }
    }

    #[test]
    fn small_top_p_keeps_only_the_dominant_token() {
        let mut sampler = Sampler::new(SamplingParams {
            top_p: 0.5,
            seed: Some(3),
            ..SamplingParams::default()
        });
        for _ in 0..50 {
            assert_eq!(sampler.next_token(&[5.0, 1.0, 1.0, 1.0]), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            seed: Some(42),
            ..SamplingParams::default()
        };
        let mut a = Sampler::new(params.clone());
        let mut b = Sampler::new(params);
        let first: Vec<u32> = (0..20).map(|_| a.next_token(&logits)).collect();
        let second: Vec<u32> = (0..20).map(|_| b.next_token(&logits)).collect();
        assert_eq!(first, second);
        assert!(first.iter().any(|&t| t != first[0]), "sampling should vary");
    }
}
