"""The explain-and-score loop: windows -> explanation -> scores, with a random-explanation baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..engine import Constant, JobsFailed, as_engine
from ..errors import LlmriError
from ..model import Model, offline_tokenizer
from ..store import Scan
from .backends import Backend, LocalLM
from .examples import UnitExamples, top_units, unit_activations, unit_examples
from .prompts import EXPLAIN_PREFILL, clean_explanation, explanation_prompt
from .results import ExplainResult
from .scoring import CONVENTIONS, SCORERS, resolve_simulator, score

STYLES = ("bills", "delphi")
_SCORE_COLUMNS = {"simulation": "simulation_score", "detection": "detection_balanced_accuracy",
                  "fuzzing": "fuzzing_balanced_accuracy"}


class Explainer:
    """How units are explained and scored: the backend, the prompt style and the example counts.

    ``window`` tokens per example; ``n_explain`` top windows are shown to the explainer;
    the held-out set has ``per_quantile`` windows from each of ``n_quantiles`` activation
    quantiles plus ``n_non_activating`` windows where the unit is silent. ``simulator``: ``"pmi"``
    or ``"all_at_once"`` (see :func:`llmri.explain.scoring.simulate`); ``None`` picks ``"pmi"``
    on a backend that supports it (LocalLM) and ``"all_at_once"`` otherwise. ``convention``:
    how detection and fuzzing answers are counted, ``"llmri"`` or ``"delphi"``
    (:func:`llmri.explain.scoring.balanced_accuracy`).

    >>> ex = Explainer(backend=LocalLM("default-decoder"))                 # doctest: +SKIP
    >>> ex.explain_unit(examples)
    'numbers and digits'
    """

    def __init__(self, backend: Backend, style: str = "bills", window: int = 24, n_explain: int = 10,
                 n_quantiles: int = 5, per_quantile: int = 2, n_non_activating: int = 5,
                 max_new_tokens: int = 48, batch: int = 5, seed: int = 0, simulator: str | None = None,
                 convention: str = "llmri"):
        if not isinstance(backend, Backend):
            raise LlmriError(f"backend: expected llmri.LocalLM or llmri.OpenAICompatible, got {type(backend).__name__}")
        if style not in STYLES:
            raise LlmriError(f"style {style!r} is not one of {', '.join(STYLES)}")
        for name, v in (("window", window), ("n_explain", n_explain), ("n_quantiles", n_quantiles),
                        ("per_quantile", per_quantile), ("max_new_tokens", max_new_tokens), ("batch", batch)):
            if not isinstance(v, int) or v < 1:
                raise LlmriError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(n_non_activating, int) or n_non_activating < 0:
            raise LlmriError(f"n_non_activating must be a non-negative integer, got {n_non_activating!r}")
        if simulator is not None:
            resolve_simulator(backend, simulator)
        if convention not in CONVENTIONS:
            raise LlmriError(f"convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
        self.convention = convention
        self.backend, self.style, self.window, self.simulator = backend, style, window, simulator
        self.n_explain, self.n_quantiles, self.per_quantile = n_explain, n_quantiles, per_quantile
        self.n_non_activating, self.max_new_tokens, self.batch, self.seed = n_non_activating, max_new_tokens, batch, seed

    def examples(self, acts: np.ndarray, offsets, tokens, unit: int) -> UnitExamples | None:
        return unit_examples(acts, offsets, tokens, unit, window=self.window, n_explain=self.n_explain,
                             n_quantiles=self.n_quantiles, per_quantile=self.per_quantile,
                             n_non_activating=self.n_non_activating, seed=self.seed)

    def explain_unit(self, ex: UnitExamples) -> str:
        """One sentence explaining the unit from its explanation windows."""
        reply = self.backend.chat(explanation_prompt(ex.explain, ex.max_activation, self.style),
                                  max_tokens=self.max_new_tokens, seed=self.seed, prefill=EXPLAIN_PREFILL[self.style])
        return clean_explanation(reply)

    def score_unit(self, explanation: str, ex: UnitExamples, scorers=SCORERS) -> dict:
        return score(self.backend, explanation, ex, scorers=scorers, batch=self.batch, seed=self.seed,
                     simulator=self.simulator, convention=self.convention)


def _window_record(w, max_activation, simulated=None) -> dict:
    r = dict(doc=w.doc, start=w.start, tokens=w.tokens, activations=np.round(w.activations, 5).tolist(),
             scaled=w.scaled(max_activation).tolist())
    if simulated is not None:
        r["simulated"] = simulated
    return r


def _derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation without fixed points (each unit gets another unit's explanation)."""
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]            # i -> the unit after i in a random cycle


