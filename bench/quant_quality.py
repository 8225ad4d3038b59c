#!/usr/bin/env python3
"""Quality of int8 quantization, Kiln int8 vs ONNX Runtime quantize_dynamic int8 of the same
model, on validation splits.

For each task named on the command line (default: all four), one fine-tuned fp32 model is scored
four ways on the same validation examples:
  Kiln fp32   `kiln eval --json` on the model directory;
  Kiln int8   `kiln quantize --calibration CALIB` (300 lines of the task's training split), then
              `kiln eval --json` on the int8 directory;
  ORT fp32    the model exported with torch.onnx.export (dynamo, falling back to the TorchScript
              exporter at opset 17), run by ONNX Runtime, scored by this script;
  ORT int8    that export through onnxruntime.quantization.quant_pre_process and
              quantize_dynamic(per_channel=True, weight_type=QInt8), scored the same way.
The ORT fp32 figures must agree with Kiln fp32 (within 0.2 points; perplexity within 0.2 %): that
is the check that the Python scoring reproduces Kiln's metric definitions, so the int8 drops of the
two sides are comparable.

Tasks (models default to the `kiln tour` directories in /tmp/kiln-tour; data under ../shared/data):
  sst2   BertForSequenceClassification, sst2/validation.jsonl: accuracy, macro-F1
  ner    BertForTokenClassification, conll2003/validation.jsonl (tag field ner): entity F1,
         precision, recall (seqeval default mode, micro average), token accuracy
  squad  BertForQuestionAnswering, squad_v1.1/validation.jsonl.gz: exact match, F1 (SQuAD v1.1)
  gpt    GPT2LMHeadModel, corpora/en_gutenberg/validation.jsonl.gz: perplexity of the first
         --sequences packed sequences of 128 tokens, as `kiln pretrain` evaluates it: Kiln's
         sides by `kiln eval --task lm --seq-len 128 --eval-sequences N`, the int8 model
         calibrated on 300 Gutenberg training paragraphs. With a kiln binary older than
         `eval --task lm`, Kiln fp32 comes from a `kiln pretrain` run of one step at lr 1e-30
         (weights unchanged) that evaluates, and Kiln int8 is left empty (pretrain refuses int8
         models). transformers' GPT2LMHeadModel (PyTorch fp32) is scored too.

How the Python side scores (each as Kiln does; see crates/kiln/src/train/{classify,tag,qa}.rs,
infer/qa.rs, metrics/, data/pack.rs):
  sst2   the model's tokenizer, max length 128 (truncation), arg-max class; accuracy and macro-F1
         over the classes present.
  ner    words encoded with is_split_into_words, max length 128; a sentence longer than that is
         read in Kiln's overlapping word windows and merged as Kiln merges them. A word's tag is
         the arg-max at its first piece. Entities as seqeval's default (conlleval) mode, micro
         average; token accuracy over words.
  squad  [CLS] question [SEP] context-window [SEP]: the question cut to 64 tokens, windows of
         384 tokens sharing 128 context tokens (run_qa.py's windows); n-best 20 starts and ends
         per window, spans inside the context with start <= end and at most 30 tokens, the best
         start+end logit over all windows; official SQuAD v1.1 normalization, EM/F1 best over
         the gold answers.
  gpt    every JSONL text encoded without special tokens, followed by <|endoftext|>, the stream
         cut into sequences of 128; perplexity = exp(mean next-token cross-entropy over the 127
         predicted positions of every sequence).
What each int8 covers:
  Kiln  the blocks' linear layers int8 per output channel (SmoothQuant where the calibration
        says it helps), their activations u8 per token row at run time, the word embeddings
        int8 per row (a tied LM head through the int8 kernel); position/segment embeddings,
        LayerNorms, attention products, pooler and task heads stay fp32.
  ORT   every MatMul with a constant weight int8 per output column (the blocks, and also the
        pooler, the task head and the tied LM head), activations u8 per tensor
        (DynamicQuantizeLinear), and every embedding table (word, position, token type) int8
        per tensor; attention products stay fp32. The graph's op counts are printed.
The losses Kiln's eval prints (sst2, ner, squad) are computed on the ORT side too and printed as a
finer check. ORT runs batches of 32 sorted by length (padded, with the attention mask), 2
intra-op threads; note that quantize_dynamic quantizes activations per tensor (DynamicQuantizeLinear
over the whole batch), so its int8 figures depend slightly on the batching, where Kiln's per-row
activation scales do not.

Usage (from the repository root, after `cargo build --release` and ../shared/reference/setup-python.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/quant_quality.py [sst2 ner squad gpt]
        [--max-examples N] [--sequences 256] [--record] [--kiln target/release/kiln]
        [--sst2-model DIR] [--ner-model DIR] [--squad-model DIR] [--gpt-model DIR]
        [--data ../shared/data] [--calibration-lines 300] [--onnx-cache DIR] [--keep]
--max-examples N scores the first N validation examples (sst2, ner, squad) instead of all;
--record appends one JSON line per task to bench/results/quant_quality.jsonl.
Exit status: 0 all sanity checks passed; 1 ORT fp32 disagrees with Kiln fp32 (or a run failed);
2 setup error (wrong package versions, no kiln binary, missing model or data).
"""

