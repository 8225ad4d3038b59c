//! Knowledge distillation: the losses and their gradients against PyTorch, a student cut from
//! its teacher's layers, students that learn classification, tagging and QA from the teacher's
//! soft targets (and from unlabelled texts), exact resume, and the errors a mismatched teacher
//! gets.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::compress::distill::{distill_loss, Dist, DistillConfig};
use kiln::engine::grad::cross_entropy;
use kiln::train::classify::{encode_examples, evaluate_examples, read_data, Fields};
use kiln::train::distill::cut_layers;
use kiln::train::{finetune, FinetuneConfig, TrainConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

const WORDS: &[&str] = &[
    "token", "every", "small", "away", "cafe", "into", "last", "model", "morning", "makes", "open",
    "read", "sing", "times", "they", "water", "with", "while",
];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-distill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sentence(rng: &mut rand::rngs::StdRng, rain: bool) -> String {
    let n = rng.gen_range(4..8);
    let mut w: Vec<&str> = (0..n).map(|_| *WORDS.choose(rng).unwrap()).collect();
    if rain {
        let at = rng.gen_range(0..=w.len());
        w.insert(at, "rain");
    }
    w.join(" ")
}

/// `n` sentences labelled wet (with "rain") or dry; without labels when `labelled` is false.
fn rain_file(path: &Path, n: usize, seed: u64, labelled: bool) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..n {
        let rain = i % 2 == 0;
        let mut line = serde_json::json!({ "text": sentence(&mut rng, rain) });
        if labelled {
            line["label"] = (if rain { "wet" } else { "dry" }).into();
        }
        writeln!(f, "{line}").unwrap();
    }
    path.to_path_buf()
}

/// [`rain_file`] labelled in the fixture teacher's label names (neg, neutral, pos), as
/// `dir/named.jsonl`.
fn named_rain_file(dir: &Path, n: usize, seed: u64) -> PathBuf {
    let train = rain_file(&dir.join("train.jsonl"), n, seed, true);
    let data = dir.join("named.jsonl");
    let text = std::fs::read_to_string(&train)
        .unwrap()
        .replace("\"wet\"", "\"pos\"")
        .replace("\"dry\"", "\"neg\"");
    std::fs::write(&data, text).unwrap();
    data
}

