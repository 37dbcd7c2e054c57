"""lesion_map over every head and MLP of the default model on a small corpus, against the same
number of plain forward passes over the same batches, and against itself with the replay of the
unablated blocks switched off (measured in the same run).

Run: python benchmarks/lesion.py [--docs 48] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import llmri
import llmri.interventions.lesion as I  # where lesion maps read REPLAY_BYTES
from llmri.batches import Batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--measure", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the fastest is kept")
    args = ap.parse_args()
    model = llmri.load_model("default", device=args.device)
    demo = llmri.demo_corpus("topics")
    corpus = demo.subset(range(0, len(demo), max(1, len(demo) // args.docs)))
    batches = Batches(model, corpus.texts, 8192)
    n_jobs = model.n_layers * llmri.sites.n_heads(model.module) + model.n_layers
    with torch.inference_mode():
        for _, kw, _ in batches.batches:  # warm-up
            model.base(**kw)
        t = time.perf_counter()
        for _ in range(n_jobs + 1):        # +1: the unablated baseline
            for _, kw, _ in batches.batches:
                model.base(**kw)
        plain = time.perf_counter() - t
    def timed(replay_bytes):
        I.REPLAY_BYTES = replay_bytes
        t = time.perf_counter()
        out = llmri.lesion_map(model, corpus, measure=args.measure, progress=False)
        return time.perf_counter() - t, out

    budget = I.REPLAY_BYTES
    runs = [(timed(budget), timed(0)) for _ in range(args.repeats)]   # interleaved: replay, then recompute
    (lesion, df), (recompute, df0) = min(runs, key=lambda r: r[0][0])[0], min(runs, key=lambda r: r[1][0])[1]
    assert df.equals(df0), "replaying the unablated blocks changed the lesion map"
    print(f"{len(corpus)} documents, {len(df)} lesions ({model.n_layers} layers x "
          f"{llmri.sites.n_heads(model.module)} heads + {model.n_layers} MLPs), measure: {df.attrs['measure']}")
    print(f"plain forward passes ({n_jobs + 1} x corpus): {plain:.2f} s")
    print(f"lesion_map:                            {lesion:.2f} s  (includes tokenization and the measure)")
    print(f"lesion_map recomputing every block:    {recompute:.2f} s")
    print(f"lesion_map / plain forward passes = {lesion / plain:.3f}")
    print(f"recomputing / plain forward passes = {recompute / plain:.3f}")
    print(f"speed-up of replaying the unablated blocks = {recompute / lesion:.2f}x (same table)")


if __name__ == "__main__":
    main()
