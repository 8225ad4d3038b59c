//! Accuracy and macro-F1 (scikit-learn's `accuracy_score`, `f1_score(average="macro")`, with a
//! class that is never predicted nor present left out), Pearson and Spearman correlation
//! (SciPy's `pearsonr`, `spearmanr` with average ranks for ties).

/// Fraction of predictions equal to the gold label (0 for no items).
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    let right = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    right as f64 / gold.len() as f64
}

/// Mean F1 over the classes `0..n_classes` that occur in the gold labels or the predictions.
/// A class with no true positive has F1 0 (scikit-learn's `zero_division=0`).
pub fn macro_f1(pred: &[usize], gold: &[usize], n_classes: usize) -> f64 {
    let n = n_classes.max(pred.iter().chain(gold).max().map_or(0, |m| m + 1));
    let (mut tp, mut fp, mut fnn) = (vec![0usize; n], vec![0usize; n], vec![0usize; n]);
    for (&p, &g) in pred.iter().zip(gold) {
        if p == g {
            tp[p] += 1;
        } else {
            fp[p] += 1;
            fnn[g] += 1;
        }
    }
    let mut sum = 0.0;
    let mut classes = 0;
    for c in 0..n {
        if tp[c] + fp[c] + fnn[c] == 0 {
            continue;
        }
        classes += 1;
        let denom = 2 * tp[c] + fp[c] + fnn[c];
        sum += 2.0 * tp[c] as f64 / denom as f64;
    }
    if classes == 0 {
        0.0
    } else {
        sum / classes as f64
    }
}

/// Pearson correlation (NaN when either side is constant or there are fewer than 2 items).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx.sqrt() * syy.sqrt())
}

/// Ranks from 1, ties sharing their average rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation: Pearson over average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_scikit_learn_and_scipy() {
        // sklearn: accuracy_score([0,1,2,2,1],[0,2,2,2,1]) = 0.8
        let gold = [0, 1, 2, 2, 1];
        let pred = [0, 2, 2, 2, 1];
        assert!((accuracy(&pred, &gold) - 0.8).abs() < 1e-12);
        // f1_score(gold, pred, average="macro") = (1 + 2/3 + 0.8) / 3
        let want = (1.0 + 2.0 / 3.0 + 0.8) / 3.0;
        assert!((macro_f1(&pred, &gold, 3) - want).abs() < 1e-12);
        // A class absent from both sides does not count (labels= not given in sklearn).
        assert!((macro_f1(&pred, &gold, 5) - want).abs() < 1e-12);
        // scipy.stats.pearsonr([1,2,3,4,5],[2,4,5,4,5]).statistic = 0.7745966692414834
        let (x, y) = ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 5.0, 4.0, 5.0]);
        assert!((pearson(&x, &y) - 0.774_596_669_241_483_4).abs() < 1e-12);
        // scipy.stats.spearmanr(x, y).statistic = 0.7378647873726218 (ties averaged)
        assert!((spearman(&x, &y) - 0.737_864_787_372_621_8).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }
}
