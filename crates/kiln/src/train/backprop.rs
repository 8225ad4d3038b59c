//! Forward with saved activations and the backward pass of the whole model (module-level
//! forward/backward pairs, as llm.c), for the masked-LM and causal-LM objectives.
//!
//! Gradients live in a [`Pretrained`] of the same shape as the model (see [`zeros_like`]), so
//! they have the model's Hugging Face names too.

use crate::checkpoint::Pretrained;
use crate::engine::attention::{attention_backward, attention_dropout, packed_self_attention};
use crate::engine::dropout::Dropout;
use crate::engine::embedding::gather_sum;
use crate::engine::grad::{
    activation_backward, cross_entropy_in_place, embedding_backward, layer_norm_backward,
    linear_backward,
};
use crate::engine::linear::{linear_forward, linear_forward_once};
use crate::engine::{LayerNorm, Linear, LinearOut, MaskKind, Tensor};
use crate::error::{Error, Result};
use crate::model::{Batch, Block, NormPlacement, Transformer};
use crate::peft::bottleneck::{non_empty, Bottleneck};
use crate::peft::lora::Lora;

/// Ignored target id (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// A model-shaped container of zeros for gradients (no tokenizer). Frozen parameters (see
/// [`crate::peft::is_trainable`]) get empty tensors: no buffer, and the backward pass skips
/// their gradients.
pub fn zeros_like(p: &Pretrained) -> Pretrained {
    let mut g = Pretrained {
        dir: p.dir.clone(),
        model: p.model.clone(),
        pooler: p.pooler.clone(),
        mlm_head: p.mlm_head.clone(),
        lm_head: p.lm_head.clone(),
        rtd_head: p.rtd_head.clone(),
        task: p.task.clone(),
        tokenizer: None,
        sentence: None,
        unused_tensors: Vec::new(),
        peft: None,
    };
    for (name, t, _) in parameters(&mut g) {
        if crate::peft::is_trainable(p.peft.as_ref(), &name) {
            t.data_mut().fill(0.0);
        } else {
            *t = Tensor::zeros(&[0]);
        }
    }
    g
}

/// Every trainable tensor of `p` in a fixed order, with a name and whether weight decay
/// applies (not to biases and norm weights). Linear layers drop their packed copies, since
/// the caller may change the weights.
pub fn parameters(p: &mut Pretrained) -> Vec<(String, &mut Tensor, bool)> {
    let mut out: Vec<(String, &mut Tensor, bool)> = Vec::new();
    fn lin<'a>(out: &mut Vec<(String, &'a mut Tensor, bool)>, name: String, l: &'a mut Linear) {
        l.weights_changed();
        out.push((format!("{name}.weight"), &mut l.weight, true));
        if let Some(b) = &mut l.bias {
            out.push((format!("{name}.bias"), b, false));
        }
        for (k, piece) in l.lora.iter_mut().enumerate() {
            out.push((format!("{name}.lora{k}.a"), &mut piece.a, true));
            out.push((format!("{name}.lora{k}.b"), &mut piece.b, true));
        }
    }
    fn adapter<'a>(
        out: &mut Vec<(String, &'a mut Tensor, bool)>,
        name: String,
        a: &'a mut Option<Bottleneck>,
    ) {
        if let Some(a) = a {
            lin(out, format!("{name}.down"), &mut a.down);
            lin(out, format!("{name}.up"), &mut a.up);
        }
    }
    fn norm<'a>(out: &mut Vec<(String, &'a mut Tensor, bool)>, name: String, n: &'a mut LayerNorm) {
        out.push((format!("{name}.weight"), &mut n.weight, false));
        out.push((format!("{name}.bias"), &mut n.bias, false));
    }
    let m = &mut p.model;
    m.embeddings.word.weights_changed();
    out.push((
        "embeddings.word".into(),
        &mut m.embeddings.word.weight,
        true,
    ));
    // An LSTM has no position table. (Decided by the architecture, not the tensor's size: a
    // gradient buffer of a frozen table is empty too, and must keep its place in the list.)
    if m.lstm.is_none() {
        out.push((
            "embeddings.position".into(),
            &mut m.embeddings.position,
            true,
        ));
    }
    if let Some(t) = &mut m.embeddings.token_type {
        out.push(("embeddings.token_type".into(), t, true));
    }
    if let Some(n) = &mut m.embeddings.norm {
        norm(&mut out, "embeddings.norm".into(), n);
    }
    if let Some(pj) = &mut m.embeddings.project {
        lin(&mut out, "embeddings.project".into(), pj);
    }
    if let Some(lstm) = &mut m.lstm {
        for (l, layer) in lstm.layers.iter_mut().enumerate() {
            for (d, dir) in std::iter::once(&mut layer.forward)
                .chain(layer.backward.as_mut())
                .enumerate()
            {
                let c = &mut dir.cell;
                let name = format!("lstm.{l}.{d}");
                out.push((format!("{name}.weight_ih"), &mut c.w_ih, true));
                out.push((format!("{name}.weight_hh"), &mut c.w_hh, true));
                out.push((format!("{name}.bias_ih"), &mut c.b_ih, false));
                out.push((format!("{name}.bias_hh"), &mut c.b_hh, false));
                lin(&mut out, format!("{name}.proj"), &mut dir.proj);
            }
        }
    }
    for (i, b) in m.blocks.iter_mut().enumerate() {
        lin(&mut out, format!("blocks.{i}.qkv"), &mut b.qkv);
        lin(&mut out, format!("blocks.{i}.attn_out"), &mut b.attn_out);
        norm(&mut out, format!("blocks.{i}.ln_attn"), &mut b.ln_attn);
        lin(&mut out, format!("blocks.{i}.ffn_in"), &mut b.ffn_in);
        lin(&mut out, format!("blocks.{i}.ffn_out"), &mut b.ffn_out);
        norm(&mut out, format!("blocks.{i}.ln_ffn"), &mut b.ln_ffn);
        adapter(
            &mut out,
            format!("blocks.{i}.adapter_attn"),
            &mut b.adapter_attn,
        );
        adapter(
            &mut out,
            format!("blocks.{i}.adapter_ffn"),
            &mut b.adapter_ffn,
        );
    }
    if let Some(n) = &mut m.final_norm {
        norm(&mut out, "final_norm".into(), n);
    }
    if let Some(pl) = &mut p.pooler {
        lin(&mut out, "pooler".into(), &mut pl.dense);
    }
    if let Some(h) = &mut p.mlm_head {
        lin(&mut out, "mlm.transform".into(), &mut h.transform);
        norm(&mut out, "mlm.norm".into(), &mut h.norm);
        if let Some(d) = &mut h.decoder {
            out.push(("mlm.decoder".into(), d, true));
        }
        out.push(("mlm.bias".into(), &mut h.bias, false));
    }
    if let Some(w) = p.lm_head.as_mut().and_then(|h| h.weight.as_mut()) {
        out.push(("lm_head".into(), w, true));
    }
    if let Some(r) = &mut p.rtd_head {
        lin(&mut out, "rtd.dense".into(), &mut r.dense);
        lin(&mut out, "rtd.prediction".into(), &mut r.prediction);
    }
    if let Some(t) = &mut p.task {
        lin(&mut out, "task".into(), &mut t.linear);
    }
    out
}

