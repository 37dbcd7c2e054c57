"""bfloat16 against float32 where the decoder is used, not scanned: generation and steering,
explanations with the local LM, circuits, lesion maps and patching (issue 19, second table).

One process, the embedded decoder (SmolLM2-135M-Instruct) loaded once in float32. Each use runs
twice on the same weights: ``float32``, and ``bf16-mixed`` as ``dtype="auto"`` would run it if
``AUTO_BF16[use]`` were True (float32 weights, that use alone under bfloat16 autocast; every other
use stays float32, so a steering sweep's probe still reads its generations in float32). Where it
is cheap, a third side loads pure bfloat16 weights. Real text throughout: the bundled reviews
corpus for steering, planted units on filled-in templates for simulation, ``english_corpus``
for SAE training and lesion maps, fact prompts for circuits and patching.

Tolerances, written before measuring (``TOL``); a use that misses one stays float32 under auto:

- generation (16 prompts x 32 greedy tokens): >= 75 % of outputs identical to float32's, and the
  float32 model's negative log-likelihood per token of the bf16 continuations within 0.05 nats of
  that of its own (bf16 may choose other words, not worse ones);
- steering (``steer_sweep``, reviews, alphas -6..6): the probe-scored effect
  ``mean p_positive(alpha) - mean p_positive(0)`` within 0.05 per alpha, same sign wherever the
  float32 effect exceeds 0.05;
- explanations (``score`` with LocalLM, the same explanations of planted units): each
  simulation score within 0.05, Spearman across (unit, explanation) pairs >= 0.9;
- circuits (``attribute`` with SAEs on 4 layers): Spearman of node attributions >= 0.95 on
  average and >= 0.9 on every prompt; ``validate_circuit`` top-k drops within 0.1 nats and the
  single-ablation Spearman within 0.1;
- lesion maps (``lesion_map``, language-model loss) and patching (``patch``, resid): Spearman of
  effects >= 0.95, top-10 overlap >= 8, largest difference <= 0.05 (lesions: of the loss, nats;
  patching: of the restored share).

Speed goals (bf16-mixed / float32 time, issue 19): generation <= 0.45, explanation+simulation of
one unit with LocalLM <= 0.40, ``attribute`` <= 0.60 if it passes fidelity. Times are the minimum
of ``--repeat`` runs per side, sides interleaved, in one process.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python3 benchmarks/bf16_decoder.py [--quick] [--out runs/bf16-decoder]

Two sides only time or diagnose: ``cast-once`` (bf16-mixed with the Linear weights cast once for
the call instead of on every forward: the same numbers, the speed a cast-once policy would give)
and ``mixed+f32-head`` (bf16-mixed with the unembedding in float32, added after the first full run
showed greedy near-ties and small log-probability differences moving: its own verdict column).
``lesion_encoder`` (added after the first run, the decoder's lesion tolerances) checks the shared
key ``"lesion"`` on the embedded encoder, whose lesion maps measure representation change.

``--only generation,steering,explain,circuits,lesion,lesion_encoder,patch`` runs some parts (their
results replace those parts in an existing ``OUT/decoder.json``); ``--saes FOLDER`` uses SAEs of resid
sites you trained (default: trained here once, kept in ``OUT/saes``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import llmri  # noqa: E402
from llmri import precision as model_mod  # noqa: E402

TOL = dict(gen_identical=0.75, gen_nll=0.05, steer_effect=0.05, steer_sign=0.05, sim_abs=0.05,
           sim_spearman=0.9, attr_spearman_mean=0.95, attr_spearman_min=0.9, faith_drop=0.1,
           faith_spearman=0.1, effect_spearman=0.95, top10=8, lesion_abs=0.05, patch_abs=0.05)
GOALS = dict(generate=0.45, lm=0.40, attribute=0.60)
PARTS = ("generation", "steering", "explain", "circuits", "lesion", "lesion_encoder", "patch")

PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how a bicycle works.",
    "Describe your ideal weekend in the mountains.", "What are the benefits of learning a second language?",
    "Give me three tips for cooking rice.", "Why is the sky blue?", "Tell me about the history of tea.",
    "How do plants make their food?", "Write a letter to a friend who moved away.",
    "What should I pack for a beach holiday?", "Explain what a computer program is to a child.",
    "Describe a busy market in the morning.", "How can I sleep better at night?",
    "What makes a good teacher?", "Summarise the water cycle.", "Write a poem about autumn leaves.",
]
STEER_PROMPTS = ["How was the hotel?", "Tell me about your weekend.", "What did you think of the film?",
                 "How was the restaurant last night?"]
FACTS = ["The capital of France is", "The Eiffel Tower is located in the city of", "The opposite of hot is",
         "The largest planet in the solar system is", "Two plus two equals", "The day after Friday is",
         "The chemical symbol for gold is", "Monday, Tuesday, Wednesday,"]
PATCH_PAIRS = [("The capital of France is", "The capital of Italy is"),
               ("The sister of the king is the", "The brother of the king is the")]
UNRELATED = "words about cooking and food"


# ------------------------------------------------------------------ the sides
@contextlib.contextmanager
def only(use: str):
    """``AUTO_BF16`` as if ``use`` alone were on: what adding that entry would change."""
    saved = dict(model_mod.AUTO_BF16)
    model_mod.AUTO_BF16.clear()
    model_mod.AUTO_BF16[use] = True
    try:
        yield
    finally:
        model_mod.AUTO_BF16.clear()
        model_mod.AUTO_BF16.update(saved)


class Sides:
    """The decoder as each side runs it, on shared float32 weights (plus bf16 weights if asked)."""

    def __init__(self, bf16_weights: bool):
        base = llmri.load_model("default-decoder", dtype="float32")
        native = model_mod.native_bf16(base.device)
        # auto + AUTO_BF16[use] is bf16-mixed for that use on native hardware; elsewhere ask for it
        self.note = "" if native else "no native bfloat16 here: the bf16 side is bf16-mixed for every use"
        self.models = {"float32": dataclasses.replace(base, precision="float32"),
                       "bf16-mixed": dataclasses.replace(base, precision="auto" if native else "bf16-mixed")}
        self.bf16_weights = bf16_weights
        self._bf16 = None

    def names(self, cheap: bool = False) -> list[str]:
        return list(self.models) + [HEAD] + (["bfloat16"] if cheap and self.bf16_weights else [])

    def get(self, name: str):
        if name in (CAST_ONCE, HEAD):
            return self.models["bf16-mixed"]
        if name == "bfloat16":
            if self._bf16 is None:
                self._bf16 = llmri.load_model("default-decoder", dtype="bfloat16")
            return self._bf16
        return self.models[name]

    @property
    def f32(self):
        return self.models["float32"]


CAST_ONCE = "cast-once"
HEAD = "mixed+f32-head"


@contextlib.contextmanager
def f32_head(model):
    """A diagnostic variant of bf16-mixed (added after the first full run): the unembedding
    (``lm_head``) computed in float32, everything else as bf16-mixed. Under autocast the logits
    come out of a bf16 matrix product, rounded to 8 bits of mantissa (steps of 0.06-0.125 for
    logits of 10-20), which makes near-ties exact and blurs log-probability differences."""
    import torch

    head = model.module.get_output_embeddings()
    plain = head.forward

    def forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return plain(x.float())
    head.forward = forward
    try:
        yield
    finally:
        del head.forward


@contextlib.contextmanager
def cast_once(model):
    """A timing-only variant of bf16-mixed: every Linear weight but the (tied) embedding held in
    bfloat16 for the block, float32 masters restored on exit. Autocast would round the same weights
    the same way, so results equal bf16-mixed's; only the per-forward weight casts are gone. It
    measures what casting once per model, not once per forward, would give."""
    import torch

    emb = model.module.get_input_embeddings().weight
    kept = [(m.weight, m.weight.data) for m in model.module.modules()
            if isinstance(m, torch.nn.Linear) and m.weight is not emb]
    for w, data in kept:
        w.data = data.to(torch.bfloat16)
    try:
        yield
    finally:
        for w, data in kept:
            w.data = data


def run_side(sides, name: str, fn):
    """``fn(model)`` for one side, inside cast_once for the cast-once side."""
    model = sides.get(name)
    ctx = {CAST_ONCE: cast_once, HEAD: f32_head}.get(name, lambda m: contextlib.nullcontext())
    with ctx(model):
        return fn(model)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def interleaved(fns: dict, repeat: int) -> dict:
    """The minimum wall time of ``repeat`` runs of each function, runs interleaved."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            best[k] = min(best[k], timed(fn)[1])
    return best


