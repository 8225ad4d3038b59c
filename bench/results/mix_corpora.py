"""Interleave the English and Chinese pre-training corpora document by document (fixed seed),
so a GPT run shorter than one epoch sees both languages. Usage:

    python3 bench/results/mix_corpora.py ../shared/data/corpora train OUT.jsonl.gz
    python3 bench/results/mix_corpora.py ../shared/data/corpora validation OUT.jsonl.gz
"""
import gzip
import json
import random
import sys

root, split, out = sys.argv[1], sys.argv[2], sys.argv[3]
docs = []
for name in ("en_gutenberg", "zh_classics_wiki"):
    with gzip.open(f"{root}/{name}/{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        docs += [json.loads(l)["text"] for l in f if l.strip()]
random.Random(0).shuffle(docs)
with gzip.open(out, "wt", encoding="utf-8") as f:
    for d in docs:
        f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
print(f"{len(docs)} documents -> {out}")