/// What one block keeps from its forward pass for the backward pass.
struct BlockActs {
    x_in: Vec<f32>,
    /// Attention input: LN(x_in) for pre-LN (empty for post-LN, where it is x_in).
    a_in: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    /// x_in + attention output (before the norm for post-LN).
    r1: Vec<f32>,
    /// Feed-forward input.
    f_in: Vec<f32>,
    /// Feed-forward pre-activation.
    u: Vec<f32>,
    /// Feed-forward residual sum (before the norm for post-LN).
    r2: Vec<f32>,
    /// Input of the attention-output adapter (the dropped-out projection), if any.
    ad_attn_in: Vec<f32>,
    /// Input of the feed-forward adapter, if any.
    ad_ffn_in: Vec<f32>,
}

/// Saved activations of a training forward pass.
pub struct Activations {
    emb: Vec<f32>,
    /// Input of the embedding projection (ELECTRA), `[tokens, embedding_size]`; empty without.
    proj_in: Vec<f32>,
    blocks: Vec<BlockActs>,
    /// Input of the final norm (pre-LN models).
    pre_final: Vec<f32>,
    /// The LSTM stacks' activations (an LSTM backbone; `blocks` is then empty).
    lstm: Option<super::lstm::LstmActs>,
}

impl Activations {
    /// The output of block `l`, `[tokens, hidden]` (before a final norm): what a hidden-state
    /// distillation loss compares.
    pub fn block_output(&self, l: usize) -> &[f32] {
        match self.blocks.get(l + 1) {
            Some(next) => &next.x_in,
            None => &self.pre_final,
        }
    }

    /// Block `l`'s fused query/key/value projections, `[tokens, 3 · width]`: what the
    /// attention probabilities are computed from.
    pub fn qkv(&self, l: usize) -> &[f32] {
        &self.blocks[l].qkv
    }

    /// Number of blocks recorded.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The inputs of block `l`'s four linear layers (query/key/value, attention output,
    /// feed-forward in and out), `[tokens, in]` each: what calibration measures.
    pub fn linear_inputs(&self, l: usize, act: crate::engine::Activation) -> [Vec<f32>; 4] {
        let b = &self.blocks[l];
        let qkv_in = if b.a_in.is_empty() { &b.x_in } else { &b.a_in };
        [
            qkv_in.clone(),
            b.ctx.clone(),
            b.f_in.clone(),
            activated(&b.u, act),
        ]
    }
}

fn ln_fwd(n: &LayerNorm, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    n.forward(x, &mut y);
    y
}

/// The dropout stream of LoRA bypass `piece` of linear layer `site` (block `l`'s layers are
/// sites `4l..4l+3`, the pooler [`POOLER_SITE`]), or `None` in evaluation mode.
pub(crate) fn lora_drop(l: &Lora, seed: Option<u64>, site: u64, piece: usize) -> Option<Dropout> {
    let seed = seed.filter(|_| l.dropout > 0.0)?;
    Some(Dropout {
        p: l.dropout,
        seed: Dropout::derive(seed, 0x4C0_0000 + site * 8 + piece as u64),
    })
}

/// The LoRA dropout site of the pooler.
pub(crate) const POOLER_SITE: u64 = 1 << 24;

/// A training forward of a linear layer (write mode): the frozen or trained weight, plus its
/// LoRA bypasses with their dropout.
pub(crate) fn lin_fwd(
    l: &Linear,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
    seed: Option<u64>,
    site: u64,
) -> Result<()> {
    match &l.int8 {
        // A frozen int8 base (adapters trained on a quantized model).
        Some(q) => q.forward_into(
            x,
            rows,
            l.bias.as_ref().map(|b| b.data()),
            out,
            LinearOut::Write,
        ),
        // Training changes weights every step: use the unpacked path (no cached packing).
        None => linear_forward(&l.weight, l.bias.as_ref(), x, rows, out, LinearOut::Write)?,
    }
    let o = l.out_features();
    for (k, piece) in l.lora.iter().enumerate() {
        piece.forward_add(x, rows, out, o, lora_drop(piece, seed, site, k))?;
    }
    Ok(())
}

fn attn_fwd(
    model: &Transformer,
    block: &Block,
    qkv: &[f32],
    batch: &Batch,
    mask: MaskKind,
    out: &mut [f32],
    drop: Option<Dropout>,
) -> Result<()> {
    let seqs = packed_self_attention(
        qkv,
        block.attention_width(),
        &batch.seq_lens,
        batch.key_mask.as_deref(),
        batch.prefix_lens.as_deref(),
    );
    attention_dropout(
        &seqs,
        block.heads(&model.config),
        model.config.head_dim(),
        mask,
        out,
        drop,
    )
}

/// The dropout sites of a training pass: embeddings, and per block the attention
/// probabilities, the attention output and the feed-forward output (where transformers'
/// BERT and GPT-2 apply `hidden_dropout_prob` / `resid_pdrop` and the attention dropout).
#[derive(Clone, Copy)]
struct Drops {
    seed: u64,
    hidden: f32,
    attn: f32,
    /// Dropout after the feed-forward output (not ALBERT's).
    ffn: bool,
}

