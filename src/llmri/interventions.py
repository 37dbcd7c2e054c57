"""Interventions: ablate, patch and read sites through the one hook mechanism in ``sites``.

Every intervention is a context manager; inside it any call of ``model.module`` runs modified,
and every hook is removed on exit, even after an exception.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .batches import Batches, pad_batch
from .capture import engine_options
from .errors import LlmriError
from .model import Model, as_model, is_causal_lm
from .sites import (_linear_dims, expand_sites, hooks, layer_count, n_heads, parse_site, recorded_blocks,
                    submodule)

MODES = ("zero", "mean", "resample")


# ---------------------------------------------------------------- ablation
def head_dim(model: Model, layer: int) -> int:
    dims = _linear_dims(submodule(model.module, model.adapter, layer, "attn_out"))
    if dims is None:
        raise LlmriError(f"layer {layer}: cannot find the attention output projection's input size")
    return dims[0] // n_heads(model.module)


def _site_values(scan, site: str, mode: str) -> np.ndarray:
    """Per-document pooled values of ``site`` from a Scan (for mean and resample ablation)."""
    if scan is None:
        raise LlmriError(f"{mode} ablation of {site} takes its statistics from a Scan: pass scan=")
    kind, layer = parse_site(site)
    if site not in scan.sites:
        raise LlmriError(f"{mode} ablation of {site} needs a Scan with site {site}; "
                         f"scan with --sites {kind} (this scan has {', '.join(scan.site_kinds)})")
    return scan.activations(layer, kind)


def _replacer(values: np.ndarray | None, mode: str, idx, rng: np.random.Generator, directions=None):
    """A hook function replacing ``x[..., idx]`` (or the span of ``directions``) by the ablation value."""
    mean = None if values is None else torch.tensor(values.mean(0))
    table = None if values is None else torch.tensor(values)
    q = None
    if directions is not None:
        q, _ = torch.linalg.qr(torch.tensor(np.asarray(directions, dtype=np.float64)).T)  # [d, k], orthonormal

    def value_for(x):
        if mode == "zero":
            return torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        if mode == "mean":
            return mean.to(x.device, x.dtype)
        rows = rng.integers(0, len(table), size=x.shape[0] if x.dim() == 3 else 1)
        v = table[rows].to(x.device, x.dtype)                    # one document per batch row
        return v[:, None, :] if x.dim() == 3 else v[0]

    def fn(x):
        v = value_for(x)
        if q is not None:
            qq = q.to(x.device, x.dtype)
            return x - (x @ qq) @ qq.T + (v @ qq) @ qq.T
        out = x.clone()
        if idx is None:
            out[...] = v
        else:
            out[..., idx] = v[..., idx]
        return out
    return fn


@contextlib.contextmanager
def ablate(model, spec: dict, mode: str = "zero", scan=None, seed: int = 0):
    """Remove components while the block runs; the model is restored on exit.

    ``spec`` maps sites to what to remove:

    * ``"mlp.L": [neurons]`` MLP neurons of block L;
    * ``"attn.L": [heads]`` attention heads (their slice of the attention output projection's input);
    * ``"mlp_out.L": None`` / ``"attn_out.L": None`` a whole sublayer's contribution;
    * ``"resid.L": directions`` residual directions, an array ``[k, dim]`` (for example
      ``regions.components(L)``): their span is projected out (zero) or set to its mean.

    ``mode`` is ``zero``, ``mean`` (the Scan's mean over documents) or ``resample`` (the value of
    a random document of the Scan, drawn per batch row with ``seed``).

    >>> with llmri.ablate(model, {"mlp.3": [12, 40], "attn.5": [2]}):      # doctest: +SKIP
    ...     out = model.module(**inputs)
    """
    model = as_model(model)
    if mode not in MODES:
        raise LlmriError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not isinstance(spec, dict) or not spec:
        raise LlmriError("ablate: spec must be a non-empty dict like {'mlp.3': [12, 40]}")
    rng = np.random.default_rng(seed)
    n = model.n_layers
    fns = {}
    for key, what in spec.items():
        kind, layer = parse_site(key)
        if layer is None or not 0 <= layer < layer_count(kind, n):
            raise LlmriError(f"ablate: {key!r} needs a layer in 0..{layer_count(kind, n) - 1}, e.g. {kind}.0")
        directions = None
        idx = None
        if kind == "attn":
            hd = head_dim(model, layer)
            heads = _indices(key, what, n_heads(model.module))
            idx = [h * hd + i for h in heads for i in range(hd)]
            site = f"attn_z.{layer}"
        elif kind == "resid":
            directions = np.atleast_2d(np.asarray(what, dtype=np.float64))
            site = key
        elif kind in ("mlp_out", "attn_out"):
            if what not in (None, "all"):
                raise LlmriError(f"ablate: {key!r} removes the whole sublayer; give None")
            site = key
        elif kind in ("mlp", "attn_z"):
            width = _linear_dims(submodule(model.module, model.adapter, layer,
                                           "mlp_out" if kind == "mlp" else "attn_out"))[0]
            idx = None if what in (None, "all") else _indices(key, what, width)
            site = key
        else:
            raise LlmriError(f"ablate: cannot ablate {key!r}")
        if site in fns:
            raise LlmriError(f"ablate: {site} is named twice in spec")
        values = None if mode == "zero" else _site_values(scan, site, mode)
        fns[site] = _replacer(values, mode, idx, rng, directions)
    with hooks(model.module, model.adapter, fns):
        yield


def _indices(key: str, what, size: int) -> list[int]:
    try:
        idx = [int(i) for i in (what if isinstance(what, (list, tuple, np.ndarray, range)) else [what])]
    except (TypeError, ValueError):
        raise LlmriError(f"ablate: {key!r} expects a list of integer indices, got {what!r}") from None
    bad = [i for i in idx if not 0 <= i < size]
    if bad:
        raise LlmriError(f"ablate: {key!r} index {bad[0]} is out of range 0..{size - 1}")
    return idx


# ---------------------------------------------------------------- effect measures
def _lm_loss(model: Model, batches: Batches) -> float:
    total, count = 0.0, 0
    for _, kw, mask in batches.batches:
        logits = model.module(**kw).logits[:, :-1].float()
        target = kw["input_ids"][:, 1:]
        valid = mask[:, 1:] & mask[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                reduction="none").view(target.shape)
        total += float(nll[valid].sum())
        count += int(valid.sum())
    return total / max(count, 1)


def _class_loss(model: Model, batches: Batches, labels: np.ndarray) -> float:
    total = 0.0
    for docs, kw, _ in batches.batches:
        logits = model.module(**kw).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels[docs], device=logits.device),
                                                         reduction="sum"))
    return total / batches.n


def _representation(model: Model, batches: Batches) -> np.ndarray:
    """Mean-pooled last residual stream of every document (corpus order)."""
    from .batches import default_pool, pool

    how = default_pool(model)
    out = [None] * batches.n
    grabbed = {}
    last = f"resid.{model.n_layers}"
    with hooks(model.module, model.adapter, {last: lambda x: grabbed.__setitem__("x", x)}):
        for docs, kw, mask in batches.batches:
            model.base(**kw)
            for d, v in zip(docs, pool(grabbed["x"], mask, how).cpu().numpy()):
                out[d] = v
    return np.stack(out)


def make_measure(model: Model, corpus, measure="auto", batch_tokens: int = 8192,
                 batches: Batches | None = None) -> tuple[str, Callable[[], float], float | None]:
    """A function that runs the corpus through the model and returns one number, with its
    unablated value when that is already known (else None).

    ``loss``: the model's own loss (language-model loss for causal LMs; classification loss for
    a model with a sequence-classification head, against the corpus labels). ``representation``:
    mean 1 - cosine similarity of the pooled last residual stream to the unablated one.
    ``probe``: accuracy of a logistic-regression probe trained on the unablated representation.
    A callable ``f(model) -> float`` is used as it is. ``auto`` is loss when the model has one,
    else representation.
    """
    batches = batches or Batches(model, corpus.texts, batch_tokens)
    has_cls = type(model.module).__name__.endswith("ForSequenceClassification")
    if measure == "auto":
        measure = "loss" if (is_causal_lm(model) or has_cls) else "representation"
    if callable(measure):
        return getattr(measure, "__name__", "custom"), lambda: float(measure(model)), None
    if measure == "loss":
        if is_causal_lm(model):
            return "language-model loss", lambda: _lm_loss(model, batches), None
        if has_cls:
            return "classification loss", lambda: _class_loss(model, batches, corpus.labels), None
        raise LlmriError("measure 'loss': this model has no language-model or classification head; "
                         "use representation, probe or a function")
    if measure in ("representation", "probe"):
        with torch.inference_mode():
            clean = _representation(model, batches)
        if measure == "representation":
            name = "representation change (1 - cosine)"
            unit = clean / np.linalg.norm(clean, axis=1, keepdims=True).clip(1e-12)

            def score(r):
                return float(np.mean(1 - (r * unit).sum(1) / np.linalg.norm(r, axis=1).clip(1e-12)))
        else:
            from .probe import make_classifier

            if len(set(corpus.labels.tolist())) < 2:
                raise LlmriError("measure 'probe' needs at least two categories")
            name = "probe accuracy"
            clf = make_classifier("logistic").fit(clean, corpus.labels)

            def score(r):
                return float((clf.predict(r) == corpus.labels).mean())
        return name, lambda: score(_representation(model, batches)), score(clean)
    raise LlmriError(f"measure {measure!r} is not one of auto, loss, representation, probe, or a function")


def lesion_map(model, corpus, measure="auto", mode: str = "zero", scan=None, layers=None,
               heads: bool = True, mlps: bool = True, batch_tokens: int = 8192, seed: int = 0,
               progress: bool | None = None, engine: str = "local", workers: int = 1,
               resources: dict | None = None) -> pd.DataFrame:
    """Ablate each attention head and each layer's MLP in turn and measure the effect.

    Returns a DataFrame with columns ``component`` (``head`` or ``mlp``), ``layer``, ``head``
    (-1 for an MLP), ``value`` and ``effect`` (value minus the unablated value); its ``attrs``
    hold the measure's name and the baseline. ``engine="ray"`` deals the lesions out to
    ``workers`` Ray actors (same table; see :mod:`llmri.distributed`). The blocks before a
    lesion's own are replayed from one recorded unablated pass instead of recomputed (see
    ``REPLAY_BYTES``); the table is the same.
    """
    if engine_options(engine, workers, resources):
        from .distributed import lesion_map as lesion_map_on_ray

        return lesion_map_on_ray(model, corpus, measure=measure, mode=mode, scan=scan, layers=layers, heads=heads,
                                 mlps=mlps, batch_tokens=batch_tokens, seed=seed, workers=workers,
                                 resources=resources, progress=progress)
    model = as_model(model)
    corpus = _as_corpus(corpus)
    jobs = lesion_jobs(model, layers, heads, mlps)
    name, baseline, values = lesion_values(model, corpus, jobs, measure, mode, scan, batch_tokens, seed,
                                           baseline=True, progress=progress)
    return lesion_table(jobs, values, name, baseline, mode)


def _as_corpus(corpus):
    from .corpus import Corpus

    return Corpus(list(corpus)) if isinstance(corpus, (list, tuple)) else corpus


def lesion_jobs(model: Model, layers=None, heads: bool = True, mlps: bool = True) -> list[tuple]:
    """The lesions of a lesion map, in table order: ``(component, layer, head, ablate spec)``."""
    n = model.n_layers
    for L in layers or []:
        if not -n <= L < n:
            raise LlmriError(f"layer {L} is out of range: the model has layers 0..{n - 1}")
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
    with torch.inference_mode():
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


def lesion_table(jobs: list[tuple], values: list[float], name: str, baseline: float, mode: str) -> pd.DataFrame:
    """The lesion map DataFrame of ``jobs`` and their measured ``values``."""
    df = pd.DataFrame([{"component": comp, "layer": L, "head": h, "value": v, "effect": v - baseline}
                       for (comp, L, h, _), v in zip(jobs, values)])
    df.attrs.update(measure=name, baseline=baseline, mode=mode)
    return df


# ---------------------------------------------------------------- patching
def run_with_cache(model, text: str, sites=("resid",)) -> tuple[object, dict[str, torch.Tensor]]:
    """Run one text and keep every token's activation at ``sites``: (output, {site: [tokens, dim]})."""
    model = as_model(model)
    names = expand_sites(sites, model.n_layers)
    if any(parse_site(s)[0] == "attn" for s in names):
        raise LlmriError("patching reads tensors: use attn_z, attn_out, mlp, mlp_out or resid, not attn")
    cache: dict[str, torch.Tensor] = {}
    inputs = _encode(model, text)

    def keep(site):
        return lambda x: cache.__setitem__(site, x[0].detach().clone())

    with torch.inference_mode(), hooks(model.module, model.adapter, {s: keep(s) for s in names}):
        out = _forward(model, inputs)
    return out, cache


