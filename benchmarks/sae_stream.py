"""Streaming SAE training against training from a Scan: training tokens per second, same sites, same
settings, same process, on ``default-decoder`` (SmolLM2-135M-Instruct).

The corpus is the first paragraphs of ``llmri.english_corpus()`` that hold ``--tokens`` training
tokens (each document's first token is left out, as for every decoder). Once, untimed for the
ratio, it is scanned with token records of every ``--sites`` site (the scan's own time is printed).
Then, ``--repeats`` times, interleaved so that load on a shared machine falls on both alike:

- stream: ``train_sae(model, corpus, sites=..., tokens=N)``: one forward pass per batch for every
  site, the shuffling buffer, the SAE steps;
- scan: ``train_sae(scan, sites)`` over the Scan on disk, one epoch of the same N tokens.

Both train BatchTopK SAEs of the same width, k and batch, in the default training precision, and
take the same number of optimiser steps. Reported: the minimum wall time of each, its training
tokens per second, the ratio stream / scan, and stream against scanning then training.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python3 benchmarks/sae_stream.py \
        --sites resid.3,resid.6,resid.9,resid.12 --tokens 12288 --latents 2048 --repeats 3   # ~5 min on 1 core
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import llmri
from llmri.store import atomic_write_json


def corpus_of(model, tokens: int) -> llmri.Corpus:
    """The first paragraphs of the English corpus that hold ``tokens`` tokens besides their first."""
    full = llmri.english_corpus()
    counts = [len(x) - 1 for x in model.tokenizer(full.texts[:4 * tokens // 50 + 10])["input_ids"]]
    n, total = 0, 0
    while total < tokens:
        total += counts[n]
        n += 1
    return full.subset(range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", default="resid.3,resid.6,resid.9,resid.12")
    ap.add_argument("--tokens", type=int, default=12288)
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="Write the figures as JSON here.")
    args = ap.parse_args()
    sites = [s.strip() for s in args.sites.split(",")]
    warnings.simplefilter("ignore", UserWarning)   # few steps: a speed measurement, not an SAE to keep
    model = llmri.load_model("default-decoder")
    corpus = corpus_of(model, args.tokens)
    kw = dict(n_latents=args.latents, k=args.k, batch_size=args.batch_size, seed=0, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        scan = llmri.scan(model, corpus, f"{tmp}/scan", sites=("resid.0",), token_sites=sites, progress=False)
        scan_s = time.perf_counter() - t
        n = int(scan.lengths.sum()) - scan.n_docs
        times = {"stream": [], "scan": []}
        for r in range(args.repeats):
            for kind in ("stream", "scan") if r % 2 == 0 else ("scan", "stream"):
                t = time.perf_counter()
                if kind == "stream":
                    saes = llmri.train_sae(model, corpus, sites=sites, tokens=n, **kw)
                else:
                    saes = llmri.train_sae(scan, sites, **kw)
                times[kind].append(time.perf_counter() - t)
                print(f"run {r} {kind}: {times[kind][-1]:.1f} s ({n / times[kind][-1]:,.0f} tok/s); explained "
                      f"variance {[round(s.metadata['window']['ev'], 3) for s in saes.values()]}", flush=True)
    best = {k: min(v) for k, v in times.items()}
    fig = dict(sites=sites, tokens=n, docs=len(corpus), latents=args.latents, k=args.k, batch_size=args.batch_size,
               steps=-(-n // args.batch_size), repeats=args.repeats, scan_seconds=round(scan_s, 2),
               stream_seconds=round(best["stream"], 2), scan_train_seconds=round(best["scan"], 2),
               stream_tok_s=round(n / best["stream"]), scan_train_tok_s=round(n / best["scan"]),
               scan_then_train_tok_s=round(n / (scan_s + best["scan"])),
               ratio_stream_over_scan_train=round(best["scan"] / best["stream"], 3),
               ratio_stream_over_scan_then_train=round((scan_s + best["scan"]) / best["stream"], 3))
    print(json.dumps(fig, indent=1))
    if args.out:
        atomic_write_json(args.out, fig)


if __name__ == "__main__":
    main()