impl Drops {
    fn new(model: &Transformer, seed: Option<u64>) -> Option<Self> {
        let c = &model.config;
        seed.filter(|_| c.hidden_dropout > 0.0 || c.attention_dropout > 0.0)
            .map(|seed| Drops {
                seed,
                hidden: c.hidden_dropout as f32,
                attn: c.attention_dropout as f32,
                ffn: c.arch.ffn_output_dropout(),
            })
    }
    fn site(&self, p: f32, stream: u64) -> Option<Dropout> {
        (p > 0.0).then(|| Dropout {
            p,
            seed: Dropout::derive(self.seed, stream),
        })
    }
    fn embeddings(&self) -> Option<Dropout> {
        self.site(self.hidden, 0)
    }
    fn probs(&self, layer: usize) -> Option<Dropout> {
        self.site(self.attn, 1 + 3 * layer as u64)
    }
    fn attn_out(&self, layer: usize) -> Option<Dropout> {
        self.site(self.hidden, 2 + 3 * layer as u64)
    }
    fn ffn_out(&self, layer: usize) -> Option<Dropout> {
        let p = if self.ffn { self.hidden } else { 0.0 };
        self.site(p, 3 + 3 * layer as u64)
    }
    /// An LSTM layer's output (`site` numbers its layers and directions).
    fn lstm_out(&self, site: usize) -> Option<Dropout> {
        self.site(self.hidden, 1 + site as u64)
    }
}

fn drop_inplace(d: Option<Dropout>, x: &mut [f32]) {
    if let Some(d) = d {
        d.apply(x);
    }
}

/// Forward pass that keeps what the backward pass needs. batch -> hidden [tokens, hidden].
/// With `dropout_seed`, dropout is on (training mode) with the config's probabilities.
pub fn forward(
    model: &Transformer,
    batch: &Batch,
    mask: MaskKind,
    dropout_seed: Option<u64>,
) -> Result<(Vec<f32>, Activations)> {
    let drops = Drops::new(model, dropout_seed);
    let cfg = &model.config;
    let (t, h) = (batch.tokens(), cfg.hidden_size);
    let e = &model.embeddings;
    let mut emb = vec![0.0; t * e.width()];
    let type_rows = model.config.type_ids(&batch.type_ids);
    let types: &[u32] = if e.token_type.is_some() {
        &type_rows
    } else {
        &[]
    };
    gather_sum(
        &e.word,
        e.positions(),
        e.token_type.as_ref(),
        &batch.ids,
        &model.config.position_ids(&batch.positions),
        types,
        &mut emb,
    )?;
    let mut x = match &e.norm {
        Some(n) => ln_fwd(n, &emb),
        None => emb.clone(),
    };
    drop_inplace(drops.and_then(|d| d.embeddings()), &mut x);
    if let Some(lstm) = &model.lstm {
        let (out, acts) = super::lstm::forward(lstm, &x, &batch.seq_lens, mask, &|s| {
            drops.and_then(|d| d.lstm_out(s))
        })?;
        return Ok((
            out,
            Activations {
                emb,
                proj_in: Vec::new(),
                blocks: Vec::new(),
                pre_final: Vec::new(),
                lstm: Some(acts),
            },
        ));
    }
    // ELECTRA projects the (dropped-out) embeddings to the hidden width.
    let proj_in = match &e.project {
        Some(pj) => {
            let mut y = vec![0.0; t * h];
            lin_fwd(pj, &x, t, &mut y, None, 0)?;
            std::mem::replace(&mut x, y)
        }
        None => Vec::new(),
    };
    let pre = cfg.norm == NormPlacement::Pre;
    let mut blocks = Vec::with_capacity(cfg.num_layers);
    // Layers sharing a block (ALBERT) each run it, with their own dropout and saved inputs.
    for (l, b) in model.layers().enumerate() {
        let site = 4 * l as u64;
        let a_in = if pre {
            ln_fwd(&b.ln_attn, &x)
        } else {
            Vec::new()
        };
        // A pruned block's attention (w) and feed-forward (inter) are narrower.
        let (w, inter) = (b.attention_width(), b.ffn_in.out_features());
        let mut qkv = vec![0.0; t * 3 * w];
        lin_fwd(
            &b.qkv,
            if pre { &a_in } else { &x },
            t,
            &mut qkv,
            dropout_seed,
            site,
        )?;
        let mut ctx = vec![0.0; t * w];
        attn_fwd(
            model,
            b,
            &qkv,
            batch,
            mask,
            &mut ctx,
            drops.and_then(|d| d.probs(l)),
        )?;
        let mut o = vec![0.0; t * h];
        lin_fwd(&b.attn_out, &ctx, t, &mut o, dropout_seed, site + 1)?;
        drop_inplace(drops.and_then(|d| d.attn_out(l)), &mut o);
        let ad_attn_in = match &b.adapter_attn {
            Some(ad) => {
                let input = o.clone();
                ad.forward_inplace(&mut o, t)?;
                input
            }
            None => Vec::new(),
        };
        let mut r1 = x.clone();
        add(&mut r1, &o);
        let f_in = if pre {
            ln_fwd(&b.ln_ffn, &r1)
        } else {
            ln_fwd(&b.ln_attn, &r1)
        };
        let mut u = vec![0.0; t * inter];
        lin_fwd(&b.ffn_in, &f_in, t, &mut u, dropout_seed, site + 2)?;
        let g = activated(&u, cfg.activation);
        let mut o2 = vec![0.0; t * h];
        lin_fwd(&b.ffn_out, &g, t, &mut o2, dropout_seed, site + 3)?;
        drop_inplace(drops.and_then(|d| d.ffn_out(l)), &mut o2);
        let ad_ffn_in = match &b.adapter_ffn {
            Some(ad) => {
                let input = o2.clone();
                ad.forward_inplace(&mut o2, t)?;
                input
            }
            None => Vec::new(),
        };
        let mut r2 = if pre { r1.clone() } else { f_in.clone() };
        add(&mut r2, &o2);
        let out = if pre {
            r2.clone()
        } else {
            ln_fwd(&b.ln_ffn, &r2)
        };
        blocks.push(BlockActs {
            x_in: std::mem::replace(&mut x, out),
            a_in,
            qkv,
            ctx,
            r1,
            f_in,
            u,
            r2,
            ad_attn_in,
            ad_ffn_in,
        });
    }
    let pre_final = x.clone();
    if let Some(n) = &model.final_norm {
        x = ln_fwd(n, &x);
    }
    Ok((
        x,
        Activations {
            emb,
            proj_in,
            blocks,
            pre_final,
            lstm: None,
        },
    ))
}

