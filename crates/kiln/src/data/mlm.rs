//! BERT's masking (Devlin et al. 2019; transformers `DataCollatorForLanguageModeling`): select
//! `mask_prob` of the non-special tokens; of those, 80 % become `[MASK]`, 10 % a random token,
//! 10 % stay; the loss is computed only at the selected positions.

use rand::Rng;

/// Masking settings.
#[derive(Clone, Copy, Debug)]
pub struct MaskConfig {
    /// Fraction of tokens selected (0.15).
    pub mask_prob: f32,
    /// The `[MASK]` id.
    pub mask_id: u32,
    /// Vocabulary size (random replacements are drawn below it).
    pub vocab_size: u32,
}

/// Masks `ids` in place; returns `(positions, original ids)` of the selected tokens. Tokens
/// flagged in `special` are never selected. At least one token is selected when any can be.
pub fn mask_tokens(
    ids: &mut [u32],
    special: &[bool],
    cfg: &MaskConfig,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<i64>) {
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for i in 0..ids.len() {
        if special[i] || rng.gen::<f32>() >= cfg.mask_prob {
            continue;
        }
        positions.push(i);
        targets.push(ids[i] as i64);
    }
    if positions.is_empty() {
        let candidates: Vec<usize> = (0..ids.len()).filter(|&i| !special[i]).collect();
        if candidates.is_empty() {
            return (positions, targets);
        }
        let i = candidates[rng.gen_range(0..candidates.len())];
        positions.push(i);
        targets.push(ids[i] as i64);
    }
    corrupt(ids, &positions, cfg, rng);
    (positions, targets)
}

/// The 80/10/10 rule on the selected positions: `[MASK]`, a random token, or unchanged.
fn corrupt(ids: &mut [u32], positions: &[usize], cfg: &MaskConfig, rng: &mut impl Rng) {
    for &i in positions {
        let r: f32 = rng.gen();
        if r < 0.8 {
            ids[i] = cfg.mask_id;
        } else if r < 0.9 {
            ids[i] = rng.gen_range(0..cfg.vocab_size);
        }
    }
}

/// Whole-word masking (transformers `DataCollatorForWholeWordMask`): words — a token and the
/// continuation pieces after it (`continuation[i]`) — are selected in random order until
/// `round(mask_prob · tokens)` tokens are covered, never splitting a word; each selected token
/// then gets the 80/10/10 treatment.
pub fn mask_whole_words(
    ids: &mut [u32],
    special: &[bool],
    continuation: &[bool],
    cfg: &MaskConfig,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<i64>) {
    let mut words: Vec<Vec<usize>> = Vec::new();
    for i in 0..ids.len() {
        if special[i] {
            continue;
        }
        match words.last_mut() {
            Some(w) if continuation[i] && w.last() == Some(&(i - 1)) => w.push(i),
            _ => words.push(vec![i]),
        }
    }
    let n: usize = words.iter().map(Vec::len).sum();
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let budget = ((n as f32 * cfg.mask_prob).round() as usize).max(1);
    // Fisher–Yates shuffle of the word order.
    for i in (1..words.len()).rev() {
        words.swap(i, rng.gen_range(0..=i));
    }
    let mut positions = Vec::new();
    for w in &words {
        if positions.len() >= budget {
            break;
        }
        if positions.len() + w.len() > budget {
            continue;
        }
        positions.extend_from_slice(w);
    }
    positions.sort_unstable();
    let targets: Vec<i64> = positions.iter().map(|&i| ids[i] as i64).collect();
    corrupt(ids, &positions, cfg, rng);
    (positions, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn whole_words_are_masked_together() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cfg = MaskConfig {
            mask_prob: 0.15,
            mask_id: 4,
            vocab_size: 1000,
        };
        let n = 20_000;
        // Words of 1–3 pieces; token 0 of each sequence of 100 is special.
        let continuation: Vec<bool> = (0..n)
            .map(|i| i % 7 == 2 || i % 7 == 3 || i % 7 == 5)
            .collect();
        let special: Vec<bool> = (0..n).map(|i| i % 100 == 0).collect();
        let mut ids: Vec<u32> = (0..n).map(|i| 10 + (i % 900) as u32).collect();
        let (pos, _) = mask_whole_words(&mut ids, &special, &continuation, &cfg, &mut rng);
        let frac = pos.len() as f32 / special.iter().filter(|s| !**s).count() as f32;
        assert!((frac - 0.15).abs() < 0.01, "{frac}");
        let mut selected = vec![false; n];
        pos.iter().for_each(|&p| selected[p] = true);
        for i in 1..n {
            // A continuation piece is selected exactly when the piece before it is (within a word).
            if continuation[i] && !special[i] && !special[i - 1] {
                assert_eq!(selected[i], selected[i - 1], "word split at {i}");
            }
        }
        assert!(pos.iter().all(|&p| !special[p]));
    }

    #[test]
    fn masking_proportions_and_specials() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let cfg = MaskConfig {
            mask_prob: 0.15,
            mask_id: 4,
            vocab_size: 1000,
        };
        let n = 200_000;
        let orig: Vec<u32> = (0..n).map(|i| 10 + (i % 900) as u32).collect();
        let mut ids = orig.clone();
        let special: Vec<bool> = (0..n).map(|i| i % 100 == 0).collect();
        let (pos, targets) = mask_tokens(&mut ids, &special, &cfg, &mut rng);
        let frac = pos.len() as f32 / n as f32;
        assert!((frac - 0.15).abs() < 0.005, "selected {frac}");
        assert!(pos.iter().all(|&p| !special[p]));
        assert!(pos.iter().zip(&targets).all(|(&p, &t)| orig[p] as i64 == t));
        let masked = pos.iter().filter(|&&p| ids[p] == 4).count() as f32 / pos.len() as f32;
        let kept = pos.iter().filter(|&&p| ids[p] == orig[p]).count() as f32 / pos.len() as f32;
        assert!((masked - 0.8).abs() < 0.01, "[MASK] share {masked}");
        assert!((kept - 0.1).abs() < 0.01 + 0.001, "unchanged share {kept}");
        let mut selected = vec![false; n];
        pos.iter().for_each(|&p| selected[p] = true);
        let untouched = (0..n).filter(|&i| !selected[i]).all(|i| ids[i] == orig[i]);
        assert!(untouched);
    }
}