@contextlib.contextmanager
def patching(model, cache: dict[str, torch.Tensor], positions=None):
    """Inside the block, every site in ``cache`` has its activation at ``positions`` (None = all)
    replaced by the cached one. Under :func:`llmri.generate` the prompt pass is patched and the
    one-token passes of the generated tokens are left alone."""
    model = as_model(model)

    def put(site):
        def fn(x):
            src = cache[site].to(x.device, x.dtype)
            if x.shape[-2] == 1 and src.shape[0] > 1:  # a generation step after the patched prompt
                return None
            if x.shape[-2] != src.shape[0]:
                raise LlmriError(f"patching {site}: the run has {x.shape[-2]} tokens, the cache {src.shape[0]}")
            out = x.clone()
            pos = slice(None) if positions is None else list(positions)
            out[:, pos] = src[pos]
            return out
        return fn

    with hooks(model.module, model.adapter, {s: put(s) for s in cache}):
        yield


def _encode(model: Model, text: str) -> dict:
    if not isinstance(text, str) or not text.strip():
        raise LlmriError("patch: clean and corrupted must be non-empty strings")
    ids = model.tokenizer(text, truncation=True, max_length=model.max_length)["input_ids"]
    return pad_batch(model, [ids])[0]


def _forward(model: Model, inputs: dict):
    return (model.module if is_causal_lm(model) else model.base)(**inputs)


