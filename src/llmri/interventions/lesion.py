"""Lesion maps: ablate each attention head and each layer's MLP in turn and measure the effect.

The lesions are jobs on an :class:`~llmri.Engine`: locally one pass over them all, on Ray every
``workers``-th lesion on the same worker; the table is the same.

>>> df = llmri.lesion_map("default-decoder", corpus, measure="loss")     # doctest: +SKIP
>>> df.sort_values("effect").tail()
"""

from __future__ import annotations

from functools import partial

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..batches import Batches
from ..corpus import Corpus
from ..engine import JobsFailed, as_engine
from ..errors import LlmriError
from ..model import Model
from ..precision import computing, precision_used
from ..sites import n_heads, recorded_blocks
from ..store import Scan
from .ablate import MODES, ablate
from .measures import MEASURES, make_measure

def lesion_map(model, corpus, measure="auto", mode: str = "zero", scan=None, layers=None,
               heads: bool = True, mlps: bool = True, batch_tokens: int = 8192, seed: int = 0,
               progress: bool | None = None, engine="local", workers: int = 1,
               resources: dict | None = None, address: str | None = None, retries: int | None = None,
               device: str = "auto", dtype: str = "auto") -> pd.DataFrame:
    """Ablate each attention head and each layer's MLP in turn and measure the effect.

    Returns a DataFrame with columns ``component`` (``head`` or ``mlp``), ``layer``, ``head``
    (-1 for an MLP), ``value`` and ``effect`` (value minus the unablated value); its ``attrs``
    hold the measure's name, the baseline and the precision used. ``engine`` says where the lesions run: ``"local"``,
    or an :class:`~llmri.Engine` (``engine="ray", workers=N, resources=..., address=...,
    retries=...`` makes one), which deals every ``workers``-th lesion to the same worker, each
    loading the model (``device``/``dtype`` apply when it is a name or folder); the table is the
    same. The blocks before a lesion's own are replayed from one recorded unablated pass instead
    of recomputed (see ``REPLAY_BYTES``); the table is the same.

    >>> df = llmri.lesion_map("default", corpus, layers=[5], engine="ray", workers=2)  # doctest: +SKIP
    """
    engine = as_engine(engine, workers, resources, address, retries)
    if mode not in MODES:
        raise LlmriError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not callable(measure) and measure not in MEASURES:
        raise LlmriError(f"measure {measure!r} is not one of auto, loss, representation, probe, or a function")
    corpus = _as_corpus(corpus)
    scan_dir = None if scan is None else str(engine.path(getattr(scan, "folder", scan)))
    state = engine.model_state(model, device, dtype)
    driver, quiet = engine.progress(progress)
    options = dict(measure=measure, mode=mode, scan=scan_dir, batch_tokens=batch_tokens, seed=seed, progress=quiet)
    with engine:
        jobs, precision = engine.map(_jobs_job, [(layers, heads, mlps)], state=state)[0]
        parts = [list(range(len(jobs)))[i::engine.workers] for i in range(engine.workers)]
        parts = [p for k, p in enumerate(parts) if p or k == 0]  # part 0 also measures the baseline
        bar = tqdm(total=len(jobs), unit="lesion", desc=engine.label("lesions"),
                   disable=None if driver is None else not driver, dynamic_ncols=True)
        with bar:
            try:
                results = engine.map(partial(_values_job, corpus, options),
                                     [([jobs[j] for j in p], k == 0) for k, p in enumerate(parts)], state=state,
                                     done=lambda k: bar.update(len(parts[k])))
            except JobsFailed as e:
                raise e.reword(f"lesion map: {e.failed} of {e.total} parts failed after {e.retries} retries "
                               f"({e.why}); rerun the same command") from None
    values = [0.0] * len(jobs)
    for k, (name, base, vals) in enumerate(results):
        for j, v in zip(parts[k], vals):
            values[j] = v
        if k == 0:
            baseline = base
    return lesion_table(jobs, values, name, baseline, mode, precision)


def _jobs_job(model: Model, args: tuple) -> tuple[list[tuple], str]:
    return lesion_jobs(model, *args), precision_used(model, "lesion")


