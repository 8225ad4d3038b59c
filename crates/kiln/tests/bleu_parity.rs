//! BLEU and chrF against sacreBLEU 2.6 (fixtures from `tests/fixtures/make_bleu_fixtures.py`):
//! the 13a and zh tokenizers string for string, the n-gram statistics, brevity penalty,
//! smoothed precisions and scores of every case, and which code points the zh tokenizer
//! treats as Chinese.

mod common;

use common::*;
use kiln::metrics::translation::{corpus_bleu, corpus_chrf, is_chinese_char, BleuTokenize};

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn tokenizer(name: &str) -> BleuTokenize {
    match name {
        "13a" => BleuTokenize::Mteval13a,
        "zh" => BleuTokenize::Zh,
        other => panic!("unknown tokenizer {other}"),
    }
}

#[test]
fn tokenizers_match_sacrebleu() {
    let e = json(&fixture("bleu-expected.json"));
    for c in e["tokenizer_cases"].as_array().unwrap() {
        let t = tokenizer(c["tokenize"].as_str().unwrap());
        let input = c["input"].as_str().unwrap();
        assert_eq!(
            t.tokenize(input),
            c["output"].as_str().unwrap(),
            "{input:?}"
        );
    }
    for case in e["cases"].as_array().unwrap() {
        let t = tokenizer(case["tokenize"].as_str().unwrap());
        for (s, want) in strings(&case["hyps"])
            .iter()
            .zip(strings(&case["tokenized_hyps"]))
            .chain(
                strings(&case["refs"])
                    .iter()
                    .zip(strings(&case["tokenized_refs"])),
            )
        {
            assert_eq!(t.tokenize(s.trim_end()), want, "{}: {s:?}", case["name"]);
        }
    }
}

#[test]
fn bleu_and_chrf_match_sacrebleu() {
    let e = json(&fixture("bleu-expected.json"));
    for case in e["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (hyps, refs) = (strings(&case["hyps"]), strings(&case["refs"]));
        let b = corpus_bleu(&hyps, &refs, tokenizer(case["tokenize"].as_str().unwrap()));
        let counts: Vec<usize> = case["bleu_counts"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let totals: Vec<usize> = case["bleu_counts"]["totals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(b.correct.to_vec(), counts, "{name}: matches");
        assert_eq!(b.total.to_vec(), totals, "{name}: n-grams");
        assert_eq!(
            b.sys_len as u64,
            case["sys_len"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            b.ref_len as u64,
            case["ref_len"].as_u64().unwrap(),
            "{name}"
        );
        let close = |a: f64, w: f64| (a - w).abs() <= 1e-9 * w.abs().max(1.0);
        assert!(
            close(b.bp, case["bp"].as_f64().unwrap()),
            "{name}: bp {}",
            b.bp
        );
        for (p, w) in b
            .precisions
            .iter()
            .zip(case["precisions"].as_array().unwrap())
        {
            assert!(
                close(*p, w.as_f64().unwrap()),
                "{name}: precision {p} vs {w}"
            );
        }
        let want = case["bleu"].as_f64().unwrap();
        assert!(close(b.score, want), "{name}: BLEU {} vs {want}", b.score);
        let chrf = corpus_chrf(&hyps, &refs);
        let want = case["chrf"].as_f64().unwrap();
        assert!(close(chrf, want), "{name}: chrF {chrf} vs {want}");
    }
}

#[test]
fn chinese_characters_are_sacrebleus() {
    let e = json(&fixture("bleu-expected.json"));
    for c in e["zh_chars"].as_array().unwrap() {
        let cp = c["cp"].as_u64().unwrap() as u32;
        let ch = char::from_u32(cp).unwrap();
        assert_eq!(
            is_chinese_char(ch),
            c["is_chinese"].as_bool().unwrap(),
            "U+{cp:04X}"
        );
    }
    for r in e["zh_effective_ranges"].as_array().unwrap() {
        let (lo, hi) = (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32);
        for cp in [lo, hi] {
            assert!(is_chinese_char(char::from_u32(cp).unwrap()), "U+{cp:04X}");
        }
        for cp in [lo.wrapping_sub(1), hi + 1] {
            if let Some(ch) = char::from_u32(cp) {
                let inside = e["zh_effective_ranges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| {
                        r[0].as_u64().unwrap() as u32 <= cp && cp <= r[1].as_u64().unwrap() as u32
                    });
                assert_eq!(is_chinese_char(ch), inside, "U+{cp:04X}");
            }
        }
    }
}