def default_metric(model: Model, clean_output) -> Callable:
    """Causal LMs: log-probability of the clean run's top next token at the last position.
    Others: cosine similarity of the last hidden state to the clean run's, at the first token
    for encoders and at the last token for decoders without an LM head."""
    if is_causal_lm(model):
        target = int(clean_output.logits[0, -1].argmax())

        def logprob(out):
            return float(torch.log_softmax(out.logits[0, -1].float(), -1)[target])
        return logprob
    pos = -1 if model.adapter.causal else 0
    ref = clean_output.last_hidden_state[0, pos].float()

    def cosine(out):
        return float(torch.nn.functional.cosine_similarity(out.last_hidden_state[0, pos].float(), ref, dim=0))
    return cosine


@dataclass
class PatchResult:
    """Activation patching scores: how much of the clean metric each (site, position) restores."""

    scores: pd.DataFrame        # kind, layer, position, token, metric, restored
    tokens: list[str]
    clean_metric: float
    corrupted_metric: float

    def matrix(self, kind: str = "resid") -> np.ndarray:
        """``restored`` as ``[layers, positions]`` for one site kind (causal tracing)."""
        df = self.scores[self.scores["kind"] == kind]
        if df.empty:
            raise LlmriError(f"no patching scores for site {kind!r}; kinds: {sorted(set(self.scores['kind']))}")
        return df.pivot(index="layer", columns="position", values="restored").to_numpy()