def ratios(times: dict) -> dict:
    return {k: round(v / times["float32"], 3) for k, v in times.items() if k != "float32"}


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top_overlap(a, b, k: int = 10) -> int:
    a, b = np.abs(np.asarray(a, float)), np.abs(np.asarray(b, float))
    return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k]))


# ------------------------------------------------------------------ 1. generation
def continuation_nll(model, prompts, outs) -> float:
    """The float32 model's mean negative log-likelihood per token of each continuation."""
    import torch

    from llmri.batches import chat_prompt

    tok, total, count = model.tokenizer, 0.0, 0
    for p, o in zip(prompts, outs):
        pre = tok(chat_prompt(model, p, True, None), add_special_tokens=False)["input_ids"]
        new = tok(o, add_special_tokens=False)["input_ids"]
        if not new:
            continue
        x = torch.tensor([pre + new])
        with torch.inference_mode():
            lp = torch.log_softmax(model.module(input_ids=x).logits[0, len(pre) - 1:-1].float(), -1)
        total -= float(lp[torch.arange(len(new)), torch.tensor(new)].sum())
        count += len(new)
    return total / max(count, 1)


def first_divergence(tok, a: str, b: str) -> int | None:
    """The first token (re-tokenised) where two generations differ; None if they are equal."""
    if a == b:
        return None
    x, y = tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"]
    return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))


