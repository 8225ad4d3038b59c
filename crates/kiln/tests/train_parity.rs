//! Training parity with PyTorch (fixtures from `tests/fixtures/make_train_fixtures.py`): for a
//! fixed batch, dropout off, the loss, every parameter gradient, and the losses of 10 AdamW
//! steps match transformers.

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained, WeightStore};
use kiln::model::Batch;
use kiln::train::backprop::{clm_loss, mlm_loss, parameters, zeros_like, IGNORE};
use kiln::train::{AdamW, Param};

struct Case {
    batch: Batch,
    positions: Vec<usize>,
    targets: Vec<i64>,
    exp: serde_json::Value,
}

fn case(name: &str) -> Case {
    let exp = json(&fixture("train-parity").join(format!("{name}.json")));
    let lens: Vec<usize> = exp["batch"]["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let rows: Vec<Vec<u32>> = exp["batch"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let seqs: Vec<(&[u32], Option<&[u32]>)> = rows
        .iter()
        .zip(&lens)
        .map(|(r, &l)| (&r[..l], None))
        .collect();
    let batch = Batch::packed(&seqs).unwrap();
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    let mut off = 0;
    for (b, &l) in lens.iter().enumerate() {
        for i in 0..l {
            let t = exp["labels"][b][i].as_i64().unwrap();
            if t != IGNORE {
                positions.push(off + i);
                targets.push(t);
            }
        }
        off += l;
    }
    Case {
        batch,
        positions,
        targets,
        exp,
    }
}

fn loss_and_grads(p: &Pretrained, c: &Case, mlm: bool) -> (f32, Pretrained) {
    let mut g = zeros_like(p);
    let loss = if mlm {
        mlm_loss(p, &c.batch, &c.positions, &c.targets, &mut g, 1.0, None).unwrap()
    } else {
        clm_loss(p, &c.batch, &mut g, 1.0, None).unwrap()
    };
    (loss, g)
}

fn check(model: &str, name: &str, mlm: bool) {
    let mut p = checkpoint::load(&fixture(model)).unwrap();
    let c = case(name);
    let (loss, g) = loss_and_grads(&p, &c, mlm);
    let want = c.exp["loss"].as_f64().unwrap() as f32;
    assert!(
        (loss - want).abs() <= LOSS_RTOL * want.abs(),
        "{name}: loss {loss} vs {want}"
    );

    let hf = WeightStore::open_files(&[
        fixture("train-parity").join(format!("{name}_grads.safetensors"))
    ])
    .unwrap();
    let ours = checkpoint::save::named_tensors(&g).unwrap();
    assert_eq!(ours.len(), hf.names().len(), "{name}: same parameter set");
    for (n, t) in &ours {
        let w = hf.get(n).unwrap_or_else(|e| panic!("{e}"));
        let scale = w.data().iter().fold(1e-8f32, |m, v| m.max(v.abs()));
        let d = max_diff(t.data(), w.data());
        assert!(
            d <= (GRAD_RTOL * scale).max(GRAD_ATOL),
            "{name}: gradient of {n} differs by {d} (max |g| {scale})"
        );
    }

    // Ten AdamW steps at a constant learning rate, transformers' decay grouping.
    let lr = c.exp["lr"].as_f64().unwrap() as f32;
    let mut opt = AdamW::new(c.exp["weight_decay"].as_f64().unwrap() as f32);
    for (step, want) in c.exp["losses"].as_array().unwrap().iter().enumerate() {
        let (loss, mut g) = loss_and_grads(&p, &c, mlm);
        let want = want.as_f64().unwrap() as f32;
        assert!(
            (loss - want).abs() <= LOSS_RTOL * want.abs().max(1.0),
            "{name} step {step}: loss {loss} vs {want}"
        );
        let grads: Vec<Vec<f32>> = parameters(&mut g)
            .into_iter()
            .map(|(_, t, _)| t.data().to_vec())
            .collect();
        let mut params: Vec<Param> = parameters(&mut p)
            .into_iter()
            .zip(&grads)
            .map(|((_, t, decay), gr)| Param {
                value: t.data_mut(),
                grad: gr,
                decay,
            })
            .collect();
        opt.update(&mut params, lr).unwrap();
    }
}

#[test]
fn bert_mlm_gradients_and_adamw_match_pytorch() {
    check("tiny-bert", "bert", true);
}

#[test]
fn gpt2_clm_gradients_and_adamw_match_pytorch() {
    check("tiny-gpt2", "gpt2", false);
}

/// Training mode draws dropout masks from the seed (same seed, same loss); without a seed
/// dropout is off and the loss is transformers' eval-mode loss.
#[test]
fn dropout_is_seeded_in_training_and_off_otherwise() {
    let p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    assert!(p.config().hidden_dropout > 0.0 && p.config().attention_dropout > 0.0);
    let c = case("bert");
    let run = |seed: Option<u64>| {
        let mut g = zeros_like(&p);
        mlm_loss(&p, &c.batch, &c.positions, &c.targets, &mut g, 1.0, seed).unwrap()
    };
    let eval = run(None);
    assert!((eval - c.exp["loss"].as_f64().unwrap() as f32).abs() < 1e-4);
    let (a, b, other) = (run(Some(1)), run(Some(1)), run(Some(2)));
    assert_eq!(a, b);
    assert_ne!(a, eval);
    assert_ne!(a, other);
}