/// Runs `cfg` from `model` into `out`, stopping (as Ctrl-C does) after step `at`.
fn interrupted_at(model: &Path, out: &Path, cfg: &FinetuneConfig, at: u64) {
    let stop = AtomicBool::new(false);
    let s = finetune(
        model,
        out,
        cfg,
        false,
        &stop,
        |_| {},
        |p| {
            if p.step == at {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(s.interrupted && s.step == at);
}

/// The tensors of `checkpoint-{step}` under two output directories are identical.
fn assert_same_checkpoint(a: &Path, b: &Path, step: u64) {
    let tensors = |d: &Path| {
        let p = checkpoint::load(&d.join(format!("checkpoint-{step}"))).unwrap();
        checkpoint::named_tensors(&p).unwrap()
    };
    assert_eq!(tensors(a), tensors(b));
}

fn config(task: &str, train: &Path, valid: Option<&Path>, steps: u64) -> FinetuneConfig {
    FinetuneConfig {
        task: task.into(),
        train_file: train.to_path_buf(),
        valid_file: valid.map(Path::to_path_buf),
        train: TrainConfig {
            lr: 2e-3,
            batch_size: 16,
            max_steps: Some(steps),
            warmup_steps: 5,
            eval_every: 20,
            log_every: 1,
            seed: 3,
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    }
}

fn distilled(cfg: FinetuneConfig, teacher: &Path, d: DistillConfig) -> FinetuneConfig {
    FinetuneConfig {
        distill: Some(DistillConfig {
            teacher: teacher.to_path_buf(),
            ..d
        }),
        ..cfg
    }
}

/// The losses of metrics.jsonl, in order.
fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

#[test]
fn distillation_losses_and_gradients_match_pytorch() {
    let fx = json(&fixture("distill-expected.json"));
    for (i, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let s = floats(&case["student"]);
        let t = floats(&case["teacher"]);
        let d = DistillConfig {
            // (attention cases have none of these)
            temperature: case["temperature"].as_f64().unwrap_or(1.0) as f32,
            alpha_kd: case["alpha_kd"].as_f64().unwrap_or(0.0) as f32,
            alpha_ce: case["alpha_ce"].as_f64().unwrap_or(0.0) as f32,
            ..DistillConfig::default()
        };
        let mut g = vec![0.0; s.len()];
        let loss = if case["kind"] == "attention" {
            let lens: Vec<usize> = case["lens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let heads = case["heads"].as_u64().unwrap() as usize;
            let w = case["weight"].as_f64().unwrap() as f32;
            w * kiln::compress::distill::attention_loss(&s, &t, &lens, heads, w, &mut g).unwrap()
        } else if case["kind"] == "rows" {
            let k = case["k"].as_u64().unwrap() as usize;
            let labels: Vec<i64> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let dists: Vec<Dist> = (0..labels.len()).map(|r| Dist::row(r, k)).collect();
            let gold =
                |z: &[f32], dz: &mut [f32]| Ok(cross_entropy(z, k, &labels, -100, Some(dz))?.0);
            distill_loss(&d, &s, &t, &dists, Some(&gold), &mut g).unwrap()
        } else {
            let lens: Vec<usize> = case["lens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let targets: Vec<[usize; 2]> = case["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    [
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_u64().unwrap() as usize,
                    ]
                })
                .collect();
            let mut dists = Vec::new();
            let mut o = 0;
            for &l in &lens {
                for col in 0..2 {
                    dists.push(Dist {
                        start: o * 2 + col,
                        stride: 2,
                        len: l,
                    });
                }
                o += l;
            }
            // The span gold loss: a cross-entropy per window and column, averaged over them.
            let gold = |z: &[f32], dz: &mut [f32]| {
                let mut total = 0.0;
                for (w, dist) in dists.iter().enumerate() {
                    let row: Vec<f32> = (0..dist.len).map(|i| z[dist.start + 2 * i]).collect();
                    let mut drow = vec![0.0; dist.len];
                    let target = targets[w / 2][w % 2] as i64;
                    total += cross_entropy(&row, dist.len, &[target], -100, Some(&mut drow))?.0;
                    for (i, v) in drow.iter().enumerate() {
                        dz[dist.start + 2 * i] = v / dists.len() as f32;
                    }
                }
                Ok(total / dists.len() as f32)
            };
            distill_loss(&d, &s, &t, &dists, Some(&gold), &mut g).unwrap()
        };
        let want = case["loss"].as_f64().unwrap() as f32;
        assert!(
            (loss - want).abs() < 1e-5 * want.abs().max(1.0),
            "case {i}: loss {loss} vs {want}"
        );
        let dg = max_diff(&g, &floats(&case["grad"]));
        assert!(dg < 1e-6, "case {i}: gradient differs by {dg}");
    }
}

#[test]
fn a_cut_student_keeps_the_chosen_blocks_embeddings_and_head() {
    let teacher = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let mut student = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    cut_layers(&mut student, &[0, 2]).unwrap();
    assert_eq!(student.config().num_layers, 2);
    let (t, s) = (
        checkpoint::named_tensors(&teacher).unwrap(),
        checkpoint::named_tensors(&student).unwrap(),
    );
    let layer = |name: &str, from: &str, to: &str| name.replacen(from, to, 1);
    for (name, tensor) in &s {
        let source = if name.contains(".layer.1.") {
            layer(name, ".layer.1.", ".layer.2.")
        } else {
            name.clone()
        };
        assert_eq!(tensor.data(), t[&source].data(), "{name} from {source}");
    }
    assert!(s.keys().any(|n| n.starts_with("classifier.")));
    assert!(!s.keys().any(|n| n.contains(".layer.2.")));
    for bad in [&[][..], &[3], &[2, 0], &[1, 1]] {
        let e = cut_layers(
            &mut checkpoint::load(&fixture("tiny-bert-cls")).unwrap(),
            bad,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--student-layers"), "{bad:?}: {e}");
    }
}

#[test]
fn a_cut_student_learns_classification_from_its_teacher_and_unlabelled_texts() {
    let dir = scratch("classify");
    let train = rain_file(&dir.join("train.jsonl"), 400, 1, true);
    let valid = rain_file(&dir.join("valid.jsonl"), 60, 2, true);
    let test = rain_file(&dir.join("test.jsonl"), 100, 3, true);
    let few = rain_file(&dir.join("few.jsonl"), 40, 4, true);
    let unlabeled = rain_file(&dir.join("unlabeled.jsonl"), 400, 5, false);
    let teacher = dir.join("teacher");
    run_finetune(
        &fixture("tiny-bert"),
        &teacher,
        &config("classify", &train, Some(&valid), 200),
        false,
    )
    .unwrap();
    // The student sees 40 labelled sentences and, through the teacher, 400 unlabelled ones;
    // it learns from the soft targets alone (alpha_ce = 0).
    let out = dir.join("student");
    let cfg = distilled(
        config("classify", &few, Some(&valid), 150),
        &teacher,
        DistillConfig {
            student_layers: vec![0, 2],
            unlabeled: Some(unlabeled),
            unlabeled_ratio: 10.0,
            ..DistillConfig::default()
        },
    );
    run_finetune(&teacher, &out, &cfg, false).unwrap();
    let p = checkpoint::load(&out).unwrap();
    assert_eq!(p.config().num_layers, 2);
    let labels = &p.task.as_ref().unwrap().labels;
    assert_eq!(labels.names, ["dry", "wet"]);
    let recs = read_data(&test, false).unwrap().records;
    let fields = Fields::resolve(None, None, "label", None);
    let ex = encode_examples(p.tokenizer().unwrap(), &recs, &fields, Some(labels), 64).unwrap();
    let acc = evaluate_examples(&p, &ex).unwrap()["accuracy"]
        .as_f64()
        .unwrap();
    assert!(acc >= 95.0, "student's held-out accuracy {acc}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// CoNLL-style sentences: "rain" is a WET entity.
fn tag_file(path: &Path, n: usize, seed: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..n {
        let wet = rng.gen_bool(0.7);
        let s = sentence(&mut rng, wet);
        let tokens: Vec<&str> = s.split(' ').collect();
        let tags: Vec<&str> = tokens
            .iter()
            .map(|w| if *w == "rain" { "B-WET" } else { "O" })
            .collect();
        writeln!(f, "{}", serde_json::json!({"tokens": tokens, "tags": tags})).unwrap();
    }
    path.to_path_buf()
}

#[test]
fn tagging_and_qa_students_learn_their_teachers_distributions() {
    let dir = scratch("tag-qa");
    // Tagging: a trained teacher, a one-layer student on soft targets and gold tags.
    let train = tag_file(&dir.join("tags.jsonl"), 200, 6);
    let teacher = dir.join("tag-teacher");
    let init = fresh_tiny_model(kiln::model::Arch::Bert, &dir.join("init"));
    let t = run_finetune(
        &init,
        &teacher,
        &config("tag", &train, Some(&train), 150),
        false,
    )
    .unwrap();
    assert!(t.best.unwrap().1 >= 90.0, "the teacher's F1 {:?}", t.best);
    let out = dir.join("tag-student");
    let cfg = distilled(
        config("tag", &train, Some(&train), 100),
        &teacher,
        DistillConfig {
            student_layers: vec![1],
            alpha_ce: 0.5,
            ..DistillConfig::default()
        },
    );
    let s = run_finetune(&teacher, &out, &cfg, false).unwrap();
    let l = losses(&out);
    assert!(l[l.len() - 1] < 0.5 * l[0], "tag losses {l:?}");
    let f1 = s.best.unwrap().1;
    assert!(f1 >= 90.0, "student's entity F1 {f1}");
    assert_eq!(checkpoint::load(&out).unwrap().config().num_layers, 1);

    // QA: the fixture QA model as teacher; the student matches its start/end distributions.
    let qa = fixture("qa-sample.jsonl");
    let out = dir.join("qa-student");
    let mut cfg = distilled(
        config("qa", &qa, None, 30),
        &fixture("tiny-bert-qa"),
        DistillConfig {
            student_layers: vec![0],
            ..DistillConfig::default()
        },
    );
    cfg.max_length = 48;
    cfg.doc_stride = 16;
    cfg.train.batch_size = 4;
    run_finetune(&fixture("tiny-bert-qa"), &out, &cfg, false).unwrap();
    // Noisy steps of four windows: the first five against the last five.
    let l = losses(&out);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&l[..5]), mean(&l[l.len() - 5..]));
    assert!(last < 0.8 * first, "qa losses {l:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resumed_distillation_is_bit_identical() {
    let dir = scratch("resume");
    let teacher = fixture("tiny-bert-cls");
    let data = named_rain_file(&dir, 40, 7);
    let mut cfg = distilled(
        config("classify", &data, Some(&data), 9),
        &teacher,
        DistillConfig {
            student_layers: vec![0, 1],
            alpha_ce: 0.3,
            ..DistillConfig::default()
        },
    );
    cfg.train.save_every = 4;
    cfg.train.batch_size = 8;
    cfg.train.eval_every = 2;
    let full = dir.join("full");
    run_finetune(&teacher, &full, &cfg, false).unwrap();
    let part = dir.join("part");
    interrupted_at(&teacher, &part, &cfg, 5);
    let s = run_finetune(&teacher, &part, &cfg, true).unwrap();
    assert_eq!(s.step, 9);
    assert_same_checkpoint(&full, &part, 9);
    // Another teacher is another run.
    let mut other = cfg.clone();
    other.distill.as_mut().unwrap().teacher = fixture("tiny-bert-reg");
    let e = run_finetune(&teacher, &part, &other, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other settings") && e.contains("distill"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_teacher_that_cannot_teach_the_student_is_refused_by_name() {
    let dir = scratch("errors");
    let train = rain_file(&dir.join("train.jsonl"), 20, 8, true);
    let cfg = |teacher: &str, layers: Vec<usize>| {
        distilled(
            config("classify", &train, None, 2),
            &fixture(teacher),
            DistillConfig {
                student_layers: layers,
                ..DistillConfig::default()
            },
        )
    };
    let e = run_finetune(
        &fixture("tiny-bert"),
        &dir.join("a"),
        &cfg("tiny-bert", vec![0]),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs a teacher fine-tuned for it"), "{e}");
    // A student with another vocabulary would read other token ids.
    let e = run_finetune(
        &fixture("tiny-gpt2"),
        &dir.join("b"),
        &cfg("tiny-bert-cls", vec![]),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tokenizer") && e.contains("same token ids"),
        "{e}"
    );
    let mut lora = cfg("tiny-bert-cls", vec![0]);
    lora.peft.method = kiln::peft::Method::Lora;
    let e = run_finetune(&fixture("tiny-bert-cls"), &dir.join("d"), &lora, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no base directory"), "{e}");
    let mut bad = cfg("tiny-bert-cls", vec![0]);
    bad.distill.as_mut().unwrap().temperature = -1.0;
    let e = run_finetune(&fixture("tiny-bert-cls"), &dir.join("c"), &bad, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--temperature"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_masked_lm_student_learns_its_teachers_vocabulary_distributions_on_a_corpus() {
    let dir = scratch("mlm");
    let corpus = dir.join("corpus.txt");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let text: Vec<String> = (0..200).map(|i| sentence(&mut rng, i % 3 == 0)).collect();
    std::fs::write(&corpus, text.join("\n")).unwrap();
    let out = dir.join("student");
    let cfg = kiln::train::PretrainConfig {
        corpus: vec![corpus.clone()],
        valid: vec![corpus],
        seq_len: 16,
        eval_sequences: 8,
        train: TrainConfig {
            lr: 2e-3,
            batch_size: 8,
            max_steps: Some(60),
            log_every: 1,
            eval_every: 30,
            seed: 4,
            ..TrainConfig::default()
        },
        distill: Some(DistillConfig {
            teacher: fixture("tiny-bert"),
            student_layers: vec![0],
            ..DistillConfig::default()
        }),
        ..Default::default()
    };
    let stop = AtomicBool::new(false);
    kiln::train::pretrain(
        &fixture("tiny-bert"),
        &out,
        &cfg,
        false,
        &stop,
        |_| {},
        |_| {},
    )
    .unwrap();
    let l = losses(&out);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&l[..5]), mean(&l[l.len() - 5..]));
    assert!(last < 0.5 * first, "soft-target losses {l:?}");
    let p = checkpoint::load(&out).unwrap();
    assert_eq!(p.config().num_layers, 1);
    assert!(p.mlm_head.is_some());
    // A teacher without a masked-LM head is named.
    let mut bad = cfg.clone();
    bad.distill.as_mut().unwrap().teacher = fixture("tiny-bert-cls");
    bad.train.overwrite = true;
    let e = kiln::train::pretrain(
        &fixture("tiny-bert"),
        &out,
        &bad,
        false,
        &stop,
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no masked-LM head"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn gradients_of_hidden_state_and_attention_losses_reach_every_weight_below_them() {
    use kiln::compress::distill::{attention_loss, hidden_loss};
    use kiln::engine::attention::attention_probs;
    use kiln::train::backprop::{backward_with, forward, zeros_like, LayerGrads};
    let p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    let ids = [2u32, 17, 33, 5, 40, 3];
    let batch = kiln::model::Batch::packed(&[(&ids, None)]).unwrap();
    let mask = p.model.default_mask();
    let h = p.config().hidden_size;
    // Fixed "teacher" states for blocks 0 and 2; cosine on block 0, MSE on block 2.
    let target: Vec<f32> = (0..ids.len() * h)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
        .collect();
    // And uniform attention for every head of block 1 (MiniLM's attention-transfer loss).
    let heads = p.model.blocks[1].heads(p.config());
    let uniform = vec![1.0 / ids.len() as f32; heads * ids.len() * ids.len()];
    let loss_of = |q: &kiln::checkpoint::Pretrained, grads: Option<&mut LayerGrads>| {
        let (_, acts) = forward(&q.model, &batch, mask, None).unwrap();
        let (mut g0, mut g2) = (vec![0.0; ids.len() * h], vec![0.0; ids.len() * h]);
        let mut ga = vec![0.0; uniform.len()];
        let probs = attention_probs(
            acts.qkv(1),
            &batch.seq_lens,
            heads,
            q.config().head_dim(),
            mask,
            None,
            None,
        )
        .unwrap();
        let l = hidden_loss(acts.block_output(0), &target, h, false, 1.0, &mut g0).unwrap()
            + hidden_loss(acts.block_output(2), &target, h, true, 1.0, &mut g2).unwrap()
            + attention_loss(&probs, &uniform, &batch.seq_lens, heads, 1.0, &mut ga).unwrap();
        if let Some(g) = grads {
            g.outputs = vec![Some(g0), None, Some(g2)];
            g.scores = vec![None, Some(ga), None];
        }
        (l as f64, acts)
    };
    let mut layer_grads = LayerGrads::default();
    let (_, acts) = loss_of(&p, Some(&mut layer_grads));
    let mut grads = zeros_like(&p);
    let zero = vec![0.0; ids.len() * h];
    backward_with(
        &p.model,
        &batch,
        mask,
        &acts,
        zero,
        &mut grads.model,
        None,
        &layer_grads,
    )
    .unwrap();
    // Finite differences on weights of block 0 (under every term), block 1 (under the
    // attention and block-2 terms; its query/key weights only under them) and block 2.
    for (block, idx) in [(0usize, 5usize), (0, 900), (1, 300), (2, 77)] {
        let analytic = grads.model.blocks[block].ffn_in.weight.data()[idx] as f64;
        let eps = 1e-2;
        let at = |delta: f32| {
            let mut q = checkpoint::load(&fixture("tiny-bert")).unwrap();
            q.model.blocks[block].ffn_in.weight.data_mut()[idx] += delta;
            q.model.blocks[block].ffn_in.weights_changed();
            loss_of(&q, None).0
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        assert!(
            (numeric - analytic).abs() < 2e-3 + 2e-2 * numeric.abs(),
            "block {block} weight {idx}: {analytic} vs numeric {numeric}"
        );
    }
}

#[test]
fn a_student_learns_the_teachers_hidden_states() {
    let dir = scratch("hidden");
    let data = named_rain_file(&dir, 40, 10);
    let out = dir.join("student");
    let cfg = distilled(
        config("classify", &data, None, 40),
        &fixture("tiny-bert-cls"),
        DistillConfig {
            student_layers: vec![0, 2],
            alpha_kd: 0.0,
            alpha_hidden: 1.0,
            hidden_loss: "mse".into(),
            ..DistillConfig::default()
        },
    );
    run_finetune(&fixture("tiny-bert-cls"), &out, &cfg, false).unwrap();
    let l = losses(&out);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&l[l.len() - 5..]) < 0.7 * mean(&l[..5]),
        "hidden losses {l:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_student_learns_the_teachers_attention_maps() {
    let dir = scratch("attn");
    let data = named_rain_file(&dir, 40, 12);
    let out = dir.join("student");
    let d = DistillConfig {
        student_layers: vec![0, 2],
        alpha_kd: 0.0,
        alpha_attn: 1.0,
        ..DistillConfig::default()
    };
    let cfg = distilled(
        config("classify", &data, None, 40),
        &fixture("tiny-bert-cls"),
        d.clone(),
    );
    run_finetune(&fixture("tiny-bert-cls"), &out, &cfg, false).unwrap();
    let l = losses(&out);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&l[l.len() - 5..]) < 0.7 * mean(&l[..5]),
        "attention losses {l:?}"
    );
    // A student with other head counts is refused, naming the blocks.
    let mut other = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let heads = other.model.blocks[0].heads(other.config());
    let keep: Vec<usize> = (1..heads).collect();
    kiln::compress::prune::keep_heads(&mut other, 0, &keep).unwrap();
    let pruned = dir.join("pruned");
    checkpoint::save(&other, &pruned, checkpoint::SaveDtype::F32).unwrap();
    let cfg = distilled(
        config("classify", &data, None, 2),
        &fixture("tiny-bert-cls"),
        DistillConfig {
            student_layers: vec![],
            ..d
        },
    );
    let err = run_finetune(&pruned, &dir.join("refused"), &cfg, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--alpha-attn") && err.contains(&format!("{}", heads - 1)),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A narrower student of its own (hidden 48 where the teacher has 96; 3 heads each): its
/// hidden states are compared through a learned projection (TinyBERT's `W_h`), which trains
/// with it, resumes exactly (kept in the optimizer state) and is not saved with the model.
#[test]
fn a_narrower_student_learns_the_teachers_hidden_states_through_a_learned_projection() {
    use kiln::model::init::{new_config, random_model, InitShape};
    let dir = scratch("proj");
    let teacher = fixture("tiny-bert-cls");
    let t = checkpoint::load(&teacher).unwrap();
    let shape = InitShape {
        layers: Some(2),
        hidden: Some(48),
        heads: Some(3),
        intermediate: Some(96),
        max_positions: Some(64),
        ..Default::default()
    };
    let tok = t.tokenizer().unwrap().clone();
    let cfg = new_config(kiln::model::Arch::Bert, "tiny", &shape, &tok).unwrap();
    let student = dir.join("narrow");
    let s = random_model(cfg, tok, teacher.clone(), 3).unwrap();
    checkpoint::save(&s, &student, checkpoint::SaveDtype::F32).unwrap();
    let data = named_rain_file(&dir, 40, 9);
    // The teacher's labels, in its order (the fresh head predicts them).
    let labels = dir.join("labels.json");
    std::fs::write(&labels, r#"["neg", "neutral", "pos"]"#).unwrap();
    // Hidden states alone, by MSE: the loss falls.
    let d = DistillConfig {
        alpha_kd: 0.0,
        alpha_hidden: 1.0,
        hidden_loss: "mse".into(),
        ..DistillConfig::default()
    };
    let mut cfg = distilled(config("classify", &data, None, 40), &teacher, d);
    cfg.labels = Some(labels.clone());
    let out = dir.join("learnt");
    run_finetune(&student, &out, &cfg, false).unwrap();
    let l = losses(&out);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&l[l.len() - 5..]) < 0.7 * mean(&l[..5]),
        "projected hidden losses {l:?}"
    );
    // The model directory holds the student alone.
    let saved = checkpoint::load(&out).unwrap();
    assert!(
        saved.unused_tensors.is_empty(),
        "{:?}",
        saved.unused_tensors
    );
    assert_eq!(saved.config().hidden_size, 48);
    // Resume with every term on: bit-identical to the uninterrupted run.
    let d = DistillConfig {
        alpha_kd: 0.5,
        alpha_hidden: 1.0,
        alpha_attn: 0.5,
        ..DistillConfig::default()
    };
    let mut cfg = distilled(config("classify", &data, None, 9), &teacher, d);
    cfg.labels = Some(labels.clone());
    cfg.train.batch_size = 8;
    let full = dir.join("full");
    run_finetune(&student, &full, &cfg, false).unwrap();
    let part = dir.join("part");
    interrupted_at(&student, &part, &cfg, 5);
    let optimizer = std::fs::read(part.join("checkpoint-5/optimizer.safetensors")).unwrap();
    assert!(
        optimizer
            .windows(23)
            .any(|w| w == b"aux.distill.proj.weight"),
        "the projection is kept with the optimizer state"
    );
    run_finetune(&student, &part, &cfg, true).unwrap();
    assert_same_checkpoint(&full, &part, 9);
    std::fs::remove_dir_all(dir).unwrap();
}