/// The gradient of a whole `[tokens, h]` hidden state (`len` values) from the gradient of
/// its gathered `rows`: those rows get theirs (summed where a row was gathered twice), every
/// other row zero.
pub(crate) fn scatter_rows(d: &[f32], rows: &[usize], h: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    for (k, &r) in rows.iter().enumerate() {
        add(&mut out[r * h..(r + 1) * h], &d[k * h..(k + 1) * h]);
    }
    out
}

fn add(a: &mut [f32], b: &[f32]) {
    crate::engine::activation::add_inplace(a, b);
}

/// `act(x)` as a new buffer, with the vectorized, parallel kernel.
fn activated(x: &[f32], act: crate::engine::Activation) -> Vec<f32> {
    let mut y = x.to_vec();
    crate::engine::activation::bias_act_inplace(&mut y, None, Some(act));
    y
}

/// Backward of [`lin_fwd`]: the input gradient into `dx` (overwritten), and the gradients of
/// the weight, bias and LoRA bypasses that are trained (non-empty in `g`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lin_back(
    l: &Linear,
    g: &mut Linear,
    x: &[f32],
    dy: &[f32],
    rows: usize,
    mut dx: Option<&mut [f32]>,
    seed: Option<u64>,
    site: u64,
) -> Result<()> {
    // An int8 weight is frozen; its input gradient runs through the weight it stands for.
    linear_backward(
        x,
        &l.f32_weight(),
        dy,
        rows,
        dx.as_deref_mut(),
        non_empty(&mut g.weight),
        g.bias.as_mut().and_then(non_empty),
    )?;
    let o = l.out_features();
    for (k, (piece, gp)) in l.lora.iter().zip(g.lora.iter_mut()).enumerate() {
        piece.backward(
            x,
            rows,
            dy,
            o,
            dx.as_deref_mut(),
            gp.a.data_mut(),
            gp.b.data_mut(),
            lora_drop(piece, seed, site, k),
        )?;
    }
    Ok(())
}

/// Layer-norm backward; the parameter gradients are dropped when `g` is frozen (empty).
fn ln_back(n: &LayerNorm, g: &mut LayerNorm, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    let h = n.weight.numel();
    let (mut sg, mut sb) = (Vec::new(), Vec::new());
    let dg = match non_empty(&mut g.weight) {
        Some(d) => d,
        None => {
            sg.resize(h, 0.0);
            &mut sg[..]
        }
    };
    let db = match non_empty(&mut g.bias) {
        Some(d) => d,
        None => {
            sb.resize(h, 0.0);
            &mut sb[..]
        }
    };
    layer_norm_backward(x, n.weight.data(), n.eps, dy, &mut dx, dg, db);
    dx
}

/// Gradients of the loss with respect to a mask on each attention head's output and on each
/// feed-forward neuron (masks of ones, so the model is unchanged): Michel et al. 2019's
/// importance, `|∂L/∂mask|` summed over the backward passes run inside [`with_mask_grads`].
#[derive(Clone, Debug, Default)]
pub struct MaskGrads {
    /// Per layer, per head.
    pub heads: Vec<Vec<f64>>,
    /// Per layer, per feed-forward neuron.
    pub neurons: Vec<Vec<f64>>,
}

