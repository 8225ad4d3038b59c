#!/usr/bin/env python3
"""Word-sense separation of contextual vectors, per model and per layer, with `kiln similarity`.

For every model (--model NAME=DIR, repeatable), every layer in --layers and every word of the
senses file (bench/lstm/senses.tsv: 6 ambiguous words x 2 senses x 8 sentences), this runs

    KILN similarity --model DIR --word WORD --input FILE --output PNG --matrix CSV --layer L

on that word's sentences (sense A's first, then sense B's), reads the cosine matrix from the CSV
and computes

    gap = mean cosine over pairs of different sentences of the same sense
          - mean cosine over pairs of sentences of different senses.

A positive gap means the layer's vectors of the word sit closer to the other uses of the same
sense than to uses of the other sense; 0 means no separation. The gap per word, its mean over the
words, and the two means it is the difference of are written as JSON (--json) and printed as a
table; --plot draws the mean gap over words against the layer, one line per model. For each model
the heatmap `kiln similarity` draws for one word (--heatmap-word, default apple) at the model's
`last` layer is kept in --heatmap-dir as NAME-WORD.png.

A layer number past a model's top layer (kiln: "the model has layers 0 ... to N") and `mean` on a
model whose layers differ in width are skipped for that model with a note. Intermediate files go
to a temporary folder that is removed at the end.

Exit status: 0 when every run worked, 1 when some run of kiln failed for another reason (those
words are left out of the means and listed), 2 for a setup problem (no binary, no senses file,
bad flags).
"""
import argparse
import csv
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TITLE = "word-sense separation: mean cosine within a sense minus across senses"


class SetupError(Exception):
    """Something to fix before running (exit status 2)."""


def parse_layers(spec):
    """'0,1,2,last,mean' or '0-4,last' -> ['0', '1', '2', 'last', 'mean'] (order kept, no repeats)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise SetupError(f"--layers {part}: the range runs backwards")
            items = [str(i) for i in range(lo, hi + 1)]
        elif part in ("last", "mean") or part.isdigit():
            items = [str(int(part)) if part.isdigit() else part]
        else:
            raise SetupError(f"--layers: {part!r} is not a number, a range N-M, 'last' or 'mean'")
        out.extend(i for i in items if i not in out)
    if not out:
        raise SetupError("--layers is empty")
    return out


def parse_model(spec):
    name, sep, d = spec.partition("=")
    if not sep or not name or not d:
        raise SetupError(f"--model {spec!r}: expected NAME=DIR")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SetupError(f"--model {spec!r}: NAME may hold letters, digits, '.', '_' and '-' only")
    return name, d


def read_senses(path, only_words):
    """{word: [(sense, sentence), ...]} in file order of words; each word's sentences reordered so
    that the senses come in the order they first appear (sense A's sentences, then sense B's)."""
    if not path.is_file():
        raise SetupError(f"no senses file at {path}")
    rows = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header != ["word", "sense", "sentence"]:
            raise SetupError(f"{path}: the header must be word<TAB>sense<TAB>sentence, not {header}")
        for n, r in enumerate(reader, start=2):
            if not r or not "".join(r).strip():
                continue
            if len(r) != 3:
                raise SetupError(f"{path}:{n}: expected 3 tab-separated fields, found {len(r)}")
            rows.setdefault(r[0].strip(), []).append((r[1].strip(), r[2].strip()))
    if only_words:
        missing = [w for w in only_words if w not in rows]
        if missing:
            raise SetupError(f"--words: {', '.join(missing)} not in {path}")
        rows = {w: rows[w] for w in only_words}
    out = {}
    for word, items in rows.items():
        order = list(dict.fromkeys(s for s, _ in items))
        if len(order) < 2:
            raise SetupError(f"{path}: the word {word!r} has only one sense")
        out[word] = sorted(items, key=lambda it: order.index(it[0]))
    return out


def read_matrix(path):
    """The cosine matrix `kiln similarity --matrix` writes: a header row of sentences, then one
    row per sentence (its text, then its cosines)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    n = len(rows) - 1
    m = [[float(x) for x in r[1:]] for r in rows[1:]]
    if any(len(r) != n for r in m):
        raise ValueError(f"{path}: the matrix is not square")
    return [r[0] for r in rows[1:]], m


def sense_gap(senses, m):
    within, across = [], []
    n = len(senses)
    for i in range(n):
        for j in range(i + 1, n):  # the matrix is symmetric; each pair once, diagonal out
            (within if senses[i] == senses[j] else across).append(m[i][j])
    w = sum(within) / len(within)
    a = sum(across) / len(across)
    return {"gap": w - a, "within": w, "across": a, "pairs_within": len(within),
            "pairs_across": len(across)}


