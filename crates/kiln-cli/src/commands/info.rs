//! `kiln info`.

use anyhow::Result;
use std::path::PathBuf;

/// Describe a model directory.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory, or a hub id.
    model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

pub fn run(a: Args) -> Result<()> {
    let mut p = super::load(&a.model)?;
    let (per_layer, overall) = kiln::compress::sparsity::sparsity(&mut p);
    let c = p.config();
    let mut heads = Vec::new();
    if p.pooler.is_some() {
        heads.push("pooler");
    }
    if p.mlm_head.is_some() {
        heads.push("masked-lm");
    }
    if p.lm_head.is_some() {
        heads.push("causal-lm");
    }
    if p.rtd_head.is_some() {
        heads.push("replaced-token-detection");
    }
    if let Some(t) = &p.task {
        heads.push(match t.kind {
            kiln::heads::HeadKind::Sequence => "sequence-classification",
            kiln::heads::HeadKind::Token => "token-classification",
            kiln::heads::HeadKind::Span => "question-answering",
        });
    }
    let mut params = p.model.num_parameters();
    params += p
        .pooler
        .as_ref()
        .map_or(0, |x| x.dense.weight.numel() + c.hidden_size);
    let linear = |l: &kiln::engine::Linear| {
        l.in_features() * l.out_features() + l.bias.as_ref().map_or(0, |b| b.numel())
    };
    if let Some(m) = &p.mlm_head {
        params += linear(&m.transform) + m.norm.weight.numel() + m.norm.bias.numel();
        params += m.bias.numel() + m.decoder.as_ref().map_or(0, |d| d.numel());
    }
    if let Some(r) = &p.rtd_head {
        params += linear(&r.dense) + linear(&r.prediction);
    }
    params += p
        .lm_head
        .as_ref()
        .and_then(|l| l.weight.as_ref())
        .map_or(0, |w| w.numel());
    let mut info = serde_json::json!({
        "path": a.model.display().to_string(),
        "architecture": kiln::checkpoint::save::architecture_name(&p),
        "model_type": c.arch.model_type(),
        "layers": c.num_layers,
        "hidden": c.hidden_size,
        "heads": c.num_heads,
        "intermediate": c.intermediate_size,
        "vocab": c.vocab_size,
        "max_positions": c.max_positions,
        "parameters": params,
        "bytes_on_disk": dir_bytes(&super::resolve(&a.model)?),
        "tokenizer": p.tokenizer.as_ref().map(|t| format!("{:?}", t.kind()).to_lowercase()),
        "task_heads": heads,
        "sentence_transformers": p.sentence.as_ref().map(|s| serde_json::json!({
            "pooling": format!("{:?}", s.pooling).to_lowercase(),
            "normalize": s.normalize,
            "max_seq_length": s.max_seq_length,
        })),
        "quantization": c.is_quantized().then(|| {
            let int8 = p.model.blocks.iter().flat_map(|b| [&b.qkv, &b.attn_out, &b.ffn_in, &b.ffn_out])
                .filter(|l| l.int8.is_some()).count();
            format!("kiln_int8: {int8} of {} block linear layers int8 (per-channel weights, per-row dynamic activations)", 4 * p.model.blocks.len())
        }),
        "pruned": c.is_pruned().then(|| serde_json::json!({
            "heads_per_layer": (0..c.num_layers).map(|l| c.heads_at(l)).collect::<Vec<_>>(),
            "intermediate_per_layer": (0..c.num_layers).map(|l| c.intermediate_at(l)).collect::<Vec<_>>(),
        })),
        // Zero weights of the blocks' linear layers (finetune --prune-to); shown when any.
        "sparsity": (overall > 0.001).then(|| serde_json::json!({
            "overall": overall,
            "per_layer": per_layer.iter().map(|(n, s)| (n.clone(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
        })),
        "unused_tensors": p.unused_tensors,
    });
    if let (Some(l), Some(o)) = (&c.lstm, info.as_object_mut()) {
        // An LSTM has no heads, feed-forward width or positions; its own sizes instead.
        for k in ["heads", "intermediate", "max_positions"] {
            o.remove(k);
        }
        o.insert("layers".into(), l.layers.into());
        o.insert("hidden".into(), l.hidden.into());
        o.insert("projection".into(), l.proj.into());
        o.insert("bidirectional".into(), l.bidirectional.into());
    }
    if a.json {
        println!("{info}");
    } else if let Some(o) = info.as_object() {
        for (k, v) in o {
            println!(
                "{k:>22}: {}",
                v.as_str().map_or(v.to_string(), str::to_string)
            );
        }
    }
    Ok(())
}
