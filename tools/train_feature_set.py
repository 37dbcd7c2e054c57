"""Train the feature set shipped for ``default-decoder`` (issue 20): BatchTopK SAEs on the residual
stream of SmolLM2-135M-Instruct, every fourth block, from real English that ships with llmri.

Reproducible: the corpus, its held-out split, the token order and every initialisation come from
``--seed``; a rerun of the same command on the same CPU and thread count ends with the same bytes.
Training streams (``llmri.train_sae(model, corpus, sites=..., tokens=...)``) and checkpoints
every few minutes into ``OUT/checkpoint.safetensors``: a killed run (or a session that ended)
resumes where it stopped when the same command is run again, and ends as an uninterrupted run.

    HF_HUB_OFFLINE=1 python3 tools/train_feature_set.py --out runs/feature-set          # train (resumes)
    HF_HUB_OFFLINE=1 python3 tools/train_feature_set.py --out runs/feature-set --eval   # held-out metrics
    HF_HUB_OFFLINE=1 python3 tools/train_feature_set.py --out runs/feature-set --ship   # gate, then install

``--ship`` rounds the trained SAEs to float16 (what ships), evaluates *those* on the held-out split
and on the small sample the tests re-measure (``SAMPLE_DOCS`` held-out documents of each corpus),
refuses to ship when a quality gate fails (``GATES``), and otherwise writes the set, its card
(``set.json``: settings, training cost, held-out figures) and ``index.json`` (SHA-256 of every
file) into ``src/llmri/data/features/default-decoder/``, whole or not at all.

The corpus is ``english_corpus()`` (Python's documentation: tutorials, how-tos, references) and
``glossary_corpus()`` (WordNet-style glosses of everyday words), shuffled together; 300 documents of
each are held out for evaluation and never trained on (``OUT/split.json`` lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import llmri  # noqa: E402
from llmri.store import atomic_write_json  # noqa: E402

SITES = [f"resid.{L}" for L in range(4, 29, 4)]       # resid.4 ... resid.28: after blocks 3, 7, ..., 27
HELD_OUT = 300                                        # documents of each corpus kept for evaluation
SAMPLE_DOCS = 12                                      # held-out documents of each corpus the tests re-measure
MODEL = "default-decoder"
SHIP_TO = Path(__file__).resolve().parent.parent / "src" / "llmri" / "data" / "features" / MODEL
# (metric, bound, "min" or "max") that every site must meet on the held-out split (issue 20)
GATES = [("explained_variance", 0.70, "min"), ("ce_loss_score", 0.92, "min"), ("l0", 48.0, "max"),
         ("dead_fraction", 0.05, "max")]
METRICS = ("explained_variance", "ce_loss_score", "l0", "dead_fraction", "cossim", "kl_div_with_sae",
           "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation", "n_tokens")


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
    ap.add_argument("--ship", action="store_true", help="round to float16, evaluate, gate, and install the set")
    args = ap.parse_args()
    out = Path(args.out)
    train, held, split = corpora(args.seed)
    if args.eval or args.ship:
        evaluate(out, held, split, args)
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


def sample_docs(split: dict) -> dict[str, list[int]]:
    """The held-out documents the tests re-measure: the first ``SAMPLE_DOCS`` of each corpus's list."""
    return {name: idx[:SAMPLE_DOCS] for name, idx in split.items()}


def sample_corpus(sample: dict[str, list[int]]) -> llmri.Corpus:
    """Those documents as one labelled corpus, English first (what ``tests/test_shipped_saes.py`` builds)."""
    parts = {"english": llmri.english_corpus(), "glossary": llmri.glossary_corpus()}
    rows = [(parts[name].texts[i], name) for name in ("english", "glossary") for i in sample[name]]
    return llmri.Corpus([t for t, _ in rows], [lab for _, lab in rows])


def metrics_of(sae, model, corpus) -> dict:
    m = llmri.evaluate_sae(sae, model, corpus, progress=False)
    return {k: (int(m[k]) if k == "n_tokens" else float(m[k])) for k in METRICS if k in m}


def evaluate(out: Path, held: llmri.Corpus, split: dict, args) -> None:
    """Held-out metrics of the trained SAEs (``--eval``: as trained; ``--ship``: rounded to float16,
    what ships, then gated and installed)."""
    import torch

    from llmri.disk import whole_folder
    from llmri.sae.collection import INDEX_FILE, file_hashes

    if args.ship and SHIP_TO.exists():
        raise SystemExit(f"not shipped: {SHIP_TO} exists; the set is added once (remove it to replace it)")
    model = llmri.load_model(MODEL)
    docs = held.subset(range(min(args.eval_docs, len(held))))
    small = sample_corpus(sample_docs(split))
    stage = out / "ship" / MODEL
    rows, failed = {}, []
    for site in SITES:
        sae = llmri.SAE.load(out / "saes" / site)
        if args.ship:  # what ships: the float16 rounding, read back
            sae.save(stage / site, weights_dtype="float16")
            sae = llmri.SAE.load(stage / site)
        rows[site] = dict(held_out=metrics_of(sae, model, docs), sample=metrics_of(sae, model, small))
        h = rows[site]["held_out"]
        print(site, " ".join(f"{k} {h[k]:.4f}" for k, _, _ in GATES), f"(sample EV {rows[site]['sample']['explained_variance']:.4f})",
              flush=True)
        failed += [f"{site} {k} {h[k]:.4f} (gate {'>=' if way == 'min' else '<='} {bound})" for k, bound, way in GATES
                   if (h[k] < bound if way == "min" else h[k] > bound)]
    result = dict(sites=rows, held_out_docs=len(docs), sample_docs=sample_docs(split), threads=torch.get_num_threads(),
                  weights="float16" if args.ship else "float32")
    atomic_write_json(out / ("eval-float16.json" if args.ship else "eval.json"), result)
    if not args.ship:
        return
    if failed:
        raise SystemExit("not shipped: a quality gate fails: " + "; ".join(failed))
    train = json.loads((out / "train.json").read_text())
    card = dict(model=MODEL, sites=SITES, arch="batchtopk", n_latents=train["latents"], k=train["k"],
                batch_size=train["batch_size"], seed=train["seed"], weights="float16",
                corpus=dict(train="english_corpus() + glossary_corpus(), shuffled together (seeded), held-out documents out",
                            train_docs=train["train_docs"], held_out=split),
                training=dict(tokens=train["tokens"], wall_s=round(train["wall_s_this_run"], 1),
                              tokens_per_s=round(train["tokens"] / train["wall_s_this_run"], 1),
                              threads=train["threads"], command="tools/train_feature_set.py"),
                gates=[dict(metric=k, bound=b, kind=w) for k, b, w in GATES], evaluation=result)
    with whole_folder(SHIP_TO) as tmp:
        for site in SITES:
            shutil.copytree(stage / site, tmp / site, copy_function=shutil.copyfile)   # package data: plain modes
            (tmp / site).chmod(0o755)
        atomic_write_json(tmp / "set.json", card)
        atomic_write_json(tmp / INDEX_FILE, dict(files=file_hashes(tmp)))
    print(f"shipped {len(SITES)} SAEs into {SHIP_TO}")


if __name__ == "__main__":
    main()