def generation(sides: Sides, args) -> dict:
    prompts = PROMPTS[:args.gen_prompts]
    out, times = {}, {}
    llmri.generate(sides.f32, prompts[:2], max_new_tokens=4)    # warm-up: the first call pays imports
    with only("generate"):
        for name in sides.names(cheap=True):
            out[name], times[name] = timed(lambda: run_side(sides, name, lambda m: llmri.generate(
                m, prompts, max_new_tokens=args.tokens)))
        short = PROMPTS[:4]
        speed = interleaved({n: (lambda n=n: run_side(sides, n, lambda m: llmri.generate(m, short, max_new_tokens=args.tokens)))
                             for n in sides.names(cheap=True) + [CAST_ONCE] if n != HEAD}, args.repeat)
    tok = sides.f32.tokenizer
    nll32 = continuation_nll(sides.f32, prompts, out["float32"])
    rows = {}
    for name in out:
        if name == "float32":
            continue
        div = [first_divergence(tok, a, b) for a, b in zip(out["float32"], out[name])]
        moved = [d for d in div if d is not None]
        nll = continuation_nll(sides.f32, prompts, out[name])
        rows[name] = dict(identical=float(np.mean([d is None for d in div])), first_divergence=moved,
                          mean_first_divergence=float(np.mean(moved)) if moved else None,
                          nll_f32=nll32, nll=nll, nll_diff=nll - nll32,
                          examples=[(p, a, b) for p, a, b, d in zip(prompts, out["float32"], out[name], div)
                                    if d is not None][:3])
    return dict(prompts=len(prompts), tokens=args.tokens, fidelity=rows, time_16=times,
                time_4=speed, ratio_4=ratios(speed), ratio_16=ratios(times))


def generation_misses(r, side: str = "bf16-mixed") -> list[str]:
    m = r["fidelity"][side]
    bad = []
    if m["identical"] < TOL["gen_identical"]:
        bad.append(f"{m['identical']:.0%} of generations identical")
    if m["nll_diff"] > TOL["gen_nll"]:
        bad.append(f"NLL of the bf16 generations +{m['nll_diff']:.3f} nats/token")
    return bad


# ------------------------------------------------------------------ 2. steering
def steering(sides: Sides, args, out: Path) -> dict:
    scan = llmri.scan(sides.f32, llmri.reviews_corpus(), out / "reviews-scan", layers=[6, 16], progress=False)
    alphas = [-6.0, -3.0, 0.0, 3.0, 6.0] if not args.quick else [-6.0, 0.0, 6.0]
    prompts = STEER_PROMPTS[:2 if args.quick else 4]
    dfs, times = {}, {}
    with only("generate"):
        for name in sides.names():
            dfs[name], times[name] = timed(lambda: run_side(sides, name, lambda m: llmri.steer_sweep(
                m, scan, "positive", "negative", layer=6, alphas=alphas, prompts=prompts,
                probe_layer=16, max_new_tokens=args.tokens)))
    eff = {}
    for name, df in dfs.items():
        m = df.groupby("alpha")["p_positive"].mean()
        eff[name] = {f"{a:+g}": float(m[a] - m[0.0]) for a in alphas}  # keys as JSON writes them
    a32, b16 = dfs["float32"], dfs["bf16-mixed"]
    return dict(alphas=alphas, prompts=len(prompts), effect=eff,
                p_positive={n: df.groupby("alpha")["p_positive"].mean().round(4).to_dict() for n, df in dfs.items()},
                identical=float(np.mean(a32["generation"].to_numpy() == b16["generation"].to_numpy())),
                time=times, ratio=ratios(times))