def patch(model, clean: str, corrupted: str, metric: Callable | None = None, sites=("resid",),
          positions=None, progress: bool | None = None) -> PatchResult:
    """Causal tracing: run ``corrupted``, restore one site at one position from the ``clean`` run,
    and report the share of the clean metric that comes back,
    ``(m_patched - m_corrupted) / (m_clean - m_corrupted)``.

    ``metric(output) -> float`` reads the model's output (logits for causal LMs, the base model's
    output for encoders); by default :func:`default_metric`. Works for encoders and decoders.
    """
    model = as_model(model)
    clean_out, cache = run_with_cache(model, clean, sites)
    corrupted_in = _encode(model, corrupted)
    T = corrupted_in["input_ids"].shape[1]
    first = next(iter(cache.values()))
    if first.shape[0] != T:
        raise LlmriError(f"patch: clean has {first.shape[0]} tokens and corrupted {T}; "
                         "they must have the same number of tokens")
    metric = metric or default_metric(model, clean_out)
    with torch.inference_mode():
        m_clean = float(metric(clean_out))
        m_corr = float(metric(_forward(model, corrupted_in)))
    if abs(m_clean - m_corr) < 1e-9:
        raise LlmriError("patch: the metric is the same on the clean and the corrupted input; nothing to restore")
    positions = list(range(T)) if positions is None else [p % T for p in positions]
    tokens = model.tokenizer.convert_ids_to_tokens(corrupted_in["input_ids"][0].tolist())
    rows = []
    jobs = [(s, p) for s in cache for p in positions]
    with torch.inference_mode():
        for site, p in tqdm(jobs, desc="patching", disable=None if progress is None else not progress):
            with patching(model, {site: cache[site]}, positions=[p]):
                m = float(metric(_forward(model, corrupted_in)))
            kind, layer = parse_site(site)
            rows.append({"kind": kind, "layer": layer, "position": p, "token": tokens[p], "metric": m,
                         "restored": (m - m_corr) / (m_clean - m_corr)})
    return PatchResult(pd.DataFrame(rows), tokens, m_clean, m_corr)


