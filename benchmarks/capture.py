"""Capture benchmark: llmri.scan against baselines measured in the same run.

(a) scan / a bare forward pass over the same length-sorted batches   (target <= 1.10)
(b) scan / a naive loop: corpus order, batches of 32 padded to their longest document,
    output_hidden_states=True, pooled per layer in Python                (expect well below 1)
(c) peak memory of a token-level scan at 1x and 4x the corpus size, each in a fresh process
    (must stay roughly flat)

Run: python benchmarks/capture.py [--docs 300] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import llmri
from llmri.batches import plan_batches, tokenize


def mixed_corpus(n_docs: int, seed: int = 0) -> llmri.Corpus:
    """Documents of mixed length (1 to 12 demo documents glued together), demo labels."""
    demo = llmri.demo_corpus("topics")
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n_docs):
        label = int(rng.integers(len(demo.label_names)))
        pool = np.flatnonzero(demo.labels == label)
        k = int(rng.choice([1, 1, 2, 3, 4, 6, 8, 12]))
        texts.append(" ".join(demo.texts[i].strip() for i in rng.choice(pool, size=k)))
        labels.append(demo.label_names[label])
    return llmri.Corpus(texts, labels)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bare_forward(model, corpus, batch_tokens):
    """The model's own forward over the batches llmri would use: no hooks, no pooling, no disk."""
    ids, _ = tokenize(model, corpus.texts, model.max_length)
    lengths = np.asarray([len(x) for x in ids])
    pad = model.tokenizer.pad_token_id
    with torch.inference_mode():
        for batch in plan_batches(lengths, batch_tokens):
            T = int(lengths[batch].max())
            x = torch.full((len(batch), T), pad, dtype=torch.long)
            m = torch.zeros((len(batch), T), dtype=torch.long)
            for r, d in enumerate(batch):
                x[r, :len(ids[d])] = torch.tensor(ids[d])
                m[r, :len(ids[d])] = 1
            model.base(input_ids=x.to(model.device), attention_mask=m.to(model.device))


def naive_loop(model, corpus, batch_size=32):
    """What a hand-written loop usually does."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(corpus), batch_size):
            enc = model.tokenizer(corpus.texts[i:i + batch_size], padding=True, truncation=True,
                                  return_tensors="pt").to(model.device)
            hs = model.module(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append([((h.float() * m).sum(1) / m.sum(1)).cpu().numpy() for h in hs])
    return out


def peak_memory_child(n_docs: int, device: str) -> None:
    model = llmri.load_model("default", device=device)
    corpus = mixed_corpus(n_docs)
    with tempfile.TemporaryDirectory() as d:
        llmri.scan(model, corpus, Path(d) / "s", token_sites=("resid",), progress=False)
        print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "tokens": llmri.Scan.open(Path(d) / "s").manifest["plan"]["n_tokens"]}))


def peak_memory(n_docs: int, device: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child-memory", str(n_docs), "--device", device],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-tokens", type=int, default=llmri.capture.DEFAULT_BATCH_TOKENS)
    ap.add_argument("--child-memory", type=int, default=None)
    args = ap.parse_args()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child_memory:
        return peak_memory_child(args.child_memory, device)

    model = llmri.load_model("default", device=device)
    corpus = mixed_corpus(args.docs)
    lengths = [len(x) for x in tokenize(model, corpus.texts, model.max_length)[0]]
    print(f"device {device}, dtype {model.dtype}, torch {torch.__version__}, {len(corpus)} docs, "
          f"tokens/doc min {min(lengths)} median {int(np.median(lengths))} max {max(lengths)}")
    bare_forward(model, corpus, args.batch_tokens)  # warm-up
    runs = {"scan": [], "bare": [], "naive": []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            runs["bare"].append(timed(lambda: bare_forward(model, corpus, args.batch_tokens)))
            runs["scan"].append(timed(lambda: llmri.scan(model, corpus, Path(d) / f"s{r}",
                                                         batch_tokens=args.batch_tokens, progress=False)))
            runs["naive"].append(timed(lambda: naive_loop(model, corpus)))
    best = {k: min(v) for k, v in runs.items()}
    print(f"bare forward      {best['bare']:.2f} s")
    print(f"llmri.scan        {best['scan']:.2f} s   (all {model.n_layers + 1} resid layers, mean pool, to disk)")
    print(f"naive loop        {best['naive']:.2f} s")
    print(f"(a) scan / bare forward = {best['scan'] / best['bare']:.3f}   (target <= 1.10)")
    print(f"(b) scan / naive loop   = {best['scan'] / best['naive']:.3f}   (expect well below 1)")
    m1, m4 = peak_memory(args.docs, device), peak_memory(4 * args.docs, device)
    print(f"(c) token-level scan peak RSS: 1x {m1['maxrss_mb']:.0f} MB ({m1['tokens']} tokens), "
          f"4x {m4['maxrss_mb']:.0f} MB ({m4['tokens']} tokens); ratio 4x/1x = "
          f"{m4['maxrss_mb'] / m1['maxrss_mb']:.2f}")


if __name__ == "__main__":
    main()