def steering_misses(r, side: str = "bf16-mixed") -> list[str]:
    bad = []
    for a, e32 in r["effect"]["float32"].items():
        e16 = r["effect"][side][a]
        if abs(e16 - e32) > TOL["steer_effect"]:
            bad.append(f"alpha {a}: effect {e16:+.3f} vs {e32:+.3f}")
        elif abs(e32) > TOL["steer_sign"] and np.sign(e16) != np.sign(e32):
            bad.append(f"alpha {a}: effect changes sign")
    return bad


# ------------------------------------------------------------------ 3. explanations
def explain(sides: Sides, args, out: Path) -> dict:
    from llmri.explain import Explainer, LocalLM, score
    from llmri.explain.examples import unit_examples
    from llmri.explain.planted import EXPLANATIONS, planted_units

    tok = sides.f32.tokenizer
    docs, offsets, acts, names = planted_units(tok, n_docs=48)
    names = names[:3] if args.quick else names
    exs = {n: unit_examples(acts[:, j], offsets, lambda d: docs[d], j, window=12, n_explain=5, n_quantiles=2,
                            per_quantile=2, n_non_activating=2) for j, n in enumerate(names)}
    explanations = [EXPLANATIONS[n] for n in names] + [UNRELATED]
    simulators = ("pmi",) if args.quick else ("pmi", "all_at_once")
    scores, times = {}, {}
    with only("lm"):
        for name in sides.names(cheap=True):
            # a call cache per side: the neutral pmi prompt is shared within a side, never across
            shutil.rmtree(out / f"explain-cache-{name}", ignore_errors=True)   # a rerun must not read old answers
            lm = LocalLM(sides.get(name), cache_dir=out / f"explain-cache-{name}")
            scores[name], times[name] = timed(lambda: run_side(sides, name, lambda _: {
                sim: [[score(lm, e, exs[n], scorers=("simulation",), simulator=sim)["simulation_score"]
                       for e in explanations] for n in names] for sim in simulators}))
        # one unit explained and its explanation scored (pmi), no cache: the cost of `llmri explain` per unit
        unit = exs[names[0]]
        lms = {n: LocalLM(sides.get(n)) for n in sides.names(cheap=True) + [CAST_ONCE] if n != HEAD}
        said = {}

        def one(n):
            ex = Explainer(lms[n], window=12, n_explain=5, n_quantiles=2, per_quantile=2, n_non_activating=2,
                           max_new_tokens=32)
            said[n] = ex.explain_unit(unit)
            return ex.score_unit(said[n], unit, scorers=("simulation",))["simulation_score"]
        speed = interleaved({n: (lambda n=n: run_side(sides, n, lambda _: one(n))) for n in lms}, args.repeat)
    rows = {}
    for name in scores:
        if name == "float32":
            continue
        rows[name] = {}
        for sim in simulators:
            a, b = np.array(scores["float32"][sim]), np.array(scores[name][sim])
            right = lambda s: int(sum(s[j, j] == s[j].max() for j in range(len(names))))
            rows[name][sim] = dict(max_abs=float(np.nanmax(np.abs(a - b))), mean_abs=float(np.nanmean(np.abs(a - b))),
                                   spearman=spearman(a.ravel(), b.ravel()), right_first_f32=right(a),
                                   right_first=right(b))
    assert said[CAST_ONCE] == said["bf16-mixed"], "cast-once must compute what bf16-mixed does"
    return dict(units=names, explanations=explanations, scores=scores, fidelity=rows, time_scores=times,
                ratio_scores=ratios(times), explained=said, time_unit=speed, ratio_unit=ratios(speed))