# ---------------------------------------------------------------- steering
STEER_KINDS = ("resid", "attn_out", "mlp_out")
STEER_MODES = ("add", "clamp")


def _positions(positions):
    if isinstance(positions, str):
        if positions != "all":
            raise LlmriError(f"positions {positions!r}: use 'all' or a list of token positions such as [-1]")
        return None
    try:
        return [int(p) for p in (positions if isinstance(positions, (list, tuple, range, np.ndarray))
                                 else [positions])]
    except (TypeError, ValueError):
        raise LlmriError(f"positions {positions!r}: use 'all' or a list of integer token positions") from None


def _steerer(vec: torch.Tensor, alpha: float, positions, mode: str):
    unit = vec / vec.norm() if mode == "clamp" else None

    def fn(x):
        T = x.shape[-2]
        pos = slice(None) if positions is None else [p % T for p in positions if -T <= p < T]
        if isinstance(pos, list) and not pos:
            return None
        part = x[..., pos, :]
        if mode == "add":
            new = part + alpha * vec.to(x.device, x.dtype)
        else:
            u = unit.to(x.device, x.dtype)
            new = part + (alpha - part @ u)[..., None] * u
        if positions is None:
            return new
        out = x.clone()
        out[..., pos, :] = new
        return out
    return fn