def explain_units(acts: np.ndarray, offsets, tokens, units, explainer: Explainer, scorers=SCORERS,
                  baseline: bool = True, progress: bool | None = None, out=None, page: bool = False,
                  meta: dict | None = None, engine="local", workers: int = 1, resources: dict | None = None,
                  address: str | None = None, retries: int | None = None) -> ExplainResult:
    """Explain and score units from their token activations ``acts`` ``[n_tokens, len(units)]``
    (corpus order, documents at ``offsets``); ``tokens(doc)`` gives a document's token strings.

    This is the source-agnostic core of :func:`explain`: any per-token activation array works.
    Each unit's backend calls (explain, then score; then the baseline) are one job on ``engine``
    (see :func:`explain`); the table is the same wherever they run.
    This analysis writes data only: ``page=True`` is refused here; the page is
    :func:`llmri.report.explain_page`, and ``llmri.explain`` (:func:`llmri.report.explain.explain`)
    writes both.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if page:
        raise LlmriError("page: llmri.explain.explain_units writes data only; build the page with "
                         "llmri.report.explain_page(result, out), or call llmri.explain(..., page=True)")

    engine = as_engine(engine, workers, resources, address, retries)
    scorers = _check_scorers(scorers)
    units = [int(u) for u in units]
    acts = np.asarray(acts, dtype=np.float32)
    if acts.ndim != 2 or acts.shape[1] != len(units):
        raise LlmriError(f"activations: expected shape [n_tokens, {len(units)}], got {list(acts.shape)}")
    be = explainer.backend
    if engine.remote and isinstance(be, LocalLM) and isinstance(be._spec, Model):
        raise LlmriError("backend: on Ray give LocalLM the model's name or folder (e.g. LocalLM('default-decoder')), "
                         "so that each worker loads its own copy (got a loaded Model)")
    if out is not None and be.cache_dir is None:
        be.set_cache(Path(out) / "calls")
    be.reset_stats()
    examples = {u: explainer.examples(acts[:, j], offsets, tokens, u) for j, u in enumerate(units)}
    live = [u for u in units if examples[u] is not None]
    explanations: dict[int, str] = {}
    scores: dict[int, dict] = {}
    usage: dict[int, dict] = {}
    base: dict[int, dict] = {}
    perm = _derangement(len(live), explainer.seed) if baseline else []

    state = Constant(explainer)   # each Ray worker holds its own copy (a LocalLM loads its model there)

    def run(jobs):
        try:
            return engine.map(run_job, jobs, state=state, done=lambda i: bar.update(1), threads=be.concurrency)
        except JobsFailed as e:
            raise e.reword(f"explain: {e.failed} of {e.total} units failed after {e.retries} retries ({e.why}); "
                           "rerun the same command: the calls already made are cached") from None

    bar = tqdm(total=len(live) + len(perm), unit="unit", desc=engine.label("explaining"),
               disable=None if progress is None else not progress, file=sys.stderr, dynamic_ncols=True)
    with bar, engine:
        for u, (text, s, use) in run([("explain", u, examples[u], scorers) for u in live]):
            explanations[u], scores[u], usage[u] = text, s, use
        jobs = [("score", u, examples[u], scorers, explanations[live[perm[i]]]) for i, u in enumerate(live[:len(perm)])]
        for u, s in run(jobs):
            base[u] = s
        got = engine.each(backend_stats, state)
    stats = {k: sum(s[k] for s, _ in got) for k in got[0][0]}   # summed over the workers' copies
    model_name = got[0][1]

    rows, records = [], []
    for u in units:
        ex = examples[u]
        row = {"unit": u, "explanation": explanations.get(u, ""), "n_examples": ex.n_examples if ex else 0,
               "max_activation": float(ex.max_activation) if ex else float(acts[:, units.index(u)].max(initial=0.0))}
        for name in scorers:
            col = _SCORE_COLUMNS[name]
            row[col] = scores.get(u, {}).get(col, np.nan)
            row[col.replace("_score", "").replace("_balanced_accuracy", "") + "_baseline"] = \
                base.get(u, {}).get(col, np.nan) if baseline else np.nan
        row["parse_failures"] = scores.get(u, {}).get("parse_failures", 0)
        row.update(usage.get(u, {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}))
        row["status"] = "ok" if ex is not None else "never activates"
        rows.append(row)
        rec = dict(row)
        if ex is not None:
            sim = scores[u].get("simulated") or [None] * len(ex.held_out)
            rec["explain_windows"] = [_window_record(w, ex.max_activation) for w in ex.explain]
            rec["held_out_windows"] = [_window_record(w, ex.max_activation, p) for w, p in zip(ex.held_out, sim)]
        records.append(rec)
    table = pd.DataFrame(rows)
    info = dict(meta or {}, backend=be.kind, model=model_name, style=explainer.style, scorers=list(scorers),
                convention=explainer.convention,
                window=explainer.window, n_explain=explainer.n_explain, n_quantiles=explainer.n_quantiles,
                per_quantile=explainer.per_quantile, n_non_activating=explainer.n_non_activating,
                seed=explainer.seed, units=units, stats=stats)
    if "simulation" in scorers:
        info["simulator"] = resolve_simulator(be, explainer.simulator)
    if engine.remote:
        info["engine"] = dict(engine=engine.kind, workers=engine.workers)
    res = ExplainResult(table, records, info)
    if out is not None:
        res.save(out)
    return res


def run_job(explainer: Explainer, job: tuple):
    """One independent piece of an explain run, the same locally and on a Ray worker:
    ``("explain", unit, examples, scorers)`` -> ``(unit, (explanation, scores, tokens used))``;
    ``("score", unit, examples, scorers, explanation)`` -> ``(unit, scores)`` (the baseline)."""
    kind, u, ex, scorers = job[:4]
    if kind == "score":
        return u, explainer.score_unit(job[4], ex, scorers)
    with explainer.backend.meter() as used:
        text = explainer.explain_unit(ex)
        s = explainer.score_unit(text, ex, scorers)
    return u, (text, s, used)


def backend_stats(explainer: Explainer) -> tuple[dict, str]:
    """The call statistics of ``explainer``'s backend (this worker's copy) and its model's name."""
    be = explainer.backend
    return dict(be.stats), be.model_name