def explain_misses(r, side: str = "bf16-mixed") -> list[str]:
    bad = []
    for sim, m in r["fidelity"][side].items():
        if m["max_abs"] > TOL["sim_abs"]:
            bad.append(f"{sim}: a simulation score moves by {m['max_abs']:.3f}")
        if not m["spearman"] >= TOL["sim_spearman"]:
            bad.append(f"{sim}: Spearman {m['spearman']:.3f}")
    return bad


# ------------------------------------------------------------------ 4. circuits
SAE_LAYERS = (4, 10, 16, 22)


def circuit_saes(sides: Sides, args, out: Path) -> list:
    """BatchTopK SAEs of resid at SAE_LAYERS, trained once on english_corpus and kept in OUT/saes."""
    from llmri.circuits import load_saes

    folder = Path(args.saes) if args.saes else out / "saes"
    if not folder.is_dir():
        layers = SAE_LAYERS[::2] if args.quick else SAE_LAYERS
        sites = [f"resid.{L}" for L in layers]
        print(f"[circuits] training SAEs at {', '.join(sites)} (kept in {folder}) ...", flush=True)
        scan = llmri.scan(sides.f32, llmri.english_corpus(max_docs=150 if args.quick else 600, seed=0),
                          out / "sae-scan", sites=("resid",), layers=list(layers), token_sites=tuple(sites),
                          progress=False)
        trained = llmri.train_sae(scan, sites, n_latents=2048, k=32, epochs=2, progress=False)
        for site, sae in trained.items():
            sae.save(folder / site)
    return load_saes(folder, sides.f32)


def node_table(g):
    df = g.features
    return {(s, int(p), int(f)): float(a) for s, p, f, a in zip(df["site"], df["position"], df["feature"],
                                                               df["attribution"])}


def circuits(sides: Sides, args, out: Path) -> dict:
    from llmri.circuits import attribute, validate_circuit

    saes = circuit_saes(sides, args, out)
    prompts = FACTS[:3 if args.quick else len(FACTS)]
    nodes = 30 if args.quick else 100
    rows, times = [], {n: 0.0 for n in sides.names()}
    with only("attribute"):
        for p in prompts:
            g, v = {}, {}
            for name in sides.names():
                target = None if name == "float32" else g["float32"].target
                g[name], t = timed(lambda: run_side(sides, name, lambda m: attribute(
                    m, saes, p, target=target, max_feature_nodes=nodes)))
                times[name] += t
                v[name] = run_side(sides, name, lambda m: validate_circuit(m, saes, g[name], k=(5, 10), n_random=3,
                                                                           n_single=10, seed=0))
            a, b = node_table(g["float32"]), node_table(g["bf16-mixed"])
            keys = sorted(set(a) | set(b))
            va, vb = [a.get(k, 0.0) for k in keys], [b.get(k, 0.0) for k in keys]
            c = node_table(g[HEAD])
            kc = sorted(set(a) | set(c))
            rows.append(dict(prompt=p, target=g["float32"].target, nodes_f32=len(a), nodes_bf16=len(b),
                             shared=len(set(a) & set(b)), spearman=spearman(va, vb), top20=top_overlap(va, vb, 20),
                             spearman_head=spearman([a.get(k, 0.0) for k in kc], [c.get(k, 0.0) for k in kc]),
                             metric=[float(g[n].metric) for n in sides.names()],
                             top_drop={n: [r["top_drop"] for r in v[n]["topk"]] for n in v},
                             random_drop={n: [r["random_drop_mean"] for r in v[n]["topk"]] for n in v},
                             single_spearman={n: v[n]["single"]["spearman"] for n in v}))
            print(f"  {p!r} -> {rows[-1]['target']!r}: node Spearman {rows[-1]['spearman']:.3f}", flush=True)
        speed = interleaved({n: (lambda n=n: run_side(sides, n, lambda m: attribute(
            m, saes, prompts[0], target=rows[0]["target"], max_feature_nodes=nodes)))
            for n in sides.names() + [CAST_ONCE] if n != HEAD}, args.repeat)
    sp = [r["spearman"] for r in rows]
    return dict(sites=[s.site for s in saes], d_sae=saes[0].d_sae, max_feature_nodes=nodes, rows=rows,
                spearman_mean=float(np.mean(sp)), spearman_min=float(np.min(sp)), time_all=times,
                ratio_all=ratios(times), time_one=speed, ratio_one=ratios(speed))