@contextlib.contextmanager
def steer(model, vectors: dict, alpha: float = 1.0, positions="all", mode: str = "add"):
    """Steer the model while the block runs: ``mode="add"`` adds ``alpha * vector`` at each site;
    ``mode="clamp"`` sets the component along the vector's direction to ``alpha`` (the rest of the
    activation is untouched). Hooks are removed on exit, also after an exception.

    ``vectors`` maps sites (``resid.L``, ``attn_out.L``, ``mlp_out.L``) to vectors of the model's
    hidden size: a :func:`steering_vector`, a RegionMap axis, any array. ``positions`` is
    ``"all"`` or a list of token positions of each forward pass (negative from the end); with
    generation's key/value cache each new token is a pass of its own, so ``[-1]`` steers the last
    prompt token and every generated one.

    >>> v = llmri.steering_vector(scan, positive="positive", negative="negative", layer=12)  # doctest: +SKIP
    >>> with llmri.steer(dec, {"resid.12": v}, alpha=6):
    ...     llmri.generate(dec, "Tell me about your weekend.")
    """
    model = as_model(model)
    if mode not in STEER_MODES:
        raise LlmriError(f"mode {mode!r} is not one of {', '.join(STEER_MODES)}")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise LlmriError(f"alpha must be a number, got {alpha!r}") from None
    if not isinstance(vectors, dict) or not vectors:
        raise LlmriError("steer: vectors must be a non-empty dict like {'resid.12': vector}")
    pos = _positions(positions)
    hidden = int(model.module.config.hidden_size)
    n = model.n_layers
    fns = {}
    for site, vector in vectors.items():
        kind, layer = parse_site(site)
        if kind not in STEER_KINDS or layer is None:
            raise LlmriError(f"steer: cannot steer {site!r}; steer one layer of {', '.join(STEER_KINDS)} "
                             "(for example resid.12)")
        if not 0 <= layer < layer_count(kind, n):
            raise LlmriError(f"steer: {site!r} does not exist; {kind} has layers 0..{layer_count(kind, n) - 1}")
        try:
            v = torch.as_tensor(np.asarray(vector, dtype=np.float32).reshape(-1))
        except (TypeError, ValueError):
            raise LlmriError(f"steer: the vector for {site} is not numeric") from None
        if v.numel() != hidden:
            raise LlmriError(f"steer: the vector for {site} has {v.numel()} values; {model.name} has "
                             f"hidden size {hidden}")
        if not torch.isfinite(v).all():
            raise LlmriError(f"steer: the vector for {site} has NaN or infinite values")
        if mode == "clamp" and float(v.norm()) == 0:
            raise LlmriError(f"steer: the vector for {site} is zero; clamping needs a direction")
        fns[site] = _steerer(v, alpha, pos, mode)
    with hooks(model.module, model.adapter, fns):
        yield


def steering_vector(scan, positive, negative, layer: int, site: str = "resid", model=None) -> np.ndarray:
    """Contrastive activation addition (Turner et al. 2023, "Activation addition"; Rimsky et al.
    2024, "Steering Llama 2 via contrastive activation addition"): the mean pooled activation of
    the ``positive`` documents minus that of the ``negative`` ones, at ``site``/``layer`` of a Scan.

    ``positive``/``negative`` are category names or lists of them. With ``model``, the Scan must
    have been made with that model.
    """
    from .store import Scan

    scan = scan if isinstance(scan, Scan) else Scan.open(scan)
    if model is not None:
        model = as_model(model)
        made_with = scan.manifest["model"]
        if made_with.get("fingerprint") != model.fingerprint:
            raise LlmriError(f"{scan.folder}: the scan was made with {made_with.get('name')}, not with "
                             f"{model.name}; scan the corpus with this model first")

    def mask(names, what):
        names = [names] if isinstance(names, str) else list(names)
        missing = [c for c in names if c not in scan.label_names]
        if not names or missing:
            raise LlmriError(f"{what}: category {missing[0] if missing else names!r} is not in the scan "
                             f"(categories: {', '.join(scan.label_names)})")
        return np.isin(scan.labels, [scan.label_names.index(c) for c in names])

    pos, neg = mask(positive, "positive"), mask(negative, "negative")
    if (pos & neg).any():
        raise LlmriError("positive and negative share categories")
    acts = scan.activations(layer, site)
    return (acts[pos].mean(0) - acts[neg].mean(0)).astype(np.float32)
