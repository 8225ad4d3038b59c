//! Fused multi-head attention: `softmax(scale · Q Kᵀ + mask) · V` per sequence and head, in one
//! parallel loop. Q, K and V are strided views into the projection buffer (or the KV cache), so
//! nothing is transposed or copied per head, and the score matrix lives in a per-thread buffer
//! that is reused across calls.

use super::dropout::Dropout;
use super::matmul::{gemm_raw, Par};
use super::par::SendPtr;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::cell::RefCell;

/// Which keys a query may attend to. This is the switch between an encoder and a decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// Every query sees every (non-padding) key: an encoder (BERT).
    Bidirectional,
    /// A query sees keys at its own position and before: a decoder (GPT-2).
    Causal,
    /// Bidirectional over the first `len` positions (the source), causal after (the target):
    /// an encoder used as a sequence generator (UniLM-style).
    Prefix(usize),
}

impl MaskKind {
    /// Whether the query at absolute position `q` may see the key at position `k`.
    #[inline]
    pub fn visible(self, q: usize, k: usize) -> bool {
        match self {
            MaskKind::Bidirectional => true,
            MaskKind::Causal => k <= q,
            MaskKind::Prefix(len) => k < len || k <= q,
        }
    }
}

/// One sequence's part of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// Queries: `lq` rows of `heads · head_dim` values, `q_rs` apart.
    pub q: &'a [f32],
    /// Row stride of `q`.
    pub q_rs: usize,
    /// Number of queries.
    pub lq: usize,
    /// Keys: `lk` rows, `k_rs` apart.
    pub k: &'a [f32],
    /// Row stride of `k`.
    pub k_rs: usize,
    /// Values: `lk` rows, `v_rs` apart.
    pub v: &'a [f32],
    /// Row stride of `v`.
    pub v_rs: usize,
    /// Number of keys.
    pub lk: usize,
    /// Absolute position of the first query (keys start at position 0).
    pub q_pos0: usize,
    /// `lk` flags, 0 for padding keys that no query may see.
    pub key_mask: Option<&'a [u8]>,
    /// First row of this sequence in the packed output.
    pub out_row0: usize,
    /// This sequence's own prefix length: [`MaskKind::Prefix`] with it, whatever the call's
    /// mask (a batch of source/target pairs, each with its own source length).
    pub prefix: Option<usize>,
}