def circuit_misses(r, side: str = "bf16-mixed") -> list[str]:
    bad = []
    sp = [row["spearman" if side == "bf16-mixed" else "spearman_head"] for row in r["rows"]]
    if not np.mean(sp) >= TOL["attr_spearman_mean"]:
        bad.append(f"mean node-attribution Spearman {np.mean(sp):.3f}")
    if not np.min(sp) >= TOL["attr_spearman_min"]:
        bad.append(f"lowest node-attribution Spearman {np.min(sp):.3f}")
    for row in r["rows"]:
        d = np.abs(np.subtract(row["top_drop"][side], row["top_drop"]["float32"]))
        if d.max() > TOL["faith_drop"]:
            bad.append(f"{row['prompt']!r}: a top-k drop moves by {d.max():.3f}")
        s32, s16 = row["single_spearman"]["float32"], row["single_spearman"][side]
        if abs(s16 - s32) > TOL["faith_spearman"]:
            bad.append(f"{row['prompt']!r}: single-ablation Spearman {s16:.3f} vs {s32:.3f}")
    return bad


# ------------------------------------------------------------------ 5. lesion and patching
def effect_compare(a, b, key: str) -> dict:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return dict(spearman=spearman(a, b), top10=top_overlap(a, b), max_abs=float(np.abs(a - b).max()), n=len(a),
                key=key)


def lesion(sides: Sides, args, out: Path) -> dict:
    corpus = llmri.english_corpus(max_docs=6 if args.quick else 12, seed=1)
    layers = [14] if args.quick else [2, 14, 26]
    dfs, times = {}, {}
    with only("lesion"):
        for name in sides.names(cheap=True):
            dfs[name], times[name] = timed(lambda: run_side(sides, name, lambda m: llmri.lesion_map(
                m, corpus, layers=layers, progress=False)))
        small = llmri.Corpus(corpus.texts[:6], [corpus.label_names[i] for i in corpus.labels[:6]])
        speed = interleaved({n: (lambda n=n: run_side(sides, n, lambda m: llmri.lesion_map(
            m, small, layers=[14], progress=False))) for n in sides.names(cheap=True) if n != HEAD}, args.repeat)
    cmp = {n: dict(effect_compare(dfs["float32"]["effect"], dfs[n]["effect"], "effect"),
                   baseline_diff=float(dfs[n].attrs["baseline"] - dfs["float32"].attrs["baseline"]))
           for n in dfs if n != "float32"}
    return dict(layers=layers, docs=len(corpus.texts), lesions=len(dfs["float32"]), fidelity=cmp,
                baseline={n: float(d.attrs["baseline"]) for n, d in dfs.items()}, time_once=times,
                ratio_once=ratios(times), time=speed, ratio=ratios(speed))


def lesion_encoder(sides: Sides, args, out: Path) -> dict:
    """The key "lesion" is shared by encoders, whose lesion maps measure the change of the pooled
    last residual (1 - cosine): the same comparison on the embedded encoder and the topic corpus."""
    enc = llmri.load_model("default", dtype="float32")
    mixed = "auto" if model_mod.native_bf16(enc.device) else "bf16-mixed"
    c = llmri.demo_corpus("topics")
    c = llmri.Corpus(c.texts[::8 if args.quick else 4], [c.label_names[i] for i in c.labels[::8 if args.quick else 4]])
    dfs, times = {}, {}
    with only("lesion"):
        for name, prec in (("float32", "float32"), ("bf16-mixed", mixed)):
            dfs[name], times[name] = timed(lambda: llmri.lesion_map(dataclasses.replace(enc, precision=prec), c,
                                                                     layers=[0, 2, 5], progress=False))
    return dict(measure=dfs["float32"].attrs["measure"], docs=len(c.texts), lesions=len(dfs["float32"]),
                fidelity={"bf16-mixed": effect_compare(dfs["float32"]["effect"], dfs["bf16-mixed"]["effect"], "effect")},
                time_once=times, ratio_once=ratios(times))