thread_local! {
    /// The mask gradients being gathered on this thread, if any. A thread-local rather than a
    /// parameter: the task losses that run the backward pass need not know of it.
    static MASK_GRADS: std::cell::RefCell<Option<MaskGrads>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f`, gathering the head and neuron mask gradients of every backward pass it makes on
/// this thread.
pub fn with_mask_grads<R>(f: impl FnOnce() -> R) -> (R, MaskGrads) {
    MASK_GRADS.with(|m| *m.borrow_mut() = Some(MaskGrads::default()));
    let r = f();
    let g = MASK_GRADS
        .with(|m| m.borrow_mut().take())
        .unwrap_or_default();
    (r, g)
}

/// Adds `|Σ_t Σ_{j ∈ group} x[t, j] · dx[t, j]|` for each group of `size` columns of `[t, width]`
/// buffers into `acc` (grown to fit).
fn tap(acc: &mut Vec<f64>, x: &[f32], dx: &[f32], width: usize, size: usize) {
    let groups = width / size;
    acc.resize(groups, 0.0);
    let mut sums = vec![0.0f64; groups];
    for (xr, dr) in x.chunks(width).zip(dx.chunks(width)) {
        for (j, (a, b)) in xr.iter().zip(dr).enumerate() {
            sums[j / size] += (*a as f64) * (*b as f64);
        }
    }
    for (a, s) in acc.iter_mut().zip(sums) {
        *a += s.abs();
    }
}

/// Records a block's mask gradients when [`with_mask_grads`] is gathering them.
fn tap_block(
    layer: usize,
    head_dim: usize,
    tokens: usize,
    ctx: &[f32],
    dctx: &[f32],
    g: &[f32],
    dg: &[f32],
) {
    MASK_GRADS.with(|m| {
        if let Some(mg) = m.borrow_mut().as_mut() {
            if mg.heads.len() <= layer {
                mg.heads.resize(layer + 1, Vec::new());
                mg.neurons.resize(layer + 1, Vec::new());
            }
            let (w, inter) = (ctx.len() / tokens.max(1), g.len() / tokens.max(1));
            tap(&mut mg.heads[layer], ctx, dctx, w, head_dim);
            tap(&mut mg.neurons[layer], g, dg, inter, 1);
        }
    });
}

/// Whether mask gradients are being gathered on this thread.
fn tapping() -> bool {
    MASK_GRADS.with(|m| m.borrow().is_some())
}

/// Backward pass from `dhidden` (gradient of the loss w.r.t. the forward's output);
/// parameter gradients are added into `grads`.
pub fn backward(
    model: &Transformer,
    batch: &Batch,
    mask: MaskKind,
    acts: &Activations,
    dx: Vec<f32>,
    grads: &mut Transformer,
    dropout_seed: Option<u64>,
) -> Result<()> {
    backward_with(
        model,
        batch,
        mask,
        acts,
        dx,
        grads,
        dropout_seed,
        &LayerGrads::default(),
    )
}

/// Gradients that losses on a model's intermediate states (distillation's hidden-state and
/// attention-transfer terms) send into the backward pass, per block (`None`: no term there).
#[derive(Debug, Default)]
pub struct LayerGrads {
    /// Of block `l`'s output ([`Activations::block_output`]), `[tokens, hidden]`.
    pub outputs: Vec<Option<Vec<f32>>>,
    /// Of block `l`'s attention scores (the softmax input), every head's `[l, l]` block in the
    /// [`crate::engine::attention::probs_offsets`] layout.
    pub scores: Vec<Option<Vec<f32>>>,
}

/// [`backward`] with gradients of losses on intermediate states as well: of block outputs and
/// of attention scores (distillation).
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    model: &Transformer,
    batch: &Batch,
    mask: MaskKind,
    acts: &Activations,
    mut dx: Vec<f32>,
    grads: &mut Transformer,
    dropout_seed: Option<u64>,
    layer_grads: &LayerGrads,
) -> Result<()> {
    let drops = Drops::new(model, dropout_seed);
    let cfg = &model.config;
    let (t, h) = (batch.tokens(), cfg.hidden_size);
    let pre = cfg.norm == NormPlacement::Pre;
    if let (Some(n), Some(gn)) = (&model.final_norm, &mut grads.final_norm) {
        dx = ln_back(n, gn, &acts.pre_final, &dx);
    }
    if let (Some(lstm), Some(la)) = (&model.lstm, &acts.lstm) {
        let g = grads
            .lstm
            .as_mut()
            .ok_or_else(|| Error::shape("backward", "gradient buffers lack the LSTM"))?;
        dx = super::lstm::backward(lstm, la, &dx, g, &|s| drops.and_then(|d| d.lstm_out(s)))?;
    }
    for (l, a) in acts.blocks.iter().enumerate().rev() {
        let b = model.layer(l);
        // dx is the gradient of block l's output here (the last block's: past the final norm).
        if let Some(Some(g)) = layer_grads.outputs.get(l) {
            add(&mut dx, g);
        }
        // A shared block's gradients sum over the layers that run it.
        let gb = &mut grads.blocks[cfg.block_of(l)];
        let site = 4 * l as u64;
        // Feed-forward sublayer.
        let dr2 = if pre {
            dx
        } else {
            ln_back(&b.ln_ffn, &mut gb.ln_ffn, &a.r2, &dx)
        };
        let g = activated(&a.u, cfg.activation);
        let mut du = vec![0.0; a.u.len()];
        let mut do2 = match (&b.adapter_ffn, &mut gb.adapter_ffn) {
            (Some(ad), Some(gad)) => ad.backward(gad, &a.ad_ffn_in, &dr2, t)?,
            _ => dr2.clone(),
        };
        drop_inplace(drops.and_then(|d| d.ffn_out(l)), &mut do2);
        lin_back(
            &b.ffn_out,
            &mut gb.ffn_out,
            &g,
            &do2,
            t,
            Some(&mut du),
            dropout_seed,
            site + 3,
        )?;
        // du is ∂L/∂g here, before the activation's derivative: the neuron masks' gradient.
        let dg = if tapping() { du.clone() } else { Vec::new() };
        activation_backward(cfg.activation, &a.u, &mut du);
        let mut df_in = vec![0.0; t * h];
        lin_back(
            &b.ffn_in,
            &mut gb.ffn_in,
            &a.f_in,
            &du,
            t,
            Some(&mut df_in),
            dropout_seed,
            site + 2,
        )?;
        let mut dr1 = if pre {
            let mut d = dr2;
            add(&mut d, &ln_back(&b.ln_ffn, &mut gb.ln_ffn, &a.r1, &df_in));
            d
        } else {
            let mut d = dr2;
            add(&mut d, &df_in);
            ln_back(&b.ln_attn, &mut gb.ln_attn, &a.r1, &d)
        };
        // Attention sublayer: back through the adapter and the output dropout.
        let mut do1 = match (&b.adapter_attn, &mut gb.adapter_attn) {
            (Some(ad), Some(gad)) => ad.backward(gad, &a.ad_attn_in, &dr1, t)?,
            _ => dr1.clone(),
        };
        drop_inplace(drops.and_then(|d| d.attn_out(l)), &mut do1);
        let w = b.attention_width();
        let mut dctx = vec![0.0; t * w];
        lin_back(
            &b.attn_out,
            &mut gb.attn_out,
            &a.ctx,
            &do1,
            t,
            Some(&mut dctx),
            dropout_seed,
            site + 1,
        )?;
        if !dg.is_empty() {
            tap_block(l, cfg.head_dim(), t, &a.ctx, &dctx, &g, &dg);
        }
        let mut dqkv = vec![0.0; t * 3 * w];
        attention_backward(
            &a.qkv,
            &dctx,
            &mut dqkv,
            &batch.seq_lens,
            b.heads(cfg),
            cfg.head_dim(),
            mask,
            batch.key_mask.as_deref(),
            batch.prefix_lens.as_deref(),
            drops.and_then(|d| d.probs(l)),
            layer_grads.scores.get(l).and_then(|g| g.as_deref()),
        )?;
        let mut da_in = vec![0.0; t * h];
        lin_back(
            &b.qkv,
            &mut gb.qkv,
            if pre { &a.a_in } else { &a.x_in },
            &dqkv,
            t,
            Some(&mut da_in),
            dropout_seed,
            site,
        )?;
        if pre {
            add(
                &mut dr1,
                &ln_back(&b.ln_attn, &mut gb.ln_attn, &a.x_in, &da_in),
            );
        } else {
            add(&mut dr1, &da_in);
        }
        dx = dr1;
    }
    let e = &model.embeddings;
    let ge = &mut grads.embeddings;
    let frozen = ge.word.weight.numel() == 0
        && ge.position.numel() == 0
        && ge.token_type.as_ref().is_none_or(|t| t.numel() == 0)
        && ge
            .norm
            .as_ref()
            .is_none_or(|n| n.weight.numel() == 0 && n.bias.numel() == 0)
        && ge.project.as_ref().is_none_or(|p| p.weight.numel() == 0);
    if frozen {
        return Ok(());
    }
    if let (Some(pj), Some(gp)) = (&e.project, &mut ge.project) {
        let mut dxe = vec![0.0; acts.proj_in.len()];
        lin_back(pj, gp, &acts.proj_in, &dx, t, Some(&mut dxe), None, 0)?;
        dx = dxe;
    }
    drop_inplace(drops.and_then(|d| d.embeddings()), &mut dx);
    let w = e.width();
    let de = match (&e.norm, &mut ge.norm) {
        (Some(n), Some(gn)) => ln_back(n, gn, &acts.emb, &dx),
        _ => dx,
    };
    if let Some(g) = non_empty(&mut ge.word.weight) {
        embedding_backward(&batch.ids, &de, w, g);
    }
    if let Some(g) = non_empty(&mut ge.position) {
        embedding_backward(&cfg.position_ids(&batch.positions), &de, w, g);
    }
    if let Some(g) = ge.token_type.as_mut().and_then(non_empty) {
        embedding_backward(&cfg.type_ids(&batch.type_ids), &de, w, g);
    }
    Ok(())
}

/// The rows whose target is not [`IGNORE`] and their targets: the only rows a language-model
/// loss sends through the vocabulary projection.
pub fn counted_rows(targets: &[i64]) -> (Vec<usize>, Vec<i64>) {
    (0..targets.len())
        .filter(|&r| targets[r] != IGNORE)
        .map(|r| (r, targets[r]))
        .unzip()
}

thread_local! {
    /// The vocabulary projection's logits (rows × vocabulary floats), kept from step to step:
    /// the largest buffer of a language-model step, and a fresh one costs a page fault per
    /// 4 KiB on every step. It holds the logits, then (in place) their gradient.
    static LOGITS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Projects `n` rows of `x` onto the vocabulary (`w`, optional bias) into `buf` and turns the
/// logits into the gradient of the mean cross-entropy against `targets` (times `grad_scale`);
/// returns the mean loss and that gradient (a view of `buf`).
#[allow(clippy::too_many_arguments)]
fn project_loss<'a>(
    buf: &'a mut Vec<f32>,
    w: &Tensor,
    bias: Option<&Tensor>,
    x: &[f32],
    n: usize,
    v: usize,
    targets: &[i64],
    grad_scale: f32,
) -> Result<(f32, &'a [f32])> {
    if buf.len() < n * v {
        buf.resize(n * v, 0.0);
    }
    let logits = &mut buf[..n * v];
    linear_forward_once(w, bias, x, n, logits, LinearOut::Write)?;
    let count = targets.iter().filter(|&&t| t != IGNORE).count().max(1);
    let (sum, _) = cross_entropy_in_place(logits, v, targets, IGNORE, grad_scale / count as f32)?;
    Ok(((sum / count as f64) as f32, &buf[..n * v]))
}

/// Masked-LM loss at `positions` (rows of the packed batch) with `targets`, and its
/// gradients (added into `grads`). Only the selected rows go through the vocabulary projection.
/// `grad_scale` multiplies the gradient (e.g. this micro-batch's share of the targets of an
/// accumulated step), not the returned loss. With `dropout_seed` the model is in training mode
/// (dropout on); without, dropout is off (evaluation, parity tests).
pub fn mlm_loss(
    p: &Pretrained,
    batch: &Batch,
    positions: &[usize],
    targets: &[i64],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    if positions.len() != targets.len() {
        return Err(Error::shape("mlm_loss", "one target per position"));
    }
    let v = p.config().vocab_size;
    mlm_loss_with(
        p,
        batch,
        positions,
        grads,
        grad_scale,
        dropout_seed,
        &|logits, scale| {
            let count = targets.iter().filter(|&&t| t != IGNORE).count().max(1);
            let (sum, _) =
                cross_entropy_in_place(logits, v, targets, IGNORE, scale / count as f32)?;
            Ok((sum / count as f64) as f32)
        },
        None,
    )
}

/// A loss over a `[rows, vocabulary]` logit buffer that overwrites the logits with its
/// gradient times the given scale and returns the mean loss: the vocabulary-sized rows get no
/// twin buffer (the largest of a masked-LM step).
pub type InPlaceLoss<'a> = &'a dyn Fn(&mut [f32], f32) -> Result<f32>;

/// The masked-LM head's forward and backward at `positions` around `criterion`, which turns
/// the logits into the loss and its gradient in place (see [`InPlaceLoss`]): the gold-token
/// cross-entropy of pre-training, or distillation's soft targets.
#[allow(clippy::too_many_arguments)]
pub fn mlm_loss_with(
    p: &Pretrained,
    batch: &Batch,
    positions: &[usize],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
    criterion: InPlaceLoss,
    states: Option<crate::train::finetune::HiddenTerm>,
) -> Result<f32> {
    let head = p
        .mlm_head
        .as_ref()
        .ok_or_else(|| Error::Input("the model has no masked-LM head".into()))?;
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let (hidden_loss, layer_grads) =
        crate::train::finetune::hidden_term(states, &acts, grad_scale)?;
    let (h, v, n) = (
        p.config().hidden_size,
        p.config().vocab_size,
        positions.len(),
    );
    let hs: Vec<f32> = positions
        .iter()
        .flat_map(|&r| hidden[r * h..(r + 1) * h].to_vec())
        .collect();
    // The transform maps to the tables' width (ELECTRA's generator: embedding_size).
    let ew = head.transform.out_features();
    let mut u = vec![0.0; n * ew];
    lin_fwd(&head.transform, &hs, n, &mut u, None, 0)?;
    let a = activated(&u, head.activation);
    let nrm = ln_fwd(&head.norm, &a);
    let word = p.model.embeddings.word.f32_weight();
    let dec = head.decoder.as_ref().unwrap_or(&word);
    let mut buf = LOGITS.with(|b| b.take());
    if buf.len() < n * v {
        buf.resize(n * v, 0.0);
    }
    linear_forward_once(
        dec,
        Some(&head.bias),
        &nrm,
        n,
        &mut buf[..n * v],
        LinearOut::Write,
    )?;
    let loss = criterion(&mut buf[..n * v], grad_scale)?;
    let dlogits = &buf[..n * v];

    let gh = grads
        .mlm_head
        .as_mut()
        .ok_or_else(|| Error::Input("gradient buffers lack the MLM head".into()))?;
    let mut dnrm = vec![0.0; n * ew];
    let dw = match &mut gh.decoder {
        Some(d) => non_empty(d),
        None => non_empty(&mut grads.model.embeddings.word.weight),
    };
    linear_backward(
        &nrm,
        dec,
        dlogits,
        n,
        Some(&mut dnrm),
        dw,
        non_empty(&mut gh.bias),
    )?;
    LOGITS.with(|b| b.replace(buf));
    let mut du = ln_back(&head.norm, &mut gh.norm, &a, &dnrm);
    activation_backward(head.activation, &u, &mut du);
    let mut dhs = vec![0.0; n * h];
    lin_back(
        &head.transform,
        &mut gh.transform,
        &hs,
        &du,
        n,
        Some(&mut dhs),
        None,
        0,
    )?;
    let dhidden = scatter_rows(&dhs, positions, h, hidden.len());
    backward_with(
        &p.model,
        batch,
        mask,
        &acts,
        dhidden,
        &mut grads.model,
        dropout_seed,
        &layer_grads,
    )?;
    Ok(loss + hidden_loss)
}

/// Targets of the causal-LM objective: each token predicts the next one within its sequence.
pub fn clm_targets(batch: &Batch) -> Vec<i64> {
    let mut targets = vec![IGNORE; batch.tokens()];
    for (&o, &l) in batch.offsets().iter().zip(&batch.seq_lens) {
        for i in 0..l.saturating_sub(1) {
            targets[o + i] = batch.ids[o + i + 1] as i64;
        }
    }
    targets
}

/// The gradient buffer of the language-model head's output matrix: its own, or (tied) the word
/// embeddings'; `None` when frozen.
fn lm_weight_grad(grads: &mut Pretrained) -> Option<&mut [f32]> {
    match grads.lm_head.as_mut().and_then(|h| h.weight.as_mut()) {
        Some(g) => non_empty(g),
        None => non_empty(&mut grads.model.embeddings.word.weight),
    }
}

/// Targets of the backward language model: each token predicts the previous one within its
/// sequence.
pub fn previous_targets(batch: &Batch) -> Vec<i64> {
    let mut targets = vec![IGNORE; batch.tokens()];
    for (&o, &l) in batch.offsets().iter().zip(&batch.seq_lens) {
        for i in 1..l {
            targets[o + i] = batch.ids[o + i - 1] as i64;
        }
    }
    targets
}

/// One direction's mean loss and its number of targets.
type DirectionLoss = (f32, usize);

/// The bidirectional LSTM's two language models, each over the vocabulary through the tied
/// embeddings: the forward stack's states predict the next token, the backward stack's the
/// previous one. Returns, per direction, the mean loss and its number of targets. With `grad`
/// (a scale and the output matrix's gradient buffer), also the gradient of the whole output
/// `[T, 2P]` (scaled by `scale / 2`), adding the output matrix's gradient into the buffer;
/// without (evaluation), no backward product is computed and the gradient is empty.
fn bilm_terms(
    p: &Pretrained,
    batch: &Batch,
    hidden: &[f32],
    grad: Option<(f32, Option<&mut [f32]>)>,
) -> Result<([DirectionLoss; 2], Vec<f32>)> {
    let proj = match &p.config().lstm {
        Some(s) if s.bidirectional => s.proj,
        _ => {
            return Err(Error::Input(
                "--objective bilm trains a bidirectional kiln_lstm model (`kiln init --arch lstm --bidirectional`)".into(),
            ))
        }
    };
    let head = p
        .lm_head
        .as_ref()
        .ok_or_else(|| Error::Input("the model has no language-model head".into()))?;
    let v = p.config().vocab_size;
    let word = p.model.embeddings.word.f32_weight();
    let w = head.weight.as_ref().unwrap_or(&word);
    let width = 2 * proj;
    let (scale, mut gw) = match grad {
        Some((scale, gw)) => (scale, Some(gw)),
        None => (1.0, None),
    };
    let mut dhidden = vec![0.0f32; if gw.is_some() { hidden.len() } else { 0 }];
    let mut losses = [(0.0f32, 0usize); 2];
    let mut buf = LOGITS.with(|b| b.take());
    for (d, targets) in [clm_targets(batch), previous_targets(batch)]
        .into_iter()
        .enumerate()
    {
        let (rows, kept) = counted_rows(&targets);
        let n = rows.len();
        let col = |r: usize| r * width + d * proj..r * width + (d + 1) * proj;
        let hs: Vec<f32> = rows
            .iter()
            .flat_map(|&r| hidden[col(r)].iter().copied())
            .collect();
        let (loss, dlogits) = project_loss(&mut buf, w, None, &hs, n, v, &kept, scale / 2.0)?;
        losses[d] = (loss, n);
        let Some(gw) = gw.as_mut() else { continue };
        let mut dhs = vec![0.0f32; n * proj];
        linear_backward(&hs, w, dlogits, n, Some(&mut dhs), gw.as_deref_mut(), None)?;
        for (k, &r) in rows.iter().enumerate() {
            dhidden[col(r)].copy_from_slice(&dhs[k * proj..(k + 1) * proj]);
        }
    }
    LOGITS.with(|b| b.replace(buf));
    Ok((losses, dhidden))
}

/// ELMo's objective for a bidirectional LSTM: the mean of the forward LM's next-token loss and
/// the backward LM's previous-token loss (each a mean over its targets), and its gradients
/// (scaled by `grad_scale`). Returns the combined loss and the two directions'.
pub fn bilm_loss(
    p: &Pretrained,
    batch: &Batch,
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<(f32, [f32; 2])> {
    let mask = MaskKind::Bidirectional;
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let gw = lm_weight_grad(grads);
    let ([(f, _), (b, _)], dhidden) = bilm_terms(p, batch, &hidden, Some((grad_scale, gw)))?;
    backward(
        &p.model,
        batch,
        mask,
        &acts,
        dhidden,
        &mut grads.model,
        dropout_seed,
    )?;
    Ok(((f + b) / 2.0, [f, b]))
}

/// The bidirectional LM's summed losses and target count per direction on `batch` (no
/// gradients, dropout off): what held-out evaluation adds up.
pub fn bilm_eval(p: &Pretrained, batch: &Batch) -> Result<[(f64, usize); 2]> {
    let hidden = p.model.forward(batch, MaskKind::Bidirectional, None)?;
    let (losses, _) = bilm_terms(p, batch, hidden.data(), None)?;
    Ok(losses.map(|(loss, n)| (loss as f64 * n as f64, n)))
}

/// Causal-LM loss and its gradients (scaled by `grad_scale`).
pub fn clm_loss(
    p: &Pretrained,
    batch: &Batch,
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    lm_loss(
        p,
        batch,
        &clm_targets(batch),
        grads,
        grad_scale,
        dropout_seed,
    )
}

/// Next-token loss at the positions whose target is not [`IGNORE`] (mean over them) and its
/// gradients (scaled by `grad_scale`): a causal LM trained on every token, or on a target
/// sequence after a source (sequence generation). Only those rows go through the vocabulary
/// projection.
pub fn lm_loss(
    p: &Pretrained,
    batch: &Batch,
    targets: &[i64],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    let head = p
        .lm_head
        .as_ref()
        .ok_or_else(|| Error::Input("the model has no causal-LM head".into()))?;
    if targets.len() != batch.tokens() {
        return Err(Error::shape("lm_loss", "one target per token"));
    }
    if p.config().lstm.as_ref().is_some_and(|l| l.bidirectional) {
        return Err(Error::Input(
            "a bidirectional LSTM's backward stack would see the tokens it predicts; train its language models with --objective bilm".into(),
        ));
    }
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let (h, v) = (p.config().hidden_size, p.config().vocab_size);
    let (rows, kept) = counted_rows(targets);
    let n = rows.len();
    // Every row (no copy), or the gathered target rows.
    let hs: std::borrow::Cow<[f32]> = if n == batch.tokens() {
        (&hidden[..]).into()
    } else {
        rows.iter()
            .flat_map(|&r| hidden[r * h..(r + 1) * h].iter().copied())
            .collect::<Vec<f32>>()
            .into()
    };
    let word = p.model.embeddings.word.f32_weight();
    let w = head.weight.as_ref().unwrap_or(&word);
    let mut buf = LOGITS.with(|b| b.take());
    let (loss, dlogits) = project_loss(&mut buf, w, None, &hs, n, v, &kept, grad_scale)?;
    let mut dhs = vec![0.0; n * h];
    let gw = lm_weight_grad(grads);
    linear_backward(&hs, w, dlogits, n, Some(&mut dhs), gw, None)?;
    LOGITS.with(|b| b.replace(buf));
    let dhidden = if n == batch.tokens() {
        dhs
    } else {
        scatter_rows(&dhs, &rows, h, hidden.len())
    };
    backward(
        &p.model,
        batch,
        mask,
        &acts,
        dhidden,
        &mut grads.model,
        dropout_seed,
    )?;
    Ok(loss)
}

/// The summed binary cross-entropy of `logits` against `labels` (0 or 1), computed stably as
/// `max(x, 0) − x·y + ln(1 + e^(−|x|))`, in f64.
pub(crate) fn bce_sum(logits: &[f32], labels: &[f32]) -> f64 {
    logits
        .iter()
        .zip(labels)
        .map(|(&x, &y)| (x.max(0.0) - x * y) as f64 + (-x.abs()).exp().ln_1p() as f64)
        .sum()
}

/// Replaced-token detection (ELECTRA's discriminator): binary cross-entropy with logits of
/// every token of `batch` against `labels` (1 replaced, 0 original), the mean over the tokens,
/// as `ElectraForPreTraining` computes it over the attended positions; its gradients (times
/// `grad_scale`) are added into `grads`. Returns the mean loss and the logits, one per token.
pub fn rtd_loss(
    p: &Pretrained,
    batch: &Batch,
    labels: &[f32],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<(f32, Vec<f32>)> {
    let head = p.rtd_head.as_ref().ok_or_else(|| {
        Error::Input(
            "the model has no replaced-token-detection head (an ELECTRA discriminator)".into(),
        )
    })?;
    let n = batch.tokens();
    if labels.len() != n {
        return Err(Error::shape("rtd_loss", "one label per token"));
    }
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let h = p.config().hidden_size;
    let mut u = vec![0.0; n * h];
    lin_fwd(&head.dense, &hidden, n, &mut u, None, 0)?;
    let a = activated(&u, head.activation);
    let mut logits = vec![0.0; n];
    lin_fwd(&head.prediction, &a, n, &mut logits, None, 0)?;
    // The derivative of the binary cross-entropy: σ(x) − y.
    let sum = bce_sum(&logits, labels);
    let scale = grad_scale / n.max(1) as f32;
    let dlogits: Vec<f32> = logits
        .iter()
        .zip(labels)
        .map(|(&x, &y)| (1.0 / (1.0 + (-x).exp()) - y) * scale)
        .collect();
    let g = grads
        .rtd_head
        .as_mut()
        .ok_or_else(|| Error::Input("gradient buffers lack the discriminator head".into()))?;
    let mut da = vec![0.0; n * h];
    lin_back(
        &head.prediction,
        &mut g.prediction,
        &a,
        &dlogits,
        n,
        Some(&mut da),
        None,
        0,
    )?;
    activation_backward(head.activation, &u, &mut da);
    let mut dhidden = vec![0.0; n * h];
    lin_back(
        &head.dense,
        &mut g.dense,
        &hidden,
        &da,
        n,
        Some(&mut dhidden),
        None,
        0,
    )?;
    backward(
        &p.model,
        batch,
        mask,
        &acts,
        dhidden,
        &mut grads.model,
        dropout_seed,
    )?;
    Ok(((sum / n.max(1) as f64) as f32, logits))
}