def _check_scorers(scorers) -> tuple[str, ...]:
    if isinstance(scorers, str):
        scorers = (scorers,)
    scorers = tuple(scorers)
    bad = [s for s in scorers if s not in SCORERS]
    if bad or not scorers:
        raise LlmriError(f"scorers: {bad[0] if bad else 'none given'!r} is not one of {', '.join(SCORERS)}")
    return scorers


def _token_strings(scan, tokenizer):
    if tokenizer is None:
        tokenizer = offline_tokenizer(scan.model_name)
    if tokenizer is None:
        raise LlmriError(f"cannot load the tokenizer of {scan.model_name!r} offline; pass tokenizer=")
    cache: dict[int, list[str]] = {}

    def tokens(doc: int) -> list[str]:
        if doc not in cache:
            cache[doc] = [tokenizer.decode([int(i)]) for i in scan.token_ids(doc).tolist()]
        return cache[doc]
    return tokens


def explain(scan, site: str, units, explainer: Explainer, scorers=SCORERS, encoder=None, baseline: bool = True,
            tokenizer=None, out=None, page: bool = False, progress: bool | None = None, engine="local",
            workers: int = 1, resources: dict | None = None, address: str | None = None,
            meta: dict | None = None, retries: int | None = None) -> ExplainResult:
    """Explain and score units of a Scan with token-level records.

    Units are the neurons of ``site`` (e.g. ``"mlp.10"``), or, with ``encoder`` (an SAE: a
    callable or an object with ``encode`` mapping ``[n_tokens, d]`` to ``[n_tokens, n_features]``),
    its features. ``units`` is a list of indices or ``"top:K"`` (the K with the largest maximum).
    With ``out``, the tables are written there (the page is :func:`llmri.report.explain_page`;
    ``llmri.explain`` writes both) and every backend call is cached in ``out/calls``. ``engine`` says
    where the units run: ``"local"`` (``backend.concurrency`` units at a time, threads for HTTP
    backends) or an :class:`~llmri.Engine` (``engine="ray", workers=N, resources={"GPU": 1},
    address=..., retries=...`` makes one), whose workers each hold their own copy of the backend,
    sharing the cache.
    ``meta`` is stored in ``explain.json`` (e.g. ``{"sae": "runs/sae15"}``, which lets
    ``llmri sae report`` find the run beside that SAE).

    >>> ex = llmri.Explainer(backend=llmri.LocalLM("default-decoder"))              # doctest: +SKIP
    >>> res = llmri.explain(scan, "mlp.10", [12, 40], explainer=ex, out="runs/explain")
    >>> res.table[["unit", "explanation", "simulation_score", "simulation_baseline"]]
    """
    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    engine = as_engine(engine, workers, resources, address, retries)
    if not isinstance(explainer, Explainer):
        raise LlmriError(f"explainer: expected an llmri.Explainer, got {type(explainer).__name__}")
    scorers = _check_scorers(scorers)
    if isinstance(units, str):
        units = parse_units(units)
    if isinstance(units, tuple) and units[0] == "top":
        units = top_units(scan, site, units[1], encoder)
    units = [int(u) for u in units]
    if not units:
        raise LlmriError("units: none given")
    acts = unit_activations(scan, site, units, encoder)
    tokens = _token_strings(scan, tokenizer)
    meta = dict(meta or {}, scan=str(Path(scan.folder).resolve()), site=site,
                unit_kind="feature" if encoder is not None else "neuron")
    return explain_units(acts, scan.token_offsets, tokens, units, explainer, scorers=scorers, baseline=baseline,
                         progress=progress, out=out, page=page, meta=meta, engine=engine)


def parse_units(spec: str):
    """``"top:50"`` -> ("top", 50); ``"0:200"`` -> range; ``"3,5,9"`` -> list."""
    s = str(spec).strip()
    try:
        if s.startswith("top:"):
            k = int(s[4:])
            if k < 1:
                raise ValueError
            return ("top", k)
        if ":" in s:
            a, b = (int(x) for x in s.split(":"))
            if not 0 <= a < b:
                raise ValueError
            return list(range(a, b))
        out = [int(x) for x in s.split(",") if x.strip()]
        if not out or min(out) < 0:
            raise ValueError
        return out
    except ValueError:
        raise LlmriError(f"units {spec!r}: expected top:K, START:END or comma-separated indices, e.g. top:50, 0:200, 3,5,9") from None