def layer_skip_reason(layer, stderr):
    """The note for a layer the model does not have, or None for any other failure."""
    if layer.isdigit() and re.search(rf"--layer {layer}: the model has layers", stderr):
        m = re.search(r"the model has layers 0 \(the embeddings\) to (\d+)", stderr)
        top = f" (it has 0 to {m.group(1)})" if m else ""
        return f"no layer {layer}{top}"
    if layer == "mean" and "--layer mean" in stderr:
        return "layer mean: " + stderr.strip().splitlines()[-1].removeprefix("error: ")
    return None


def run_kiln(args, model_dir, word, layer, sentences_file, png, matrix):
    cmd = [str(args.kiln)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["similarity", "--model", str(model_dir), "--word", word, "--input", str(sentences_file),
            "--output", str(png), "--matrix", str(matrix), "--layer", layer]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p, time.perf_counter() - t0, cmd


def fmt(x, width=8):
    return f"{x:+{width}.3f}" if isinstance(x, float) and not math.isnan(x) else f"{'-':>{width}}"


def print_table(results, words, layers):
    head = f"{'model':<14} {'layer':>5} " + " ".join(f"{w[:8]:>8}" for w in words) + \
        f" {'mean':>8} {'within':>8} {'across':>8}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        for layer in layers:
            if layer in r["skipped"]:
                print(f"{name:<14} {layer:>5}  skipped: {r['skipped'][layer]}")
                continue
            lr = r["layers"].get(layer)
            if lr is None:
                continue
            cells = [fmt(lr["words"][w]["gap"]) if w in lr["words"] else f"{'err':>8}" for w in words]
            print(f"{name:<14} {layer:>5} " + " ".join(cells) + f" {fmt(lr['mean_gap'])}"
                  f" {fmt(lr['mean_within'])} {fmt(lr['mean_across'])}")


def plot(results, layers, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8.0, 1.0 + 0.9 * len(layers)), 5.0))
    xs = list(range(len(layers)))
    for name, r in results.items():
        ys = [r["layers"][l]["mean_gap"] if l in r["layers"] and r["layers"][l]["mean_gap"] is not None
              else float("nan") for l in layers]
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(xs, layers)
    ax.set_xlabel("layer  (0 = embeddings, last = model output, mean = all layers averaged)", fontsize=9)
    ax.set_ylabel("mean gap over words (cosine)")
    ax.set_title(TITLE, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                   help="a model to measure (repeatable); NAME labels it in the table, JSON and plot")
    p.add_argument("--layers", default="0,1,2,last,mean",
                   help="comma-separated layers: numbers (0 = embeddings), ranges N-M, last, mean "
                        "(default: 0,1,2,last,mean)")
    p.add_argument("--senses", type=Path, default=HERE / "senses.tsv",
                   help="word<TAB>sense<TAB>sentence file (default: bench/lstm/senses.tsv)")
    p.add_argument("--words", default=None, help="only these words, comma-separated (default: all)")
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln")
    p.add_argument("--threads", type=int, default=None, help="kiln --threads N (default: kiln's)")
    p.add_argument("--json", type=Path, default=None,
                   help="write every gap as JSON here (default: only the table on stdout)")
    p.add_argument("--plot", type=Path, default=None, help="PNG: mean gap over words per layer")
    p.add_argument("--heatmap-word", default="apple",
                   help="the word whose `last`-layer heatmap is kept per model (default: apple)")
    p.add_argument("--heatmap-dir", type=Path, default=None,
                   help="where NAME-WORD.png heatmaps go (default: the --plot file's folder; "
                        "none kept without either)")
    args = p.parse_args()

    layers = parse_layers(args.layers)
    models = dict(parse_model(s) for s in args.model)
    if len(models) != len(args.model):
        raise SetupError("--model: the same NAME is given twice")
    for name, d in models.items():
        if not Path(d).is_dir():
            raise SetupError(f"--model {name}={d}: no such directory")
    only = [w.strip() for w in args.words.split(",") if w.strip()] if args.words else None
    senses = read_senses(args.senses, only)
    words = list(senses)
    if not args.kiln.is_file():
        raise SetupError(f"no kiln binary at {args.kiln}: run `cargo build --release` or pass --kiln")
    h = subprocess.run([str(args.kiln), "similarity", "--help"], capture_output=True, text=True)
    if h.returncode != 0 or "--layer" not in h.stdout or "--matrix" not in h.stdout:
        raise SetupError(f"`{args.kiln} similarity --help` offers no --layer/--matrix; rebuild kiln")
    heat_dir = args.heatmap_dir or (args.plot.parent if args.plot else None)
    heat_word = args.heatmap_word
    if heat_dir and heat_word not in senses:
        # --words may have left it out: it is still read for the heatmap alone.
        heat_senses = read_senses(args.senses, [heat_word])
    else:
        heat_senses = senses

    results, failures, seconds = {}, [], []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kiln-sense-gap-") as tmp:
        tmp = Path(tmp)
        inputs = {}
        for w, items in {**heat_senses, **senses}.items():
            f = tmp / f"{w}.txt"
            f.write_text("".join(s + "\n" for _, s in items), encoding="utf-8")
            inputs[w] = f

        for name, mdir in models.items():
            r = {"dir": str(mdir), "layers": {}, "skipped": {}, "heatmap": None}
            results[name] = r
            for layer in layers:
                lr = {"words": {}}
                for w in words:
                    png = tmp / f"{name}-{layer}-{w}.png"
                    csv_path = tmp / f"{name}-{layer}-{w}.csv"
                    proc, dt, cmd = run_kiln(args, mdir, w, layer, inputs[w], png, csv_path)
                    seconds.append(dt)
                    if proc.returncode != 0:
                        reason = layer_skip_reason(layer, proc.stderr)
                        if reason:
                            r["skipped"][layer] = reason
                            print(f"note: {name}: skipping layer {layer}: {reason}", file=sys.stderr)
                            break
                        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else \
                            f"exit status {proc.returncode}"
                        failures.append({"model": name, "layer": layer, "word": w, "error": msg,
                                         "command": " ".join(cmd)})
                        print(f"error: {name} layer {layer} {w}: {msg}", file=sys.stderr)
                        continue
                    labels, m = read_matrix(csv_path)
                    want = [s for _, s in senses[w]]
                    if labels != want:
                        raise RuntimeError(f"{csv_path}: its rows are not {w}'s sentences in order")
                    g = sense_gap([s for s, _ in senses[w]], m)
                    g["seconds"] = round(dt, 3)
                    lr["words"][w] = g
                    if layer == "last" and w == heat_word and heat_dir:
                        r["heatmap"] = str(png)
                if layer in r["skipped"]:
                    continue
                done = list(lr["words"].values())
                mean = (lambda k: sum(g[k] for g in done) / len(done) if done else None)
                lr["mean_gap"], lr["mean_within"], lr["mean_across"] = \
                    mean("gap"), mean("within"), mean("across")
                lr["words_measured"] = len(done)
                r["layers"][layer] = lr

            if heat_dir:
                src = r["heatmap"]
                if src is None:  # `last` not among --layers, or the word left out by --words
                    png = tmp / f"{name}-last-{heat_word}-heat.png"
                    proc, dt, cmd = run_kiln(args, mdir, heat_word, "last", inputs[heat_word], png,
                                             tmp / f"{name}-heat.csv")
                    if proc.returncode == 0:
                        src = str(png)
                    else:
                        failures.append({"model": name, "layer": "last", "word": heat_word,
                                         "error": proc.stderr.strip(), "command": " ".join(cmd)})
                if src:
                    heat_dir.mkdir(parents=True, exist_ok=True)
                    dst = heat_dir / f"{name}-{heat_word}.png"
                    shutil.copyfile(src, dst)
                    r["heatmap"] = str(dst)

    total = time.perf_counter() - t_start
    print(f"senses: {args.senses} ({len(words)} word{'s' if len(words) != 1 else ''}: {', '.join(words)})")
    print("gap = mean cosine within a sense - mean cosine across senses (per word; mean over words)")
    print()
    print_table(results, words, layers)
    print()
    if seconds:
        srt = sorted(seconds)
        print(f"{len(seconds)} kiln runs in {total:.1f} s; per run median {srt[len(srt) // 2]:.2f} s, "
              f"max {srt[-1]:.2f} s")
    for name, r in results.items():
        if r["heatmap"]:
            print(f"heatmap {name}: {r['heatmap']}")

    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(results, layers, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        out = {"title": TITLE, "kiln": str(args.kiln), "senses": str(args.senses),
               "words": {w: list(dict.fromkeys(s for s, _ in senses[w])) for w in words},
               "layers": layers, "models": results, "failures": failures,
               "seconds": round(total, 2)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"json: {args.json}")
    if failures:
        print(f"{len(failures)} kiln run(s) failed; see the errors above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"setup: {e}", file=sys.stderr)
        sys.exit(2)
