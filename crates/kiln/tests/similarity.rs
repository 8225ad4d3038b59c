//! The classic contextual-embedding picture: "apple" the fruit vs "apple" the company.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::infer::similarity::{
    find_word, similarity_matrix, word_vectors, write_csv, write_heatmap,
};

/// Mean within-sense cosine must exceed mean cross-sense cosine by at least this much with
/// all-MiniLM-L6-v2. Measured: within 0.815, cross 0.683, margin 0.132 (run with --nocapture).
const MIN_SENSE_MARGIN: f32 = 0.10;

#[test]
fn apple_senses_separate_and_heatmap_is_written() {
    let p = checkpoint::load(&minilm_dir()).unwrap();
    let text = std::fs::read_to_string(fixture("apple_sentences.txt")).unwrap();
    let sentences: Vec<String> = text.lines().map(str::to_string).collect();
    let occ = word_vectors(&p, "apple", &sentences, 256, Default::default()).unwrap();
    let m = similarity_matrix(&occ);
    let n = occ.len();
    let sense = |i: usize| i < 6;
    let (mut within, mut nw, mut cross, mut nc) = (0.0, 0, 0.0, 0);
    for i in 0..n {
        for j in i + 1..n {
            if sense(i) == sense(j) {
                within += m[i * n + j];
                nw += 1;
            } else {
                cross += m[i * n + j];
                nc += 1;
            }
        }
    }
    let (within, cross) = (within / nw as f32, cross / nc as f32);
    println!(
        "apple: mean within-sense cosine {within:.4}, cross-sense {cross:.4}, margin {:.4}",
        within - cross
    );
    assert!(
        within - cross >= MIN_SENSE_MARGIN,
        "within {within} cross {cross}"
    );

    let dir = std::env::temp_dir().join(format!("kiln-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_heatmap(&dir.join("apple.png"), "apple", &occ, &m).unwrap();
    write_csv(&dir.join("apple.csv"), &occ, &m).unwrap();
    let png = std::fs::read(dir.join("apple.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let csv = std::fs::read_to_string(dir.join("apple.csv")).unwrap();
    assert_eq!(csv.lines().count(), n + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn word_finding_respects_boundaries_and_chinese() {
    assert_eq!(
        find_word("Pineapple and Apple pie", "apple"),
        Some((14, 19))
    );
    assert_eq!(find_word("我喜欢吃苹果。", "苹果"), Some((12, 18)));
    assert_eq!(find_word("no fruit here", "apple"), None);
}
