"""Train the feature set shipped for ``default-decoder`` (issue 20): BatchTopK SAEs on the residual
stream of SmolLM2-135M-Instruct, every fourth block, from real English that ships with llmri.

Reproducible: the corpus, its held-out split, the token order and every initialisation come from
``--seed``; a rerun of the same command on the same CPU and thread count ends with the same bytes.
Training streams (``llmri.train_sae(model, corpus, sites=..., tokens=...)``) and checkpoints
every few minutes into ``OUT/checkpoint.safetensors``: a killed run (or a session that ended)
resumes where it stopped when the same command is run again, and ends as an uninterrupted run.

    HF_HUB_OFFLINE=1 python3 tools/train_feature_set.py --out runs/feature-set          # train (resumes)
    HF_HUB_OFFLINE=1 python3 tools/train_feature_set.py --out runs/feature-set --eval   # held-out metrics

The corpus is ``english_corpus()`` (Python's documentation: tutorials, how-tos, references) and
``glossary_corpus()`` (WordNet-style glosses of everyday words), shuffled together; 300 documents of
each are held out for evaluation and never trained on (``OUT/split.json`` lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import llmri  # noqa: E402
from llmri.store import atomic_write_json  # noqa: E402

SITES = [f"resid.{L}" for L in range(4, 29, 4)]       # resid.4 ... resid.28: after blocks 3, 7, ..., 27
HELD_OUT = 300                                        # documents of each corpus kept for evaluation


def corpora(seed: int) -> tuple[llmri.Corpus, llmri.Corpus, dict]:
    """The training corpus (both corpora, shuffled together) and the held-out one, seeded."""
    parts = {"english": llmri.english_corpus(), "glossary": llmri.glossary_corpus()}
    rng = np.random.default_rng(seed)
    train, held, split = [], [], {}
    for name, c in parts.items():
        order = rng.permutation(len(c))
        split[name] = sorted(int(i) for i in order[:HELD_OUT])
        held += [(c.texts[i], name) for i in order[:HELD_OUT]]
        train += [(c.texts[i], name) for i in order[HELD_OUT:]]
    train = [train[i] for i in rng.permutation(len(train))]
    as_corpus = lambda rows: llmri.Corpus([t for t, _ in rows], [lab for _, lab in rows])  # noqa: E731
    return as_corpus(train), as_corpus(held), split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/feature-set")
    ap.add_argument("--tokens", type=int, default=1_500_000, help="training tokens (the budget)")
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=1024, help="tokens per optimiser step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", action="store_true", help="evaluate the trained SAEs on the held-out split")
    ap.add_argument("--eval-docs", type=int, default=HELD_OUT * 2)
    args = ap.parse_args()
    out = Path(args.out)
    train, held, split = corpora(args.seed)
    if args.eval:
        import torch

        model = llmri.load_model("default-decoder")
        sample = held.subset(range(min(args.eval_docs, len(held))))
        rows = {}
        for site in SITES:
            sae = llmri.SAE.load(out / "saes" / site)
            m = llmri.evaluate_sae(sae, model, sample, progress=False)
            rows[site] = {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in m.items()
                          if isinstance(v, (int, float, np.floating, str))}
            print(site, {k: rows[site][k] for k in ("explained_variance", "ce_loss_score", "l0", "dead_fraction")
                         if k in rows[site]}, flush=True)
        atomic_write_json(out / "eval.json", dict(sites=rows, docs=len(sample), threads=torch.get_num_threads()))
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "split.json", dict(seed=args.seed, held_out=split))
    t = time.perf_counter()
    saes = llmri.train_sae("default-decoder", train, sites=SITES, tokens=args.tokens, n_latents=args.latents,
                           k=args.k, batch_size=args.batch_size, seed=args.seed,
                           checkpoint=out / "checkpoint.safetensors", progress=True)
    wall = time.perf_counter() - t
    for site, sae in saes.items():
        sae.save(out / "saes" / site)
    import torch

    atomic_write_json(out / "train.json", dict(tokens=args.tokens, latents=args.latents, k=args.k,
                                               batch_size=args.batch_size, seed=args.seed, sites=SITES,
                                               wall_s_this_run=wall, threads=torch.get_num_threads(),
                                               train_docs=len(train)))
    print(f"trained {len(saes)} SAEs in {wall:.0f} s (this run); saved under {out / 'saes'}")


if __name__ == "__main__":
    main()
