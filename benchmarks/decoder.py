"""Decoder benchmark: the embedded SmolLM2-135M-Instruct, against baselines measured in the same run.

(a) load time of ``default-decoder``: first load (GGUF conversion into an empty cache) and cached
    load, each as a ratio to a plain ``from_pretrained`` of the converted folder (model and
    tokenizer)                                                               (goal: cached <= 1.2)
(b) generation with a steering hook / without, same prompts, greedy          (goal <= 1.05)
(c) decoder scan / a bare forward over the same length-sorted batches        (goal <= 1.10)

Run: python benchmarks/decoder.py [--docs 120] [--repeats 3] [--device cpu] [--dtype auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import llmri
from llmri.batches import tokenize

sys.path.insert(0, str(Path(__file__).parent))
from capture import bare_forward, mixed_corpus, timed  # noqa: E402

PROMPTS = ["Tell me about your weekend.", "What is the capital of France?", "Describe your last meal.",
           "Give me three tips for learning to cook.", "Why is the sky blue?", "Write a short poem about rain.",
           "How do I make a cup of tea?", "What should I read next?"]


def load_child(kind: str, cache: str, device: str) -> None:
    """One load in a fresh process (so no file or module cache of this process helps)."""
    os.environ["LLMRI_CACHE"] = cache
    import transformers  # noqa: F401  (imported before the clock starts in every variant)

    t = time.perf_counter()
    if kind == "plain":
        from llmri.model import convert_gguf, embedded_decoder_gguf

        folder = str(convert_gguf(embedded_decoder_gguf(), progress=False))
        t = time.perf_counter()  # the folder lookup above is not part of the plain load
        transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
        transformers.AutoTokenizer.from_pretrained(folder)
    else:
        llmri.load_model("default-decoder", device=device)
    print(time.perf_counter() - t)


def load_time(kind: str, cache: str, device: str) -> float:
    proc = subprocess.run([sys.executable, __file__, "--child-load", kind, "--cache", cache, "--device", device],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--child-load", default=None)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    if args.child_load:
        load_child(args.child_load, args.cache, args.device)
        return

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    # (a) load times, each in a fresh process
    with tempfile.TemporaryDirectory() as fresh:
        first = load_time("llmri", fresh, args.device)
        cached = [load_time("llmri", fresh, args.device) for _ in range(args.repeats)]
        plain = [load_time("plain", fresh, args.device) for _ in range(args.repeats)]
    c, p = statistics.median(cached), statistics.median(plain)
    print(f"(a) load: first (conversion) {first:.2f} s = {first / p:.1f}x plain; cached {c:.2f} s, "
          f"plain from_pretrained {p:.2f} s: cached / plain = {c / p:.2f}")

    model = llmri.load_model("default-decoder", device=args.device, dtype=args.dtype)
    print(f"model dtype {model.dtype}")
    # (b) generation with and without a steering hook, interleaved
    vec = np.random.default_rng(0).normal(size=model.module.config.hidden_size).astype(np.float32)
    llmri.generate(model, PROMPTS[:2], max_new_tokens=4)  # warm-up
    base, steered = [], []
    for _ in range(args.repeats):
        base.append(timed(lambda: llmri.generate(model, PROMPTS, max_new_tokens=args.new_tokens)))
        with llmri.steer(model, {"resid.12": vec}, alpha=0.0):
            steered.append(timed(lambda: llmri.generate(model, PROMPTS, max_new_tokens=args.new_tokens)))
    b, s = min(base), min(steered)
    toks = len(PROMPTS) * args.new_tokens
    print(f"(b) generation of {len(PROMPTS)} prompts x {args.new_tokens} tokens: plain {b:.2f} s "
          f"({toks / b:.0f} tok/s), steered {s:.2f} s: steered / plain = {s / b:.3f}")

    # (c) decoder scan vs a bare forward over the same batches
    corpus = mixed_corpus(args.docs)
    bare, scans = [], []
    for r in range(args.repeats):
        bare.append(timed(lambda: bare_forward(model, corpus, 8192)))
        with tempfile.TemporaryDirectory() as d:
            scans.append(timed(lambda: llmri.scan(model, corpus, Path(d) / "s", sites=("resid",), progress=False)))
    n_tok = tokenize(model, corpus.texts, model.max_length)[0]
    print(f"(c) scan of {args.docs} documents ({sum(map(len, n_tok))} tokens), every resid layer, pool "
          f"mean-nosink: scan {min(scans):.2f} s, bare forward {min(bare):.2f} s: "
          f"scan / bare = {min(scans) / min(bare):.3f}")


if __name__ == "__main__":
    main()