import argparse
import collections
import contextlib
import datetime
import gzip
import json
import math
import os
import platform
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from benchcommon import RunError, SetupError, check_versions, cpu_model

PINNED = {
    "torch": "2.15.0",
    "transformers": "5.24.0",
    "onnxruntime": "1.32.0",
    "onnx": "1.23.2",
    "onnxscript": "0.7.2",
    "numpy": "2.4.6",
}

THREADS = 2
BATCH_SIZE = 32
GPT_BATCH = 16          # kiln pretrain's default batch size; its evaluation runs in these batches
SEQ_LEN = 128
MAX_LENGTH = 128        # kiln eval's default for classify and tag
QA_MAX_LENGTH = 384
QA_DOC_STRIDE = 128
QA_MAX_QUESTION = 64    # Kiln cuts questions to 64 tokens (BERT's max_query_length)
QA_N_BEST = 20
QA_MAX_ANSWER = 30
# ORT fp32 vs Kiln fp32: the same fp32 model, so anything larger is a different computation.
SANITY_POINTS = 0.2
SANITY_PPL_REL = 0.002

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results" / "quant_quality.jsonl"
TOUR = Path("/tmp/kiln-tour")
SETUP_HINT = (
    f"run {SHARED / 'reference' / 'setup-python.sh'} and use its venv: "
    "~/.cache/kiln-ref-venv/bin/python bench/quant_quality.py"
)
TASKS = ("sst2", "ner", "squad", "gpt")
METRICS = {
    "sst2": ["accuracy", "macro_f1"],
    "ner": ["f1", "precision", "recall", "token_accuracy"],
    "squad": ["exact_match", "f1"],
    "gpt": ["perplexity"],
}

KILN_ENV = dict(os.environ)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="*", default=list(TASKS),
                   help=f"tasks to run, any of {' '.join(TASKS)} (default: all)")
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln")
    p.add_argument("--data", type=Path, default=SHARED / "data", help="the shared data folder")
    p.add_argument("--sst2-model", type=Path, default=TOUR / "sst2")
    p.add_argument("--ner-model", type=Path, default=TOUR / "ner")
    p.add_argument("--squad-model", type=Path, default=TOUR / "squad")
    p.add_argument("--gpt-model", type=Path, default=TOUR / "gpt-mini-pt")
    p.add_argument("--max-examples", type=int, default=None,
                   help="score the first N validation examples (sst2, ner, squad); default all")
    p.add_argument("--sequences", type=int, default=256,
                   help="gpt: packed sequences of 128 tokens scored (default 256)")
    p.add_argument("--calibration-lines", type=int, default=300,
                   help="lines of training text for `kiln quantize --calibration`")
    p.add_argument("--onnx-cache", type=Path,
                   default=Path(tempfile.gettempdir()) / "bench-quant-quality-onnx",
                   help="where ONNX exports (fp32 and int8) are kept between runs")
    p.add_argument("--keep", action="store_true", help="keep the work folder (temp data, int8 models)")
    p.add_argument("--record", action="store_true",
                   help=f"append one JSON line per task to {RESULTS.relative_to(REPO)}")
    args = p.parse_args()
    bad = [t for t in args.tasks if t not in TASKS]
    if bad or not args.tasks:
        p.error(f"unknown task(s) {' '.join(bad)}; choose from {' '.join(TASKS)}")
    args.tasks = list(dict.fromkeys(args.tasks))
    args.onnx_cache = args.onnx_cache.resolve()
    if args.max_examples is not None and args.max_examples < 1:
        p.error("--max-examples must be positive")
    if args.sequences < 1 or args.calibration_lines < 1:
        p.error("--sequences and --calibration-lines must be positive")
    return args


def one_line(text):
    return " ".join(text.split())


def read_jsonl(path, limit=None):
    opener = gzip.open if str(path).endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            out.append(json.loads(line))
            if limit is not None and len(out) == limit:
                break
    return out


def timed(fn, *a, **kw):
    start = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Kiln