def patch(sides: Sides, args, out: Path) -> dict:
    res, times = {}, {n: 0.0 for n in sides.names(cheap=True)}
    pairs = PATCH_PAIRS[:1] if args.quick else PATCH_PAIRS
    with only("patch"):
        for name in sides.names(cheap=True):
            res[name] = []
            for clean, corrupted in pairs:
                r, t = timed(lambda: run_side(sides, name, lambda m: llmri.patch(m, clean, corrupted, sites=("resid",),
                                                                                  progress=False)))
                res[name].append(r.scores["restored"].to_numpy())
                times[name] += t
        clean, corrupted = pairs[0]
        speed = interleaved({n: (lambda n=n: run_side(sides, n, lambda m: llmri.patch(
            m, clean, corrupted, sites=("resid",), progress=False))) for n in sides.names(cheap=True) if n != HEAD},
            args.repeat)
    cmp = {n: effect_compare(np.concatenate(res["float32"]), np.concatenate(res[n]), "restored")
           for n in res if n != "float32"}
    return dict(pairs=pairs, fidelity=cmp, time_once=times, ratio_once=ratios(times), time=speed, ratio=ratios(speed))


def effect_misses(r, what: str, side: str = "bf16-mixed") -> list[str]:
    m = r["fidelity"][side]
    bad = []
    if not m["spearman"] >= TOL["effect_spearman"]:
        bad.append(f"Spearman of {what} effects {m['spearman']:.3f}")
    if m["top10"] < TOL["top10"]:
        bad.append(f"top-10 overlap {m['top10']}")
    if m["max_abs"] > TOL["lesion_abs" if what == "lesion" else "patch_abs"]:
        bad.append(f"largest difference {m['max_abs']:.3f}")
    return bad


# ------------------------------------------------------------------ the table
def _r(d: dict, key: str = "bf16-mixed") -> str:
    return "-" if d is None or key not in d else f"{d[key]:.2f}"


def table_rows(res: dict) -> list[tuple]:
    rows = []
    if "generation" in res:
        r = res["generation"]
        m = r["fidelity"]["bf16-mixed"]
        w = r["fidelity"].get("bfloat16")
        rows.append(("generate", f">= {TOL['gen_identical']:.0%} identical; NLL +<= {TOL['gen_nll']}",
                     f"{m['identical']:.0%} identical, first divergence at token {m['mean_first_divergence'] or 0:.1f}"
                     f" (mean); NLL {m['nll_diff']:+.3f}" + (f"; bf16 weights {w['identical']:.0%}, {w['nll_diff']:+.3f}"
                                                               if w else ""),
                     r["misses"], f"{_r(r['ratio_4'])} (cast once {_r(r['ratio_4'], CAST_ONCE)}, bf16 weights {_r(r['ratio_4'], 'bfloat16')})"))
    if "steering" in res:
        r = res["steering"]
        e32, e16 = r["effect"]["float32"], r["effect"]["bf16-mixed"]
        rows.append(("steer sweep (generate)", f"effect within {TOL['steer_effect']}, same sign",
                     "; ".join(f"{a}: {e16[a]:+.3f}/{e32[a]:+.3f}" for a in e32 if float(a) != 0.0)
                     + f"; {r['identical']:.0%} generations identical", r["misses"], _r(r["ratio"])))
    if "explain" in res:
        r = res["explain"]
        f = r["fidelity"]["bf16-mixed"]
        rows.append(("LocalLM (lm)", f"scores within {TOL['sim_abs']}, Spearman >= {TOL['sim_spearman']}",
                     "; ".join(f"{s}: max diff {m['max_abs']:.3f}, Spearman {m['spearman']:.3f}" for s, m in f.items()),
                     r["misses"], f"{_r(r['ratio_unit'])} one unit (cast once {_r(r['ratio_unit'], CAST_ONCE)}, bf16 weights "
                     f"{_r(r['ratio_unit'], 'bfloat16')}); scoring {_r(r['ratio_scores'])}"))
    if "circuits" in res:
        r = res["circuits"]
        worst = max(max(abs(a - b) for a, b in zip(x["top_drop"]["bf16-mixed"], x["top_drop"]["float32"]))
                    for x in r["rows"])
        rows.append(("attribute / validate_circuit", f"Spearman mean >= {TOL['attr_spearman_mean']}, min >= "
                     f"{TOL['attr_spearman_min']}; drops within {TOL['faith_drop']}",
                     f"Spearman mean {r['spearman_mean']:.3f}, min {r['spearman_min']:.3f}; top-k drops move <= {worst:.3f}",
                     r["misses"], f"{_r(r['ratio_one'])} (cast once {_r(r['ratio_one'], CAST_ONCE)})"))
    for key, what, tol in (("lesion", "lesion_map", TOL["lesion_abs"]),
                           ("lesion_encoder", "lesion_map, encoder (representation)", TOL["lesion_abs"]),
                           ("patch", "patch", TOL["patch_abs"])):
        if key in res:
            r = res[key]
            m = r["fidelity"]["bf16-mixed"]
            w = r["fidelity"].get("bfloat16")
            rows.append((what, f"Spearman >= {TOL['effect_spearman']}, top-10 >= {TOL['top10']}, max diff <= {tol}",
                         f"Spearman {m['spearman']:.3f}, top-10 {m['top10']}, max diff {m['max_abs']:.3f}"
                         + (f"; bf16 weights {w['spearman']:.3f}, {w['top10']}, {w['max_abs']:.3f}" if w else ""),
                         r["misses"], f"{_r(r['ratio'])} (bf16 weights {_r(r['ratio'], 'bfloat16')})" if "ratio" in r
                         else f"{_r(r['ratio_once'])} (one run)"))
    return rows


