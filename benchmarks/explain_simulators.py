"""Does the simulator read the explanation? Planted units scored with right and wrong explanations.

Five planted units (``llmri.explain.planted``: a unit firing exactly on digits, on the word
"and", on month names, on colour words, on names of people and places) are each scored by
simulation (Pearson r pooled over held-out tokens, Bills et al. 2023) with every unit's right
explanation and one unrelated explanation, once per simulator of the local backend
(SmolLM2-135M-Instruct, ``default-decoder``):

- ``all_at_once``: Bills et al.'s expected value over "0".."10" after each token;
- ``pmi``: the positive part of log p(token | explanation) - log p(token | content-free
  explanation), the token read as the model's answer to "on which word does it fire most?"
  (calibration as in Zhao et al. 2021 and Holtzman et al. 2021).

Printed: the unit x explanation table of each simulator, the margin of the right explanation
over the best wrong one, and the wall time with the number of model calls (calls answered from
``--cache`` cost nothing and are not counted).

Run: python benchmarks/explain_simulators.py [--docs 48] [--cache FOLDER]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import llmri  # noqa: E402
from llmri.explain import LocalLM, score  # noqa: E402
from llmri.explain.examples import unit_examples  # noqa: E402
from llmri.explain.planted import EXPLANATIONS, planted_units  # noqa: E402

UNRELATED = "words about cooking and food"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--cache", default=None, help="call cache folder (default: a new temporary one)")
    ap.add_argument("--simulators", default="all_at_once,pmi")
    args = ap.parse_args()
    model = llmri.load_model("default-decoder", dtype="float32")
    docs, offsets, acts, names = planted_units(model.tokenizer, n_docs=args.docs)
    exs = {n: unit_examples(acts[:, j], offsets, lambda d: docs[d], j, window=12, n_explain=2, n_quantiles=2,
                            per_quantile=2, n_non_activating=2) for j, n in enumerate(names)}
    explanations = [EXPLANATIONS[n] for n in names] + [UNRELATED]
    with tempfile.TemporaryDirectory() as tmp:
        lm = LocalLM(model, cache_dir=args.cache or tmp)
        print(f"{len(names)} planted units, {sum(len(e.held_out) for e in exs.values())} held-out windows of 12 "
              f"tokens; simulator model {model.name}")
        for sim in args.simulators.split(","):
            lm.reset_stats()
            t = time.perf_counter()
            table = {n: [score(lm, e, exs[n], scorers=("simulation",), simulator=sim)["simulation_score"]
                         for e in explanations] for n in names}
            dt = time.perf_counter() - t
            print(f"\n== simulator {sim}: {dt:.0f} s, {lm.stats['calls']} model calls "
                  f"({lm.stats['cache_hits']} from the cache)")
            print(f"{'unit':8s} " + " ".join(f"{e[:12]:>12s}" for e in explanations) + "   right - best wrong")
            margins = []
            for j, n in enumerate(names):
                row = table[n]
                margins.append(row[j] - max(r for i, r in enumerate(row) if i != j))
                print(f"{n:8s} " + " ".join(f"{r:+12.3f}" for r in row) + f"   {margins[-1]:+.3f}")
            right = np.array([table[n][j] for j, n in enumerate(names)])
            wrong = np.array([r for j, n in enumerate(names) for i, r in enumerate(table[n]) if i != j])
            print(f"mean r: right {right.mean():+.3f}, wrong {wrong.mean():+.3f}; right first on "
                  f"{sum(m > 0 for m in margins)}/{len(names)} units; mean margin {np.mean(margins):+.3f}")


if __name__ == "__main__":
    main()