class Kiln:
    def __init__(self, binary):
        self.binary = binary
        if not os.access(binary, os.X_OK):
            raise SetupError(f"no kiln binary at {binary}: run `cargo build --release` or pass --kiln")
        probe = subprocess.run([str(binary), "quantize", "--help"], capture_output=True, text=True,
                               env=KILN_ENV)
        if probe.returncode != 0 or "--calibration" not in probe.stdout:
            raise SetupError(f"`{binary} quantize --help` does not offer --calibration; rebuild kiln")
        ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=KILN_ENV)
        self.version = ver.stdout.strip() or "unknown"
        probe = subprocess.run([str(binary), "eval", "--help"], capture_output=True, text=True,
                               env=KILN_ENV)
        # `kiln eval --task lm`: a language model's perplexity on a corpus, f32 and int8 alike.
        self.lm_eval = "--eval-sequences" in probe.stdout
        self.commands = []

    def run(self, args):
        cmd = [str(self.binary)] + [str(a) for a in args] + ["--threads", str(THREADS)]
        self.commands.append(" ".join(cmd))
        print("  $ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV)
        if proc.returncode != 0:
            raise RunError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def eval(self, model, data, extra=()):
        out = self.run(["eval", "--model", model, "--data", data, "--json", *extra])
        lines = [l for l in out.splitlines() if l.strip().startswith("{")]
        if not lines:
            raise RunError(f"kiln eval printed no JSON object:\n{out[-2000:]}")
        return json.loads(lines[-1])

    def quantize(self, model, out, calibration):
        if out.exists():
            shutil.rmtree(out)
        log = self.run(["quantize", "--model", model, "--out", out, "--calibration", calibration])
        return log

    def lm_perplexity(self, model, corpus, sequences):
        """`kiln eval --task lm`: held-out perplexity on the first `sequences` packed sequences."""
        m = self.eval(model, corpus, ["--task", "lm", "--seq-len", SEQ_LEN,
                                      "--eval-sequences", sequences])
        return {"perplexity": m["perplexity"], "loss": m.get("valid_loss", m.get("loss")),
                "examples": m.get("sequences")}

    def clm_perplexity(self, model, corpus, sequences, out):
        """Held-out perplexity of an fp32 causal LM as `kiln pretrain` evaluates it: one step at
        lr 1e-30 (an AdamW update of ~1e-30 leaves every f32 weight as it is), evaluated after it
        on the first `sequences` packed sequences of `corpus`."""
        self.run(["pretrain", "--model", model, "--out", out, "--objective", "clm",
                  "--corpus", corpus, "--valid", corpus, "--max-steps", "1", "--lr", "1e-30",
                  "--warmup-steps", "0", "--weight-decay", "0", "--eval-every", "1",
                  "--seq-len", SEQ_LEN, "--eval-sequences", sequences, "--batch-size", GPT_BATCH,
                  "--shuffle-buffer", "0", "--save-every", "0", "--save-minutes", "0",
                  "--log-every", "1", "--overwrite"])
        ppl = None
        with open(Path(out) / "metrics.jsonl", encoding="utf-8") as f:
            for line in f:
                m = json.loads(line)
                if "perplexity" in m:
                    ppl = m
        if ppl is None:
            raise RunError(f"kiln pretrain wrote no perplexity into {out}/metrics.jsonl")
        return {"perplexity": ppl["perplexity"], "loss": ppl["valid_loss"], "examples": None}


# ---------------------------------------------------------------------------------------------
# ONNX export, quantization and sessions


class LogitsOnly:
    """torch module wrappers returning plain logits tensors (no ModelOutput, no cache)."""

    @staticmethod
    def make(model, task):
        import torch

        class Bert(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                out = self.m(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)
                if task == "squad":
                    return out.start_logits, out.end_logits
                return out.logits

        class Gpt(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).logits

        return Gpt(model) if task == "gpt" else Bert(model)


def load_torch_model(task, model_dir):
    import transformers as tf

    cls = {"sst2": tf.AutoModelForSequenceClassification, "ner": tf.AutoModelForTokenClassification,
           "squad": tf.AutoModelForQuestionAnswering, "gpt": tf.AutoModelForCausalLM}[task]
    return cls.from_pretrained(str(model_dir)).eval()


def input_names(task):
    return ["input_ids", "attention_mask"] if task == "gpt" else \
        ["input_ids", "attention_mask", "token_type_ids"]


def output_names(task):
    return ["start_logits", "end_logits"] if task == "squad" else ["logits"]


def export_onnx(task, model_dir, cache_dir):
    """fp32 ONNX export of the task model, once per (weights, torch version)."""
    import torch

    weights = model_dir / "model.safetensors"
    st = weights.stat()
    tag = f"{task}-{model_dir.name}-{st.st_size}-{int(st.st_mtime)}-torch{torch.__version__.split('+')[0]}"
    path = cache_dir / f"{tag}.onnx"
    marker = path.with_suffix(".exporter")
    if path.exists() and marker.exists():
        return path, marker.read_text().strip()
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = LogitsOnly.make(load_torch_model(task, model_dir), task).eval()
    names = input_names(task)
    ids = torch.randint(100, 1000, (2, 16))
    example = (ids, torch.ones_like(ids)) + (() if task == "gpt" else (torch.zeros_like(ids),))
    tmp = path.with_suffix(".onnx.partial")
    print(f"  exporting {model_dir} to ONNX -> {path}", flush=True)
    try:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        torch.onnx.export(model, example, str(tmp), input_names=names, output_names=output_names(task),
                          dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                          dynamo=True, external_data=False)
        exporter = "torch.onnx.export(dynamo=True)"
    except Exception as e:  # the TorchScript exporter is the documented fallback
        print(f"  dynamo export failed ({type(e).__name__}: {str(e)[:300]}); retrying with dynamo=False",
              flush=True)
        torch.onnx.export(model, example, str(tmp), input_names=names, output_names=output_names(task),
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
                          dynamo=False, opset_version=17)
        exporter = "torch.onnx.export(dynamo=False, opset 17)"
    os.replace(tmp, path)
    marker.write_text(exporter + "\n")
    return path, exporter


def quantize_onnx(fp32_path):
    """quant_pre_process (shape inference + graph optimization) then quantize_dynamic, per-channel
    int8 weights; once per (export, onnxruntime version). Returns (path, how, node counts).
    The pre-processing matters for GPT-2: it folds the transpose of the tied embedding into an
    initializer, so the LM head's MatMul is quantized too (as Kiln quantizes a tied head); for the
    BERT exports it changes nothing that is quantized. Symbolic shape inference fails on the
    BERT exports; ONNX shape inference (skip_symbolic_shape) is the documented fallback."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = fp32_path.with_name(fp32_path.stem + f"-ort{onnxruntime.__version__}-int8.onnx")
    marker = path.with_suffix(".how")
    # When symbolic shape inference fails, onnxruntime saves its partial model as
    # sym_shape_infer_temp.onnx (+ external data) in the working directory: run it in a scratch
    # folder, never in the repository.
    with tempfile.TemporaryDirectory(prefix="bench-quant-quality-ort-") as scratch, \
            contextlib.chdir(scratch):
        if not (path.exists() and marker.exists()):
            pre = Path(scratch) / "pre.onnx"
            how = None
            for kw, desc in (({}, "quant_pre_process"),
                             ({"skip_symbolic_shape": True}, "quant_pre_process(skip_symbolic_shape)")):
                try:
                    quant_pre_process(str(fp32_path), str(pre), **kw)
                    how = desc
                    break
                except Exception as e:
                    print(f"  {desc} failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
            src = pre if how else fp32_path
            how = (how or "no pre-processing") + " + quantize_dynamic(per_channel=True, weight_type=QInt8)"
            tmp = path.with_suffix(".partial.onnx")
            quantize_dynamic(str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
            os.replace(tmp, path)
            marker.write_text(how + "\n")
    how = marker.read_text().strip()
    ops = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    counts = {k: ops[k] for k in ("MatMulInteger", "MatMul", "Gemm", "DynamicQuantizeLinear",
                                  "DequantizeLinear", "Gather") if ops.get(k)}
    return path, how, counts


class OrtModel:
    def __init__(self, path, task):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.task = task

    def __call__(self, feeds):
        out = self.session.run(None, {k: feeds[k] for k in self.inputs})
        return out if self.task == "squad" else out[0]


class TorchModel:
    def __init__(self, model_dir, task):
        import torch

        self.torch = torch
        self.model = LogitsOnly.make(load_torch_model(task, model_dir), task).eval()
        self.task = task

    def __call__(self, feeds):
        t = self.torch
        with t.inference_mode():
            args = [t.from_numpy(feeds[n]) for n in input_names(self.task)]
            out = self.model(*args)
        return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()


def padded_batches(seqs, type_ids=None):
    """Yields (indices, feeds) over batches of BATCH_SIZE sequences sorted longest first, padded
    with 0 and masked."""
    import numpy as np

    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    for k in range(0, len(order), BATCH_SIZE):
        idx = order[k:k + BATCH_SIZE]
        width = max(len(seqs[i]) for i in idx)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for r, i in enumerate(idx):
            n = len(seqs[i])
            ids[r, :n] = seqs[i]
            mask[r, :n] = 1
            if type_ids is not None:
                types[r, :n] = type_ids[i]
        yield idx, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def log_softmax(x):
    import numpy as np

    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# sst2: accuracy and macro-F1 (metrics/classification.rs)


def macro_f1(pred, gold, n_classes):
    n = max([n_classes] + [x + 1 for x in pred + gold])
    tp, fp, fn = [0] * n, [0] * n, [0] * n
    for p, g in zip(pred, gold):
        if p == g:
            tp[p] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    scores = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) for c in range(n) if tp[c] + fp[c] + fn[c]]
    return sum(scores) / len(scores) if scores else 0.0


class Sst2:
    def __init__(self, records, tokenizer, config, labels_file):
        names = json.loads(labels_file.read_text())
        names = names["label"] if isinstance(names, dict) else names
        label2id = {v: int(k) for k, v in config.id2label.items()}
        self.gold = [label2id[names[r["label"]]] for r in records]
        self.n_classes = len(config.id2label)
        enc = tokenizer([r["text"] for r in records], truncation=True, max_length=MAX_LENGTH)
        self.ids = enc["input_ids"]
        self.types = enc["token_type_ids"]

    def score(self, model):
        import numpy as np

        pred = [0] * len(self.ids)
        loss = 0.0
        for idx, feeds in padded_batches(self.ids, self.types):
            logits = model(feeds)
            lp = log_softmax(logits)
            for r, i in enumerate(idx):
                pred[i] = int(np.argmax(logits[r]))
                loss -= lp[r, self.gold[i]]
        right = sum(p == g for p, g in zip(pred, self.gold))
        return {"accuracy": 100 * right / len(self.gold),
                "macro_f1": 100 * macro_f1(pred, self.gold, self.n_classes),
                "loss": loss / len(self.gold), "examples": len(self.gold)}


# ---------------------------------------------------------------------------------------------
# ner: windows, first-piece tags, seqeval default mode (train/tag.rs, metrics/sequence_labeling.rs)


def split_tag(tag):
    if tag == "O" or not tag:
        return "O", ""
    m = re.match(r"^(.)[-_](.*)$", tag, re.S)
    if m:
        return m.group(1), m.group(2)
    return "I", tag


def _ends(prev, tag, prev_type, ty):
    return (prev in "ES" or (prev, tag) in {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"),
                                            ("I", "S"), ("I", "O")}) or (prev != "O" and prev_type != ty)


def _starts(prev, tag, prev_type, ty):
    return (tag in "BS" or (prev, tag) in {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"),
                                           ("O", "E"), ("O", "I")}) or (tag != "O" and prev_type != ty)


def entities(sentences):
    out, pos = [], 0
    for sent in sentences:
        prev, prev_type, begin = "O", "", 0
        for i, (tag, ty) in enumerate([split_tag(t) for t in sent] + [("O", "")]):
            if _ends(prev, tag, prev_type, ty) and prev != "O":
                out.append((prev_type, pos + begin, pos + i - 1))
            if _starts(prev, tag, prev_type, ty):
                begin = i
            prev, prev_type = tag, ty
        pos += len(sent) + 1
    return out


def entity_prf(gold, pred):
    g, p = set(entities(gold)), set(entities(pred))
    tp = len(g & p)
    precision = tp / len(p) if p else 0.0
    recall = tp / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def word_windows(word_ids, words, max_len):
    """Kiln's windows of whole words (train/tag.rs word_windows)."""
    pieces = [0] * words
    for w in word_ids:
        if w is not None:
            pieces[w] += 1
    specials = sum(w is None for w in word_ids)
    budget = max(max_len - specials, 1)
    out, a = [], 0
    while a < words:
        b, used = a, 0
        while b < words and used + pieces[b] <= budget:
            used += pieces[b]
            b += 1
        b = max(b, a + 1)
        out.append((a, b))
        if b >= words:
            break
        nxt, tail = b, 0
        while nxt - 1 > a and (nxt == b or tail + pieces[nxt - 1] <= budget // 2):
            tail += pieces[nxt - 1]
            nxt -= 1
        a = nxt
    return out


class Ner:
    def __init__(self, records, tokenizer, config, tag_field="ner"):
        self.names = [config.id2label[i] for i in range(len(config.id2label))]
        label2id = {n: i for i, n in enumerate(self.names)}
        self.fallback = label2id.get("O", 0)
        self.gold = [[label2id[t] for t in r[tag_field]] for r in records]
        self.windows = []  # (sentence, first_word, words, ids, word_ids, targets)
        self.long_sentences = 0
        for s, r in enumerate(records):
            words = r["tokens"]
            full = tokenizer(words, is_split_into_words=True, truncation=False)
            spans = word_windows(full.word_ids(), len(words), MAX_LENGTH)
            self.long_sentences += len(spans) > 1
            for a, b in spans:
                enc = tokenizer(words[a:b], is_split_into_words=True, truncation=True,
                                max_length=MAX_LENGTH)
                wids = enc.word_ids()
                targets, prev = [-100] * len(wids), None
                for t, w in enumerate(wids):
                    if w is not None and w != prev:
                        targets[t] = self.gold[s][a + w]
                    prev = w
                self.windows.append((s, a, b - a, enc["input_ids"], wids, targets))

    def score(self, model):
        import numpy as np

        labels = [None] * len(self.windows)
        loss, count = 0.0, 0
        for idx, feeds in padded_batches([w[3] for w in self.windows]):
            logits = model(feeds)
            lp = log_softmax(logits)
            for r, i in enumerate(idx):
                _, _, words, ids, wids, targets = self.windows[i]
                out = [None] * words
                for t, w in enumerate(wids):
                    if w is not None and w < words and out[w] is None:
                        out[w] = int(np.argmax(logits[r, t]))
                    if targets[t] != -100:
                        loss -= lp[r, t, targets[t]]
                        count += 1
                labels[i] = out
        # merge_windows: a word seen by several windows takes the label of the window where it
        # has the most context on both sides.
        pred, context, current = [], [], None
        for i, (s, first, words, _, _, _) in enumerate(self.windows):
            if s != current:
                pred.append([])
                context = []
                current = s
            p = pred[-1]
            need = first + words
            if len(p) < need:
                p.extend([self.fallback] * (need - len(p)))
                context.extend([-1] * (need - len(context)))
            for j, l in enumerate(labels[i]):
                if l is None:
                    continue
                ctx = min(j, words - 1 - j)
                if ctx > context[first + j]:
                    context[first + j] = ctx
                    p[first + j] = l
        gold = [[self.names[i] for i in g] for g in self.gold]
        pred = [[self.names[i] for i in p] for p in pred]
        precision, recall, f1 = entity_prf(gold, pred)
        right = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
        total = sum(len(g) for g in gold)
        return {"f1": 100 * f1, "precision": 100 * precision, "recall": 100 * recall,
                "token_accuracy": 100 * right / total, "loss": loss / max(count, 1),
                "examples": len(gold)}


# ---------------------------------------------------------------------------------------------
# squad: windows, n-best decoding, official EM/F1 (train/qa.rs, infer/qa.rs, metrics/squad.rs)


def squad_normalize(s):
    """The official SQuAD v1.1 evaluation script's normalize_answer."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(pred, gold):
    p, g = squad_normalize(pred).split(), squad_normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_em(pred, gold):
    return float(squad_normalize(pred) == squad_normalize(gold))


class Squad:
    def __init__(self, records, tokenizer):
        self.records = records
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.features = []  # (example, ids, types, spans, target)
        for e, r in enumerate(records):
            q = tokenizer(r["question"], add_special_tokens=False)["input_ids"][:QA_MAX_QUESTION]
            c = tokenizer(r["context"], add_special_tokens=False, return_offsets_mapping=True)
            cids, offs = c["input_ids"], c["offset_mapping"]
            room = QA_MAX_LENGTH - len(q) - 3
            if room <= 0:
                raise SetupError(f"question {r.get('id')} leaves no room for its context")
            step = max(room - QA_DOC_STRIDE, 1)
            ans = r["answers"][0] if r.get("answers") else None
            a_span = (ans["answer_start"], ans["answer_start"] + len(ans["text"])) if ans else None
            n, start = len(cids), 0
            while True:
                end = min(start + room, n)
                ids = [cls] + q + [sep]
                ctx0 = len(ids)
                ids += cids[start:end] + [sep]
                types = [0] * ctx0 + [1] * (len(ids) - ctx0)
                spans = [None] * len(ids)
                for k, t in enumerate(range(start, end)):
                    spans[ctx0 + k] = tuple(offs[t])
                target = (0, 0)
                if a_span and end > start and offs[start][0] <= a_span[0] and offs[end - 1][1] >= a_span[1]:
                    s = next((t for t in range(end - 1, start - 1, -1) if offs[t][0] <= a_span[0]), start)
                    en = next((t for t in range(start, end) if offs[t][1] >= a_span[1]), end - 1)
                    target = (ctx0 + s - start, ctx0 + max(en, s) - start)
                self.features.append((e, ids, types, spans, target))
                if end >= n:
                    break
                start += step

    def score(self, model):
        import numpy as np

        starts = [None] * len(self.features)
        ends = [None] * len(self.features)
        loss = 0.0
        for idx, feeds in padded_batches([f[1] for f in self.features], [f[2] for f in self.features]):
            s_logits, e_logits = model(feeds)
            for r, i in enumerate(idx):
                n = len(self.features[i][1])
                starts[i] = s_logits[r, :n].astype(np.float32)
                ends[i] = e_logits[r, :n].astype(np.float32)
                ts, te = self.features[i][4]
                loss += 0.5 * (-log_softmax(starts[i])[ts] - log_softmax(ends[i])[te])
        by_example = collections.defaultdict(list)
        for i, f in enumerate(self.features):
            by_example[f[0]].append(i)
        em = f1 = 0.0
        for e, r in enumerate(self.records):
            cands = []
            for i in by_example[e]:
                spans = self.features[i][3]
                s, en = starts[i], ends[i]
                top_s = np.argsort(-s, kind="stable")[:QA_N_BEST]
                top_e = np.argsort(-en, kind="stable")[:QA_N_BEST]
                for a in top_s:
                    for b in top_e:
                        if spans[a] is None or spans[b] is None:
                            continue
                        if b < a or b - a + 1 > QA_MAX_ANSWER:
                            continue
                        cands.append((float(s[a] + en[b]), spans[a][0], spans[b][1]))
            cands.sort(key=lambda c: -c[0])  # stable, as Rust's sort_by
            answer = r["context"][cands[0][1]:cands[0][2]] if cands else ""
            golds = [a["text"] for a in r.get("answers") or []]
            if golds:
                em += max(squad_em(answer, g) for g in golds)
                f1 += max(squad_f1(answer, g) for g in golds)
            else:
                em += float(squad_normalize(answer) == "")
                f1 += float(squad_normalize(answer) == "")
        n = len(self.records)
        return {"exact_match": 100 * em / n, "f1": 100 * f1 / n,
                "loss": loss / len(self.features), "examples": n, "windows": len(self.features)}


# ---------------------------------------------------------------------------------------------
# gpt: packed sequences and perplexity (data/pack.rs, data/corpus.rs, train/pretrain.rs)


def packed_sequences(path, tokenizer, n):
    eos = tokenizer.eos_token_id
    seqs, buf = [], []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            if not ids:
                continue
            buf += ids + [eos]
            while len(buf) >= SEQ_LEN and len(seqs) < n:
                seqs.append(buf[:SEQ_LEN])
                buf = buf[SEQ_LEN:]
            if len(seqs) == n:
                break
    return seqs


class Gpt:
    def __init__(self, path, tokenizer, n):
        self.seqs = packed_sequences(path, tokenizer, n)
        if len(self.seqs) < n:
            print(f"  note: {path} holds only {len(self.seqs)} sequences of {SEQ_LEN}", flush=True)

    def score(self, model):
        import numpy as np

        loss, count = 0.0, 0
        for k in range(0, len(self.seqs), GPT_BATCH):
            ids = np.array(self.seqs[k:k + GPT_BATCH], dtype=np.int64)
            logits = model({"input_ids": ids, "attention_mask": np.ones_like(ids)})
            lp = log_softmax(logits[:, :-1])
            tgt = ids[:, 1:]
            loss -= np.take_along_axis(lp, tgt[..., None], axis=-1).sum()
            count += tgt.size
        loss /= count
        return {"perplexity": math.exp(loss), "loss": loss, "examples": len(self.seqs)}


# ---------------------------------------------------------------------------------------------
# Per task


def calibration_lines(task, data, n):
    if task == "sst2":
        lines = [r["text"] for r in read_jsonl(data / "sst2" / "train.jsonl", n)]
    elif task == "ner":
        lines = [" ".join(r["tokens"]) for r in read_jsonl(data / "conll2003" / "train.jsonl", n)]
    elif task == "squad":
        lines = [r["question"] + " " + r["context"]
                 for r in read_jsonl(data / "squad_v1.1" / "train.jsonl.gz", n)]
    elif task == "gpt":
        # Paragraphs (lines of each book's text) of the Gutenberg training books.
        lines = []
        for r in read_jsonl(data / "corpora" / "en_gutenberg" / "train.jsonl.gz", 5):
            lines += [p for p in r["text"].split("\n") if p.strip()]
            if len(lines) >= n:
                break
        lines = lines[:n]
    else:
        raise ValueError(task)
    return [one_line(l) for l in lines if one_line(l)]


def validation_file(task, data):
    return {"sst2": data / "sst2" / "validation.jsonl",
            "ner": data / "conll2003" / "validation.jsonl",
            "squad": data / "squad_v1.1" / "validation.jsonl.gz",
            "gpt": data / "corpora" / "en_gutenberg" / "validation.jsonl.gz"}[task]


def run_task(task, args, kiln, work):
    from transformers import AutoConfig, AutoTokenizer

    model_dir = getattr(args, f"{task}_model")
    if not (model_dir / "model.safetensors").exists():
        raise SetupError(f"no model at {model_dir} (model.safetensors); pass --{task}-model DIR")
    valid = validation_file(task, args.data)
    if not valid.exists():
        raise SetupError(f"missing {valid}; pass --data with the shared data folder")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    config = AutoConfig.from_pretrained(str(model_dir))
    res = {"task": task, "model": str(model_dir), "data": str(valid), "metrics": {}, "seconds": {}}
    sec = res["seconds"]

    # The data both sides score.
    if task == "gpt":
        res["sequences"] = args.sequences
        evaluator, sec["prepare"] = timed(Gpt, valid, tokenizer, args.sequences)
        data_file = valid
    else:
        records = read_jsonl(valid, args.max_examples)
        res["max_examples"] = args.max_examples
        data_file = valid
        if args.max_examples is not None:
            data_file = work / f"{task}-validation-{len(records)}.jsonl"
            data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                 encoding="utf-8")
        if task == "sst2":
            evaluator, sec["prepare"] = timed(Sst2, records, tokenizer, config,
                                              args.data / "sst2" / "labels.json")
        elif task == "ner":
            evaluator, sec["prepare"] = timed(Ner, records, tokenizer, config)
            res["long_sentences"] = evaluator.long_sentences
            print(f"  {evaluator.long_sentences} sentence(s) longer than {MAX_LENGTH} tokens, "
                  f"read in windows", flush=True)
        else:
            evaluator, sec["prepare"] = timed(Squad, records, tokenizer)
            print(f"  {len(records)} questions, {len(evaluator.features)} windows", flush=True)

    # Kiln fp32 and int8.
    extra = ["--tag-field", "ner"] if task == "ner" else []

    def score(model):
        if task == "gpt":
            return kiln.lm_perplexity(model, valid, args.sequences)
        return kiln.eval(model, data_file, extra)

    if task == "gpt" and not kiln.lm_eval:
        m, sec["kiln_fp32"] = timed(kiln.clm_perplexity, model_dir, valid, args.sequences,
                                    work / "pretrain-fp32")
        res["metrics"]["kiln_fp32"] = m
        res["metrics"]["kiln_int8"] = None
        print("  Kiln int8 perplexity: this kiln has no `eval --task lm` (rebuild it); fp32 from "
              "a 1-step `kiln pretrain` at lr 1e-30", flush=True)
    else:
        res["metrics"]["kiln_fp32"], sec["kiln_fp32"] = timed(score, model_dir)
        calib = work / f"calibration-{task}.txt"
        lines = calibration_lines(task, args.data, args.calibration_lines)
        calib.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
        qdir = work / f"q-{task}"
        log, sec["kiln_quantize"] = timed(kiln.quantize, model_dir, qdir, calib)
        (work / f"q-{task}.log").write_text(log)
        res["metrics"]["kiln_int8"], sec["kiln_int8"] = timed(score, qdir)
        res["calibration_lines"] = len(lines)

    # ONNX Runtime fp32 and int8 (and PyTorch fp32 for the LM).
    (onnx_path, exporter), sec["onnx_export"] = timed(export_onnx, task, model_dir, args.onnx_cache)
    (q_path, how, counts), sec["ort_quantize"] = timed(quantize_onnx, onnx_path)
    res["onnx"] = {"fp32": str(onnx_path), "exporter": exporter, "int8": str(q_path),
                   "quantization": how, "int8_graph_ops": counts}
    print(f"  onnx: {exporter}; int8: {how}; ops {counts}", flush=True)
    res["metrics"]["ort_fp32"], sec["ort_fp32"] = timed(evaluator.score, OrtModel(onnx_path, task))
    res["metrics"]["ort_int8"], sec["ort_int8"] = timed(evaluator.score, OrtModel(q_path, task))
    if task == "gpt":
        res["metrics"]["torch_fp32"], sec["torch_fp32"] = timed(evaluator.score,
                                                                TorchModel(model_dir, task))
    for side, m in res["metrics"].items():
        if m is not None:
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
            print(f"  {side:10s} {shown}", flush=True)

    # Sanity: the same fp32 model, so ORT fp32 must reproduce Kiln fp32.
    kf, of = res["metrics"]["kiln_fp32"], res["metrics"]["ort_fp32"]
    checks = []
    for metric in METRICS[task]:
        a, b = kf[metric], of[metric]
        if task == "gpt":
            ok = abs(a - b) <= SANITY_PPL_REL * a
            checks.append((metric, a, b, ok, f"rel diff {abs(a - b) / a:.2%} (<= {SANITY_PPL_REL:.1%})"))
        else:
            ok = abs(a - b) <= SANITY_POINTS
            checks.append((metric, a, b, ok, f"diff {abs(a - b):.3f} (<= {SANITY_POINTS})"))
    if "loss" in kf and "loss" in of:
        print(f"  loss: Kiln fp32 {kf['loss']:.6f} | ORT fp32 {of['loss']:.6f}", flush=True)
    if kf.get("examples") is not None and kf.get("examples") != of.get("examples"):
        checks.append(("examples", kf["examples"], of["examples"], False, "different example counts"))
    for metric, a, b, ok, why in checks:
        print(f"  sanity {metric}: Kiln fp32 {a:.4f} vs ORT fp32 {b:.4f}: {why} "
              f"{'ok' if ok else 'MISMATCH'}", flush=True)
    res["sanity_ok"] = all(c[3] for c in checks)
    return res


# ---------------------------------------------------------------------------------------------
# Report


def fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def table(results):
    print("\n| task | metric | Kiln fp32 | Kiln int8 | drop | ORT fp32 | ORT int8 | drop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["metrics"]
        n = m["kiln_fp32"].get("examples") if m.get("kiln_fp32") else None
        label = r["task"] + (f" ({n} ex.)" if r["task"] != "gpt" else f" ({r['sequences']} seq.)")
        for metric in METRICS[r["task"]]:
            vals = [m.get(s)[metric] if m.get(s) else None
                    for s in ("kiln_fp32", "kiln_int8", "ort_fp32", "ort_int8")]
            kf, ki, of, oi = vals
            # drop = how much worse int8 is: points lost, or perplexity gained
            sign = -1 if metric == "perplexity" else 1
            kd = None if kf is None or ki is None else sign * (kf - ki)
            od = None if of is None or oi is None else sign * (of - oi)
            print(f"| {label} | {metric} | {fmt(kf)} | {fmt(ki)} | {fmt(kd, '+.2f')} | "
                  f"{fmt(of)} | {fmt(oi)} | {fmt(od, '+.2f')} |")
    print("drop: points lost by int8 (perplexity: points gained), so positive = worse.")
    for r in results:
        if r["task"] == "gpt" and r["metrics"].get("torch_fp32"):
            print(f"gpt: transformers GPT2LMHeadModel fp32 (PyTorch) perplexity "
                  f"{r['metrics']['torch_fp32']['perplexity']:.3f}")


def git_commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return None


def main():
    args = parse_args()
    check_versions(PINNED, SETUP_HINT)
    kiln = Kiln(args.kiln)
    if not args.data.exists():
        raise SetupError(f"no data folder at {args.data}; pass --data")

    import numpy as np
    import onnxruntime
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="bench-quant-quality-"))
    print("== environment")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs); load average {os.getloadavg()[0]:.2f}")
    print(f"python {platform.python_version()} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | onnxruntime {onnxruntime.__version__} | numpy {np.__version__}")
    print(f"kiln: {kiln.binary} ({kiln.version}); threads: kiln --threads {THREADS}, "
          f"ORT intra-op {THREADS}, torch {torch.get_num_threads()}")
    print(f"work folder: {work}; ONNX cache: {args.onnx_cache}")
    results, failed = [], []
    try:
        for task in args.tasks:
            print(f"\n== {task}", flush=True)
            t0, first = time.perf_counter(), len(kiln.commands)
            r = run_task(task, args, kiln, work)
            r["kiln_commands"] = kiln.commands[first:]
            r["seconds"]["total"] = time.perf_counter() - t0
            print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()), flush=True)
            results.append(r)
            if not r["sanity_ok"]:
                failed.append(task)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    table(results)
    if args.record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with open(RESULTS, "a", encoding="utf-8") as f:
            for r in results:
                r.update({"date": stamp, "git_commit": git_commit(), "kiln": str(kiln.binary),
                          "kiln_version": kiln.version, "cpu": cpu_model(), "threads": THREADS,
                          "versions": {n: version(n) for n in PINNED}})
                f.write(json.dumps(r) + "\n")
        print(f"appended {len(results)} line(s) to {RESULTS}")
    if failed:
        print(f"\nFAILED sanity check (ORT fp32 vs Kiln fp32): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"quant_quality: {e}", file=sys.stderr)
        sys.exit(2)
    except RunError as e:
        print(f"quant_quality: {e}", file=sys.stderr)
        sys.exit(1)
