"""Explained variance against training tokens for one site of the shipped feature set, trained by
llmri and by SAELens on the identical tokens (issue 20).

The tokens: ``--site`` (default ``resid.16``) of the default decoder over the shipped set's own
training corpus (``tools/train_feature_set.py``'s seeded shuffle of ``english_corpus()`` and
``glossary_corpus()``, its held-out documents left out), document by document in that order until
``--tokens`` activations are collected, every document's first token (the attention sink) left out.
Each budget in ``--budgets`` (fractions of ``--tokens``) is a whole run of both trainers on the
first ``budget`` of those activations, with the shipped set's settings (BatchTopK, 2048 latents,
k 40, batch 1024, llmri's default learning rate with a linear decay over the last 20 % of steps,
the same AuxK settings): a point of the curve is what a run of that many tokens ends with. Both
SAEs are evaluated by the same ``evaluate_sae`` on the same held-out documents (explained variance,
CE loss score, L0), SAELens' after ``save_inference_model`` and ``llmri.SAE.load``. The training
functions are ``benchmarks/sae_vs_saelens.py``'s. Writes ``OUT/curve.json`` and ``OUT/curve.png``.

    HF_HUB_OFFLINE=1 python benchmarks/feature_set_curve.py [--site resid.16] [--tokens 1500000]
        [--budgets 0.125,0.25,0.5,1] [--heldout-docs 200] [--out /tmp/llmri-feature-curve]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import llmri
from llmri.sae import SAE, evaluate_sae, train_sae
from llmri.store import scan_from_arrays

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sae_vs_saelens import scan_activations, train_saelens  # noqa: E402


def shipped_recipe():
    """``tools/train_feature_set.py`` as a module: its corpora and settings."""
    spec = importlib.util.spec_from_file_location("train_feature_set", HERE.parent / "tools" / "train_feature_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="resid.16")
    ap.add_argument("--tokens", type=int, default=1_500_000)
    ap.add_argument("--budgets", default="0.125,0.25,0.5,1")
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--heldout-docs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/llmri-feature-curve")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = shipped_recipe()
    train, held, _ = recipe.corpora(args.seed)
    heldout = held.subset(range(0, len(held), max(1, len(held) // args.heldout_docs)))
    model = llmri.load_model("default-decoder")

    # the first documents of the training order that hold --tokens tokens (first token left out)
    lengths = [len(ids) - 1 for ids in model.tokenizer(train.texts[: min(len(train), args.tokens // 5)])["input_ids"]]
    n_docs = int(np.searchsorted(np.cumsum(lengths), args.tokens)) + 1
    scan_dir = out / "scan"
    scan = llmri.scan(model, train.subset(range(n_docs)), scan_dir, sites=(args.site,), token_sites=(args.site,),
                      progress=True)
    x = scan_activations(scan, args.site)[: args.tokens].contiguous()
    print(f"{len(x)} tokens of {args.site} from {n_docs} training documents; held out: {len(heldout)} documents",
          flush=True)

    lr = 2e-4 / math.sqrt(args.latents / 2 ** 14)       # llmri's default for this width
    rows = []
    for frac in [float(f) for f in args.budgets.split(",")]:
        n = int(len(x) * frac)
        xs = x[:n].contiguous()
        dead_tokens = max(args.batch_size, min(10_000_000, n // 10))   # llmri's default
        sub = out / f"subset-{n}"
        shutil.rmtree(sub, ignore_errors=True)
        docs = math.ceil(n / 50)
        sub_scan = scan_from_arrays(sub, {}, labels=np.zeros(docs, dtype=int), model_name=scan.model_name,
                                    token_activations={args.site: xs.numpy()},
                                    lengths=[50] * (docs - 1) + [n - 50 * (docs - 1)])
        t = time.perf_counter()
        ours = train_sae(sub_scan, args.site, n_latents=args.latents, k=args.k, batch_size=args.batch_size, lr=lr,
                         dead_tokens=dead_tokens, seed=args.seed, skip_first=False, progress=False)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = train_saelens(xs, "batchtopk", args.latents, args.k, args.batch_size, 1, lr, dead_tokens, args.seed)
        t_theirs = time.perf_counter() - t
        shutil.rmtree(sub, ignore_errors=True)
        shutil.rmtree(out / "theirs", ignore_errors=True)
        theirs.save_inference_model(out / "theirs")
        theirs = SAE.load(out / "theirs")
        theirs.site = theirs.target_site = args.site
        row = dict(tokens=n)
        for name, sae, wall in (("llmri", ours, t_ours), ("saelens", theirs, t_theirs)):
            m = evaluate_sae(sae, model, heldout, progress=False)
            row[name] = dict(explained_variance=float(m["explained_variance"]), ce_loss_score=float(m["ce_loss_score"]),
                             l0=float(m["l0"]), dead_fraction=float(m["dead_fraction"]), train_s=round(wall, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        llmri.store.atomic_write_json(out / "curve.json", dict(site=args.site, latents=args.latents, k=args.k,
                                                               batch_size=args.batch_size, lr=lr, rows=rows,
                                                               heldout_docs=len(heldout),
                                                               threads=torch.get_num_threads()))
    plot(rows, args.site, out / "curve.png")
    shutil.rmtree(scan_dir, ignore_errors=True)
    print(f"curve: {out / 'curve.json'}, {out / 'curve.png'}")


def plot(rows: list[dict], site: str, path: Path) -> None:
    from llmri.viz import save_figure
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    toks = [r["tokens"] for r in rows]
    for name, label in (("llmri", "llmri"), ("saelens", "SAELens")):
        ax.plot(toks, [r[name]["explained_variance"] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out explained variance")
    ax.set_title(f"{site} of SmolLM2-135M-Instruct: BatchTopK, 2048 latents, k 40")
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
