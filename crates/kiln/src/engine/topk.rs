//! Top-k selection over a row of scores.

/// The `k` largest values of `x` as `(index, value)`, largest first; ties keep the lower index
/// first so results are deterministic. NaNs sort last.
pub fn top_k(x: &[f32], k: usize) -> Vec<(usize, f32)> {
    let k = k.min(x.len());
    if k == 0 {
        return Vec::new();
    }
    let cmp = |a: &(usize, f32), b: &(usize, f32)| {
        b.1.partial_cmp(&a.1)
            .unwrap_or_else(|| a.1.is_nan().cmp(&b.1.is_nan()))
            .then(a.0.cmp(&b.0))
    };
    let mut idx: Vec<(usize, f32)> = x.iter().cloned().enumerate().collect();
    // Partial selection is O(n); only the k winners are sorted.
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_full_sort() {
        let x: Vec<f32> = (0..500).map(|i| ((i * 7919) % 211) as f32).collect();
        for k in [0, 1, 5, 211, 600] {
            let mut all: Vec<(usize, f32)> = x.iter().cloned().enumerate().collect();
            all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            all.truncate(k.min(x.len()));
            assert_eq!(top_k(&x, k), all);
        }
    }
}
