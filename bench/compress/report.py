"""The compression report: every model measured by bench/compress/*.sh (one JSON line each in
bench/results/compress.jsonl) as one table (method, parameters, size on disk, `kiln predict`
sentences/s, validation accuracy; speed-up and accuracy against the teacher measured in the same
run) and a speed-vs-accuracy picture.

    python bench/compress/report.py [bench/results/compress.jsonl] [bench/results/compress.png]

Prints the table as Markdown. Needs matplotlib (installed into the running interpreter with pip
when missing).
"""
import json
import subprocess
import sys


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "bench/results/compress.jsonl"
    png = sys.argv[2] if len(sys.argv) > 2 else "bench/results/compress.png"
    every = [json.loads(l) for l in open(src) if l.strip()]
    # SST-2 rows (accuracy) make the main table and the picture; NER (F1) and masked-LM
    # distillation (held-out MLM loss) rows get their own tables below.
    rows = [r for r in every if "accuracy" in r]
    ner = [r for r in every if "f1" in r]
    mlm = [r for r in every if r["bench"] == "distill_mlm"]
    # Each bench run measures its own teacher: ratios are within a run.
    run = lambda r: r.get("run", r["bench"])
    teachers = {run(r): r for r in rows if r["method"] == "teacher (6 layers)"}
    print("| method | labels | parameters | MB | sentences/s | speed-up | accuracy | Δ vs teacher |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = teachers.get(run(r), r)
        print(f"| {r['method']} | {r['labels']} | {r['parameters']:,} | {r['bytes'] / 1e6:.1f} | "
              f"{r['sentences_per_s']:.0f} | {r['sentences_per_s'] / t['sentences_per_s']:.2f}x | "
              f"{r['accuracy']:.2f} | {r['accuracy'] - t['accuracy']:+.2f} |")
    if ner:
        print("\nCoNLL-2003 NER (bench/compress/distill_ner.sh):\n")
        print("| method | parameters | MB | sentences/s | speed-up | entity F1 | % of teacher |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        nt = {run(r): r for r in ner if r["method"] == "teacher (6 layers)"}
        for r in ner:
            t = nt.get(run(r), r)
            print(f"| {r['method']} | {r['parameters']:,} | {r['bytes'] / 1e6:.1f} | "
                  f"{r['sentences_per_s']:.0f} | {r['sentences_per_s'] / t['sentences_per_s']:.2f}x | "
                  f"{r['f1']:.2f} | {100 * r['f1'] / t['f1']:.1f} |")
    if mlm:
        print("\nMasked-LM distillation on en_gutenberg (bench/compress/distill_mlm.sh):\n")
        print("| model | steps | held-out MLM loss | perplexity | MLM accuracy |")
        print("|---|---:|---:|---:|---:|")
        for r in mlm:
            print(f"| {r['method']} | {r['step']} | {r['valid_loss']:.3f} | {r['perplexity']:.1f} | "
                  f"{r['mlm_accuracy']:.2f} |")
    try:
        import matplotlib
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "matplotlib"])
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for r in rows:
        t = teachers.get(run(r), r)
        x = r["sentences_per_s"] / t["sentences_per_s"]
        ax.scatter(x, r["accuracy"], s=40)
        ax.annotate(f"{r['method']} ({r['labels']})", (x, r["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("speed-up over the teacher (kiln predict, sentences/s)")
    ax.set_ylabel("SST-2 validation accuracy")
    ax.set_title("Kiln compression: speed vs accuracy (2 threads)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"\npicture: {png}")


if __name__ == "__main__":
    main()