/// The views of packed sequences that attend only to themselves, read from a fused
/// `[tokens, 3·width]` QKV buffer (q | k | v per row). `key_mask` has one flag per token.
pub fn packed_self_attention<'a>(
    qkv: &'a [f32],
    width: usize,
    seq_lens: &[usize],
    key_mask: Option<&'a [u8]>,
    prefix_lens: Option<&[usize]>,
) -> Vec<AttnSeq<'a>> {
    let mut o = 0;
    seq_lens
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let s = AttnSeq {
                q: &qkv[o * 3 * width..],
                q_rs: 3 * width,
                lq: l,
                k: &qkv[o * 3 * width + width..],
                k_rs: 3 * width,
                v: &qkv[o * 3 * width + 2 * width..],
                v_rs: 3 * width,
                lk: l,
                q_pos0: 0,
                key_mask: key_mask.map(|m| &m[o..o + l]),
                out_row0: o,
                prefix: prefix_lens.and_then(|p| p.get(i).copied()),
            };
            o += l;
            s
        })
        .collect()
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Multi-head attention over packed sequences.
///
/// out: [rows, heads · head_dim]; each sequence writes rows `out_row0 .. out_row0 + lq`.
pub fn attention(
    seqs: &[AttnSeq<'_>],
    heads: usize,
    head_dim: usize,
    mask: MaskKind,
    out: &mut [f32],
) -> Result<()> {
    attention_dropout(seqs, heads, head_dim, mask, out, None)
}

/// [`attention`] with dropout on the attention probabilities (training).
pub fn attention_dropout(
    seqs: &[AttnSeq<'_>],
    heads: usize,
    head_dim: usize,
    mask: MaskKind,
    out: &mut [f32],
    dropout: Option<Dropout>,
) -> Result<()> {
    let width = heads * head_dim;
    for (i, s) in seqs.iter().enumerate() {
        let need = |rows: usize, rs: usize| {
            if rows == 0 {
                0
            } else {
                (rows - 1) * rs + width
            }
        };
        let ok = s.q.len() >= need(s.lq, s.q_rs)
            && s.k.len() >= need(s.lk, s.k_rs)
            && s.v.len() >= need(s.lk, s.v_rs)
            && out.len() >= (s.out_row0 + s.lq) * width
            && s.key_mask.is_none_or(|m| m.len() == s.lk);
        if !ok {
            return Err(Error::shape(
                "attention",
                format!(
                    "sequence {i}: views do not fit lq={} lk={} width={width}",
                    s.lq, s.lk
                ),
            ));
        }
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let work = seqs.len() * heads;
    let run = |item: usize| {
        let s = &seqs[item / heads];
        let h = item % heads;
        SCORES.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(s.lq * s.lk, 0.0);
            let scores = &mut buf[..];
            let col = h * head_dim;
            let dst = out_ptr;
            // SAFETY: views were bounds-checked above; each (sequence, head) item writes only
            // its own rows and columns of `out`, so concurrent items never overlap.
            unsafe {
                // scores[lq, lk] = scale · Q_h · K_hᵀ   (Kᵀ as a strided view)
                gemm_raw(
                    scores.as_mut_ptr(),
                    s.lk,
                    1,
                    s.lq,
                    s.lk,
                    head_dim,
                    s.q.as_ptr().add(col),
                    s.q_rs,
                    1,
                    s.k.as_ptr().add(col),
                    1,
                    s.k_rs,
                    scale,
                    false,
                    Par::Single,
                );
            }
            for (i, row) in scores.chunks_mut(s.lk.max(1)).enumerate().take(s.lq) {
                masked_softmax(
                    row,
                    s.q_pos0 + i,
                    s.prefix.map_or(mask, MaskKind::Prefix),
                    s.key_mask,
                );
            }
            if let Some(d) = dropout {
                apply_prob_dropout(scores, d, prob_dropout_base(item / heads, h, heads, s.lk));
            }
            unsafe {
                // out_h[lq, d] = P · V_h
                gemm_raw(
                    dst.0.add(s.out_row0 * width + col),
                    width,
                    1,
                    s.lq,
                    head_dim,
                    s.lk,
                    scores.as_ptr(),
                    s.lk,
                    1,
                    s.v.as_ptr().add(col),
                    s.v_rs,
                    1,
                    1.0,
                    false,
                    Par::Single,
                );
            }
        });
    };
    if work > 1 && rayon::current_num_threads() > 1 {
        (0..work).into_par_iter().for_each(run);
    } else {
        (0..work).for_each(run);
    }
    Ok(())
}

/// Softmax of one score row over the keys the query at `q_pos` may see; hidden keys get 0.
/// A row with no visible key becomes all zeros (its output is then zero, never NaN).
#[inline]
fn masked_softmax(row: &mut [f32], q_pos: usize, mask: MaskKind, key_mask: Option<&[u8]>) {
    // Every mask kind hides a suffix of the keys: only `row[..limit]` can be visible.
    let limit = match mask {
        MaskKind::Bidirectional => row.len(),
        MaskKind::Causal => q_pos + 1,
        MaskKind::Prefix(len) => len.max(q_pos + 1),
    }
    .min(row.len());
    let (live, hidden) = row.split_at_mut(limit);
    hidden.fill(0.0);
    if let Some(m) = key_mask {
        live.iter_mut().zip(m).for_each(|(v, &keep)| {
            if keep == 0 {
                *v = f32::NEG_INFINITY
            }
        });
    }
    if super::simd::max(live) == f32::NEG_INFINITY {
        live.fill(0.0);
        return;
    }
    super::softmax::softmax_inplace(live);
}

/// Index of the first attention probability of (sequence, head) in the dropout stream.
fn prob_dropout_base(seq: usize, head: usize, heads: usize, l: usize) -> u64 {
    ((seq * heads + head) as u64) << 32 | (l as u64 & 0xFFFF_FFFF)
}

/// Dropout on a `[l, l]` probability block (counter-based, recomputable).
fn apply_prob_dropout(p: &mut [f32], d: Dropout, base: u64) {
    let scale = 1.0 / (1.0 - d.p);
    let sub = Dropout {
        p: d.p,
        seed: Dropout::derive(d.seed, base),
    };
    for (i, v) in p.iter_mut().enumerate() {
        *v = if sub.keep(i as u64) { *v * scale } else { 0.0 };
    }
}

thread_local! {
    static GRAD_SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Where each (sequence, head)'s `[l, l]` block of attention probabilities starts in the
/// layout [`attention_probs`] writes and [`attention_backward`]'s `score_grads` reads
/// (sequences in order, heads within a sequence, rows = queries), and the total length.
pub fn probs_offsets(seq_lens: &[usize], heads: usize) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(seq_lens.len() * heads);
    let mut at = 0;
    for &l in seq_lens {
        for _ in 0..heads {
            offsets.push(at);
            at += l * l;
        }
    }
    (offsets, at)
}

/// `p[l, l] = softmax(scale · Q_h K_hᵀ + mask)` of one self-attending sequence and head.
///
/// # Safety
/// `q` and `k` point at the head's first query and key of `l` rows, `rs` apart, each with
/// `head_dim` readable values.
#[allow(clippy::too_many_arguments)]
unsafe fn head_probs(
    p: &mut [f32],
    q: *const f32,
    k: *const f32,
    rs: usize,
    l: usize,
    head_dim: usize,
    mask: MaskKind,
    key_mask: Option<&[u8]>,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    gemm_raw(
        p.as_mut_ptr(),
        l,
        1,
        l,
        l,
        head_dim,
        q,
        rs,
        1,
        k,
        1,
        rs,
        scale,
        false,
        Par::Single,
    );
    for (i, row) in p.chunks_mut(l).enumerate() {
        masked_softmax(row, i, mask, key_mask);
    }
}

/// Checks a fused `[tokens, 3·width]` QKV buffer and its per-token key mask and per-sequence
/// prefix lengths against the packed sequences; returns each sequence's first row.
fn packed_rows(
    what: &'static str,
    qkv: &[f32],
    seq_lens: &[usize],
    width: usize,
    key_mask: Option<&[u8]>,
    prefix_lens: Option<&[usize]>,
) -> Result<Vec<usize>> {
    let tokens: usize = seq_lens.iter().sum();
    if prefix_lens.is_some_and(|p| p.len() != seq_lens.len()) {
        return Err(Error::shape(what, "one prefix length per sequence"));
    }
    if qkv.len() != tokens * 3 * width {
        return Err(Error::shape(
            what,
            format!("buffers do not fit {tokens} tokens of width {width}"),
        ));
    }
    if key_mask.is_some_and(|m| m.len() != tokens) {
        return Err(Error::shape(what, "key mask needs one flag per token"));
    }
    let mut offsets = Vec::with_capacity(seq_lens.len());
    let mut o = 0;
    for &l in seq_lens {
        offsets.push(o);
        o += l;
    }
    Ok(offsets)
}

/// The attention probabilities of packed sequences that attend only to themselves, from a
/// fused `[tokens, 3·width]` QKV buffer: every (sequence, head)'s `[l, l]` matrix in the
/// [`probs_offsets`] layout. What an attention-transfer loss (MiniLM) compares; the forward
/// pass itself never keeps them.
#[allow(clippy::too_many_arguments)]
pub fn attention_probs(
    qkv: &[f32],
    seq_lens: &[usize],
    heads: usize,
    head_dim: usize,
    mask: MaskKind,
    key_mask: Option<&[u8]>,
    prefix_lens: Option<&[usize]>,
) -> Result<Vec<f32>> {
    let width = heads * head_dim;
    let rows = packed_rows(
        "attention_probs",
        qkv,
        seq_lens,
        width,
        key_mask,
        prefix_lens,
    )?;
    let (_, total) = probs_offsets(seq_lens, heads);
    let mut out = vec![0.0; total];
    // One disjoint `[l, l]` slice per (sequence, head), filled in parallel.
    let mut blocks = Vec::with_capacity(seq_lens.len() * heads);
    let mut rest = &mut out[..];
    for (s, &l) in seq_lens.iter().enumerate() {
        for h in 0..heads {
            let (b, r) = rest.split_at_mut(l * l);
            blocks.push((s, h, b));
            rest = r;
        }
    }
    let rs = 3 * width;
    blocks.into_par_iter().for_each(|(s, h, p)| {
        let l = seq_lens[s];
        if l == 0 {
            return;
        }
        let base = rows[s] * rs;
        let km = key_mask.map(|m| &m[rows[s]..rows[s] + l]);
        let mask = prefix_lens.map_or(mask, |p| MaskKind::Prefix(p[s]));
        // SAFETY: packed_rows checked that every sequence's rows lie inside `qkv`.
        unsafe {
            let q = qkv.as_ptr().add(base + h * head_dim);
            let k = qkv.as_ptr().add(base + width + h * head_dim);
            head_probs(p, q, k, rs, l, head_dim, mask, km);
        }
    });
    Ok(out)
}

/// Backward of [`attention`] over packed sequences that attend only to themselves (training:
/// no cache). `qkv: [tokens, 3·width]` as produced by the fused projection, `dout: [tokens,
/// width]` -> `dqkv: [tokens, 3·width]` (overwritten). The probabilities are recomputed
/// rather than stored, so the forward pass keeps no `[seq, seq]` matrices per head.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    qkv: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    seq_lens: &[usize],
    heads: usize,
    head_dim: usize,
    mask: MaskKind,
    key_mask: Option<&[u8]>,
    prefix_lens: Option<&[usize]>,
    dropout: Option<Dropout>,
    score_grads: Option<&[f32]>,
) -> Result<()> {
    let width = heads * head_dim;
    let tokens: usize = seq_lens.iter().sum();
    let offsets = packed_rows(
        "attention_backward",
        qkv,
        seq_lens,
        width,
        key_mask,
        prefix_lens,
    )?;
    if dout.len() != tokens * width || dqkv.len() != qkv.len() {
        return Err(Error::shape(
            "attention_backward",
            format!("buffers do not fit {tokens} tokens of width {width}"),
        ));
    }
    let (score_at, score_len) = probs_offsets(seq_lens, heads);
    if score_grads.is_some_and(|g| g.len() != score_len) {
        return Err(Error::shape(
            "attention_backward",
            format!("score gradients need {score_len} values (every head's [l, l] block)"),
        ));
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dst = SendPtr(dqkv.as_mut_ptr());
    let rs = 3 * width;
    let run = |item: usize| {
        let (s, h) = (item / heads, item % heads);
        let (row0, l) = (offsets[s], seq_lens[s]);
        if l == 0 {
            return;
        }
        let km = key_mask.map(|m| &m[row0..row0 + l]);
        let base = row0 * rs;
        let (qc, kc, vc) = (h * head_dim, width + h * head_dim, 2 * width + h * head_dim);
        GRAD_SCRATCH.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (p, dp, p_orig) = &mut *cell;
            p.resize(l * l, 0.0);
            dp.resize(l * l, 0.0);
            let d = dst;
            // SAFETY: bounds were checked above; each (sequence, head) item reads shared
            // inputs and writes only its own rows and head columns of `dqkv`.
            unsafe {
                let q = qkv.as_ptr().add(base + qc);
                let k = qkv.as_ptr().add(base + kc);
                let v = qkv.as_ptr().add(base + vc);
                let go = dout.as_ptr().add(row0 * width + h * head_dim);
                let item_mask = prefix_lens.map_or(mask, |p| MaskKind::Prefix(p[s]));
                head_probs(p, q, k, rs, l, head_dim, item_mask, km);
                // With dropout the forward used P' = P ⊙ M / (1 − p): p holds P' for dV,
                // and P is kept for the softmax backward.
                let drop = dropout.map(|d| (d, prob_dropout_base(s, h, heads, l)));
                if let Some((d, base)) = drop {
                    p_orig.clear();
                    p_orig.extend_from_slice(p);
                    apply_prob_dropout(p, d, base);
                }
                // dV = P'ᵀ dO
                gemm_raw(
                    d.0.add(base + vc),
                    rs,
                    1,
                    l,
                    head_dim,
                    l,
                    p.as_ptr(),
                    1,
                    l,
                    go,
                    width,
                    1,
                    1.0,
                    false,
                    Par::Single,
                );
                // dP' = dO Vᵀ, then dP = dP' ⊙ M / (1 − p)
                gemm_raw(
                    dp.as_mut_ptr(),
                    l,
                    1,
                    l,
                    l,
                    head_dim,
                    go,
                    width,
                    1,
                    v,
                    1,
                    rs,
                    1.0,
                    false,
                    Par::Single,
                );
                if let Some((d, base)) = drop {
                    apply_prob_dropout(dp, d, base);
                    p.copy_from_slice(p_orig);
                }
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)), kept in dp
                for (pr, dr) in p.chunks(l).zip(dp.chunks_mut(l)) {
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    dr.iter_mut()
                        .zip(pr)
                        .for_each(|(g, &pp)| *g = pp * (*g - dot));
                }
                // A loss on the probabilities themselves (attention transfer) adds its
                // gradient with respect to the scores.
                if let Some(g) = score_grads {
                    let at = score_at[item];
                    dp.iter_mut()
                        .zip(&g[at..at + l * l])
                        .for_each(|(d, g)| *d += g);
                }
                // dQ = scale · dS K ;  dK = scale · dSᵀ Q
                gemm_raw(
                    d.0.add(base + qc),
                    rs,
                    1,
                    l,
                    head_dim,
                    l,
                    dp.as_ptr(),
                    l,
                    1,
                    k,
                    rs,
                    1,
                    scale,
                    false,
                    Par::Single,
                );
                gemm_raw(
                    d.0.add(base + kc),
                    rs,
                    1,
                    l,
                    head_dim,
                    l,
                    dp.as_ptr(),
                    1,
                    l,
                    q,
                    rs,
                    1,
                    scale,
                    false,
                    Par::Single,
                );
            }
        });
    };
    let work = seq_lens.len() * heads;
    if work > 1 && rayon::current_num_threads() > 1 {
        (0..work).into_par_iter().for_each(run);
    } else {
        (0..work).for_each(run);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Fused attention vs an f64 reference, absolute (values are O(1)).
    const ATTN_TOL: f64 = 2e-6;

    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        q_rs: usize,
        lq: usize,
        k: &[f32],
        v: &[f32],
        kv_rs: usize,
        lk: usize,
        heads: usize,
        d: usize,
        q_pos0: usize,
        mask: MaskKind,
        key_mask: Option<&[u8]>,
    ) -> Vec<f64> {
        let w = heads * d;
        let mut out = vec![0.0f64; lq * w];
        for h in 0..heads {
            for i in 0..lq {
                let mut s: Vec<Option<f64>> = vec![None; lk];
                for (j, sj) in s.iter_mut().enumerate() {
                    if mask.visible(q_pos0 + i, j) && key_mask.is_none_or(|m| m[j] != 0) {
                        let dot: f64 = (0..d)
                            .map(|c| {
                                q[i * q_rs + h * d + c] as f64 * k[j * kv_rs + h * d + c] as f64
                            })
                            .sum();
                        *sj = Some(dot / (d as f64).sqrt());
                    }
                }
                let max = s
                    .iter()
                    .flatten()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().flatten().map(|x| (x - max).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    if let Some(x) = sj {
                        let p = (x - max).exp() / z;
                        for c in 0..d {
                            out[i * w + h * d + c] += p * v[j * kv_rs + h * d + c] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn fused_attention_matches_reference_for_every_mask_kind() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (heads, d) = (3, 32);
        let w = heads * d;
        for mask in [
            MaskKind::Bidirectional,
            MaskKind::Causal,
            MaskKind::Prefix(4),
        ] {
            for &(lq, lk) in &[(1usize, 1usize), (9, 9), (1, 12), (5, 13)] {
                // A fused QKV buffer [lk, 3w]: queries are the last lq rows (as with a cache).
                let qkv: Vec<f32> = (0..lk * 3 * w).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let key_mask: Vec<u8> = (0..lk).map(|j| u8::from(j % 5 != 3)).collect();
                for km in [None, Some(&key_mask[..])] {
                    let q0 = lk - lq;
                    let seq = AttnSeq {
                        q: &qkv[q0 * 3 * w..],
                        q_rs: 3 * w,
                        lq,
                        k: &qkv[w..],
                        k_rs: 3 * w,
                        v: &qkv[2 * w..],
                        v_rs: 3 * w,
                        lk,
                        q_pos0: q0,
                        key_mask: km,
                        out_row0: 0,
                        prefix: None,
                    };
                    let mut out = vec![0.0f32; lq * w];
                    attention(&[seq], heads, d, mask, &mut out).unwrap();
                    let want = reference(
                        &qkv[q0 * 3 * w..],
                        3 * w,
                        lq,
                        &qkv[w..],
                        &qkv[2 * w..],
                        3 * w,
                        lk,
                        heads,
                        d,
                        q0,
                        mask,
                        km,
                    );
                    for (g, w) in out.iter().zip(&want) {
                        assert!(
                            (*g as f64 - w).abs() < ATTN_TOL,
                            "{mask:?} lq={lq} lk={lk}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_sequences_equal_separate_calls() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (heads, d) = (2, 8);
        let w = heads * d;
        let lens = [3usize, 7, 1];
        let total: usize = lens.iter().sum();
        let qkv: Vec<f32> = (0..total * 3 * w)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let mut seqs = Vec::new();
        let mut row = 0;
        for &l in &lens {
            let base = row * 3 * w;
            seqs.push(AttnSeq {
                q: &qkv[base..],
                q_rs: 3 * w,
                lq: l,
                k: &qkv[base + w..],
                k_rs: 3 * w,
                v: &qkv[base + 2 * w..],
                v_rs: 3 * w,
                lk: l,
                q_pos0: 0,
                key_mask: None,
                out_row0: row,
                prefix: None,
            });
            row += l;
        }
        let mut packed = vec![0.0; total * w];
        attention(&seqs, heads, d, MaskKind::Causal, &mut packed).unwrap();
        for s in &seqs {
            let mut one = vec![0.0; s.lq * w];
            attention(
                &[AttnSeq { out_row0: 0, ..*s }],
                heads,
                d,
                MaskKind::Causal,
                &mut one,
            )
            .unwrap();
            assert_eq!(&packed[s.out_row0 * w..(s.out_row0 + s.lq) * w], &one[..]);
        }
    }

    #[test]
    fn per_sequence_prefixes_equal_separate_prefix_calls() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let (heads, d) = (2, 8);
        let w = heads * d;
        let (lens, prefixes) = ([4usize, 6, 3], [2usize, 5, 0]);
        let total: usize = lens.iter().sum();
        let qkv: Vec<f32> = (0..total * 3 * w)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect();
        let seqs = packed_self_attention(&qkv, w, &lens, None, Some(&prefixes));
        let mut packed = vec![0.0; total * w];
        attention(&seqs, heads, d, MaskKind::Bidirectional, &mut packed).unwrap();
        for (s, &p) in seqs.iter().zip(&prefixes) {
            let mut one = vec![0.0; s.lq * w];
            let alone = AttnSeq {
                out_row0: 0,
                prefix: None,
                ..*s
            };
            attention(&[alone], heads, d, MaskKind::Prefix(p), &mut one).unwrap();
            assert_eq!(&packed[s.out_row0 * w..(s.out_row0 + s.lq) * w], &one[..]);
        }
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (heads, d) = (2, 4);
        let w = heads * d;
        let lens = [3usize, 5];
        let t: usize = lens.iter().sum();
        // Per-sequence prefixes: sequence 0 sees its first 2 tokens both ways, sequence 1 its
        // first 4 (whatever the call's mask says).
        let prefixes = [2usize, 4];
        for (mask, drop, pl) in [
            (MaskKind::Bidirectional, None, None),
            (MaskKind::Causal, None, None),
            (MaskKind::Prefix(2), None, None),
            (
                MaskKind::Bidirectional,
                Some(Dropout { p: 0.3, seed: 11 }),
                None,
            ),
            (MaskKind::Causal, Some(Dropout { p: 0.3, seed: 12 }), None),
            (MaskKind::Bidirectional, None, Some(&prefixes[..])),
            (
                MaskKind::Prefix(0),
                Some(Dropout { p: 0.3, seed: 13 }),
                Some(&prefixes[..]),
            ),
        ] {
            let key_mask: Vec<u8> = (0..t).map(|i| u8::from(i != 4)).collect();
            for km in [None, Some(&key_mask[..])] {
                let mut qkv: Vec<f32> = (0..t * 3 * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let r: Vec<f32> = (0..t * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let loss = |qkv: &[f32]| -> f32 {
                    let seqs = packed_self_attention(qkv, w, &lens, km, pl);
                    let mut out = vec![0.0; t * w];
                    attention_dropout(&seqs, heads, d, mask, &mut out, drop).unwrap();
                    out.iter().zip(&r).map(|(a, b)| a * b).sum()
                };
                let mut grad = vec![0.0; qkv.len()];
                attention_backward(
                    &qkv, &r, &mut grad, &lens, heads, d, mask, km, pl, drop, None,
                )
                .unwrap();
                assert_finite_differences(&mut qkv, &grad, loss, &format!("{mask:?}"));
            }
        }
    }

    /// Central differences of `loss` at every value of `qkv` against `grad` (relative to the
    /// largest gradient).
    fn assert_finite_differences(
        qkv: &mut [f32],
        grad: &[f32],
        loss: impl Fn(&[f32]) -> f32,
        what: &str,
    ) {
        let scale = grad.iter().fold(1e-3f32, |m, g| m.max(g.abs()));
        for i in 0..qkv.len() {
            let orig = qkv[i];
            qkv[i] = orig + 1e-2;
            let up = loss(qkv);
            qkv[i] = orig - 1e-2;
            let down = loss(qkv);
            qkv[i] = orig;
            let fd = (up - down) / 2e-2;
            assert!(
                (fd - grad[i]).abs() <= 2e-2 * scale,
                "{what} {i}: {} vs {fd}",
                grad[i]
            );
        }
    }

    /// `attention_probs` equals the probabilities the fused forward applies (its output is
    /// P · V), and a loss on the probabilities sent in as `score_grads` gets its gradient with
    /// respect to Q and K right (finite differences).
    #[test]
    fn probabilities_and_score_gradients_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let (heads, d) = (2, 4);
        let w = heads * d;
        let lens = [3usize, 5];
        let t: usize = lens.iter().sum();
        let prefixes = [2usize, 4];
        let (offsets, total) = probs_offsets(&lens, heads);
        for (mask, pl) in [
            (MaskKind::Bidirectional, None),
            (MaskKind::Causal, None),
            (MaskKind::Bidirectional, Some(&prefixes[..])),
        ] {
            let key_mask: Vec<u8> = (0..t).map(|i| u8::from(i != 4)).collect();
            for km in [None, Some(&key_mask[..])] {
                let mut qkv: Vec<f32> = (0..t * 3 * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let c: Vec<f32> = (0..total).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let p = attention_probs(&qkv, &lens, heads, d, mask, km, pl).unwrap();
                // P · V from the probabilities equals the fused forward.
                let seqs = packed_self_attention(&qkv, w, &lens, km, pl);
                let mut out = vec![0.0; t * w];
                attention(&seqs, heads, d, mask, &mut out).unwrap();
                let mut row0 = 0;
                for (s, &l) in lens.iter().enumerate() {
                    for h in 0..heads {
                        let blk = &p[offsets[s * heads + h]..][..l * l];
                        for i in 0..l {
                            for j in 0..d {
                                let pv: f32 = (0..l)
                                    .map(|k| {
                                        blk[i * l + k] * qkv[(row0 + k) * 3 * w + 2 * w + h * d + j]
                                    })
                                    .sum();
                                let o = out[(row0 + i) * w + h * d + j];
                                assert!((pv - o).abs() < 1e-5, "{mask:?} P·V {pv} vs {o}");
                            }
                        }
                    }
                    row0 += l;
                }
                // L = Σ C ⊙ P: ∂L/∂scores = P ⊙ (C − rowsum(P ⊙ C)).
                let loss = |qkv: &[f32]| -> f32 {
                    let p = attention_probs(qkv, &lens, heads, d, mask, km, pl).unwrap();
                    p.iter().zip(&c).map(|(a, b)| a * b).sum()
                };
                let mut g = vec![0.0; total];
                for (s, &l) in lens.iter().enumerate() {
                    for h in 0..heads {
                        let at = offsets[s * heads + h];
                        for i in 0..l {
                            let r = at + i * l;
                            let dot: f32 = (0..l).map(|k| p[r + k] * c[r + k]).sum();
                            for k in 0..l {
                                g[r + k] = p[r + k] * (c[r + k] - dot);
                            }
                        }
                    }
                }
                let zero = vec![0.0; t * w];
                let mut grad = vec![0.0; qkv.len()];
                attention_backward(
                    &qkv,
                    &zero,
                    &mut grad,
                    &lens,
                    heads,
                    d,
                    mask,
                    km,
                    pl,
                    None,
                    Some(&g),
                )
                .unwrap();
                assert_finite_differences(&mut qkv, &grad, loss, &format!("{mask:?}"));
            }
        }
    }
}