def _values_job(corpus, options: dict, model: Model, part: tuple) -> tuple[str, float | None, list[float]]:
    jobs, baseline = part
    options = dict(options)
    scan = options.pop("scan")
    return lesion_values(model, corpus, jobs, scan=Scan.open(scan) if scan else None, baseline=baseline, **options)


def _as_corpus(corpus):
    return Corpus(list(corpus)) if isinstance(corpus, (list, tuple)) else corpus


def check_layers(layers, n: int) -> None:
    """One line naming the first of ``layers`` outside a model of ``n`` blocks (negative ones count
    from the end, as in Python)."""
    for L in layers or []:
        if not -n <= L < n:
            raise LlmriError(f"layer {L} is out of range: the model has layers 0..{n - 1}")


def lesion_jobs(model: Model, layers=None, heads: bool = True, mlps: bool = True) -> list[tuple]:
    """The lesions of a lesion map, in table order: ``(component, layer, head, ablate spec)``."""
    n = model.n_layers
    check_layers(layers, n)
    layers = list(range(n)) if layers is None else [L % n for L in layers]
    H = n_heads(model.module)
    return ([("head", L, h, {f"attn.{L}": [h]}) for L in layers for h in range(H)] if heads else []) + \
           ([("mlp", L, -1, {f"mlp_out.{L}": None}) for L in layers] if mlps else [])


def lesion_values(model: Model, corpus, jobs: list[tuple], measure="auto", mode: str = "zero", scan=None,
                  batch_tokens: int = 8192, seed: int = 0, baseline: bool = True,
                  progress: bool | None = None) -> tuple[str, float | None, list[float]]:
    """Run the lesions ``jobs`` (any subset of :func:`lesion_jobs`): the measure's name, the unablated
    value (None when ``baseline`` is False and it would cost a pass) and one value per job."""
    batches = Batches(model, corpus.texts, batch_tokens)
    name, run, known = make_measure(model, corpus, measure, batch_tokens, batches)
    upto = _replay_depth(model, batches, jobs, measure, baseline and known is None)
    store: list[list] = [[] for _ in range(upto)]
    values = []
    with torch.no_grad(), computing(model, "lesion"):
        base = known
        if upto or (baseline and known is None):
            with recorded_blocks(model.module, model.adapter, upto, store):
                clean = run()
            base = clean if known is None else known
        base = base if baseline else known
        for _, L, _, spec in tqdm(jobs, desc="lesions", disable=None if progress is None else not progress):
            with ablate(model, spec, mode=mode, scan=scan, seed=seed), \
                    recorded_blocks(model.module, model.adapter, min(L, upto), store, replay=True):
                values.append(run())
    return name, base, values


REPLAY_BYTES = 2 * 2**30  # most memory a lesion map spends on replaying unablated blocks


def _replay_depth(model: Model, batches: Batches, jobs: list[tuple], measure, baseline_pass: bool) -> int:
    """How many leading blocks a lesion map records once and replays for every lesion in a later block
    (0: none). A lesion in block L leaves blocks 0..L-1 as they were, so replaying them saves L/n of
    a pass per lesion; recording costs one pass (free when the baseline needs one anyway) and
    memory for every block output of the corpus, bounded by ``REPLAY_BYTES``. A measure given as a
    function runs passes llmri does not control, so it is never replayed."""
    if callable(measure) or not jobs:
        return 0
    upto = max(L for _, L, _, _ in jobs)
    saved = sum(L for _, L, _, _ in jobs) / model.n_layers
    if upto == 0 or saved <= (0 if baseline_pass else 1):
        return 0
    padded = sum(kw["input_ids"].numel() for _, kw, _ in batches.batches)
    cfg = model.module.config
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or 4096
    return upto if padded * d * 4 * upto <= REPLAY_BYTES else 0


def lesion_table(jobs: list[tuple], values: list[float], name: str, baseline: float, mode: str,
                 precision: str = "float32") -> pd.DataFrame:
    """The lesion map DataFrame of ``jobs`` and their measured ``values``; ``attrs`` hold the
    measure, baseline, mode and the precision the lesions ran in."""
    df = pd.DataFrame([{"component": comp, "layer": L, "head": h, "value": v, "effect": v - baseline}
                       for (comp, L, h, _), v in zip(jobs, values)])
    df.attrs.update(measure=name, baseline=baseline, mode=mode, precision=precision)
    return df