PART_OF = {"generate": "generation", "steer sweep (generate)": "steering", "LocalLM (lm)": "explain",
           "attribute / validate_circuit": "circuits", "lesion_map": "lesion",
           "lesion_map, encoder (representation)": "lesion_encoder", "patch": "patch"}


def verdict(misses) -> str:
    if misses is None:
        return "-"
    more = f" (and {len(misses) - 3} more)" if len(misses) > 3 else ""
    return "holds" if not misses else "fails: " + "; ".join(misses[:3]) + more


def markdown(res: dict) -> str:
    out = ["| use | tolerance (set before) | measured (bf16-mixed vs float32) | verdict | time ratio bf16-mixed / "
           "float32 | bf16-mixed with a float32 lm_head (diagnostic) |", "|---|---|---|---|---|---|"]
    for use, tol, got, misses, ratio in table_rows(res):
        head = res[PART_OF[use]].get("misses_" + HEAD)
        out.append(f"| {use} | {tol} | {got} | {verdict(misses)} | {ratio} | {verdict(head)} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts, units, layers and repeats (minutes)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {','.join(PARTS)}")
    ap.add_argument("--out", default="runs/bf16-decoder")
    ap.add_argument("--saes", default=None, help="a folder of resid SAE folders for the circuits part")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per side (default 3, quick 2)")
    ap.add_argument("--no-bf16-weights", action="store_true", help="skip the pure bfloat16-weights side")
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    args.repeat = args.repeat or (2 if args.quick else 3)
    args.tokens = 16 if args.quick else 32
    args.gen_prompts = 4 if args.quick else 16
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sides = Sides(bf16_weights=not args.no_bf16_weights)
    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
               load_average=os.getloadavg(), native_bf16=model_mod.native_bf16(sides.f32.device),
               device=str(sides.f32.device), quick=args.quick, repeat=args.repeat, note=sides.note)
    path = out / ("decoder-quick.json" if args.quick else "decoder.json")
    res = json.loads(path.read_text())["results"] if path.exists() else {}
    runners = dict(generation=(lambda: generation(sides, args), generation_misses),
                   steering=(lambda: steering(sides, args, out), steering_misses),
                   explain=(lambda: explain(sides, args, out), explain_misses),
                   circuits=(lambda: circuits(sides, args, out), circuit_misses),
                   lesion=(lambda: lesion(sides, args, out), lambda r, side="bf16-mixed": effect_misses(r, "lesion", side)),
                   lesion_encoder=(lambda: lesion_encoder(sides, args, out),
                                   lambda r, side="bf16-mixed": effect_misses(r, "lesion", side) if side in r["fidelity"]
                                   else None),
                   patch=(lambda: patch(sides, args, out), lambda r, side="bf16-mixed": effect_misses(r, "patch", side)))
    for part in parts:
        print(f"[{part}] ...", flush=True)
        run, misses = runners[part]
        r, t = timed(run)
        r["misses"], r["wall_s"] = misses(r), t
        r["misses_" + HEAD] = misses(r, HEAD)
        res[part] = r
        print(f"[{part}] {t:.0f} s; misses: {r['misses'] or 'none'}", flush=True)
        path.write_text(json.dumps(dict(tolerances=TOL, goals=GOALS, env=env, results=res), indent=1, default=str))
    print(f"\nwritten: {path}  (load average at start {env['load_average'][0]:.1f} on {env['cpus']} cores)\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
