"""clamp: run a model with chosen SAE features set to given values (Templeton et al. 2024, the
"Golden Gate" clamp), through the one hook mechanism ``llmri.sites.hooks``.

At the SAE's site the value ``x`` becomes ``decode(f') + (x - decode(f))``: the reconstruction
with the clamped features ``f'`` plus the unchanged error term. It is computed as
``x + (f' - f) @ W_dec``, so with nothing changed the model is bit-for-bit the original.

In decoders the first token of each sequence is an attention sink whose residual norm is orders
of magnitude above the rest; SAEs are trained without it (``train_sae(skip_first=...)``), and
clamping there would move the sink that every later token attends to. So by default
(``skip_first=None``: on for decoders) the first real token of each sequence is left as it is,
found from the forward pass' ``attention_mask`` (left padding and generation's cached steps
included).
"""

from __future__ import annotations

import contextlib
import re

import torch

from ..errors import LlmriError
from ..model import as_model
from ..sites import hooks
from .model import SAE

_MULTIPLE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*$")
_NUMBER = re.compile(r"^\s*-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?\s*$")


class Clamp:
    """What the running clamp did: ``features`` holds the last clamped activations ``[..., d_sae]``."""

    def __init__(self, sae: SAE, idx: list[int], values: list[float]):
        self.sae, self.idx, self.values = sae, idx, values
        self.features: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"Clamp({dict(zip(self.idx, self.values))})"


def resolve_values(sae: SAE, spec: dict, feats=None) -> tuple[list[int], list[float]]:
    """Feature ids and absolute values; ``"10x"`` is 10 times the feature's largest activation seen
    (from ``feats``, a FeatureActivations, else from the SAE's training statistics)."""
    if not isinstance(spec, dict):
        raise LlmriError("clamp: give a dict {feature: value}, e.g. {1234: '10x'} or {1234: 5.0}")
    fmax = feats.max if feats is not None else sae.feature_max.detach().cpu().numpy()
    idx, vals = [], []
    for key, value in spec.items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise LlmriError(f"clamp: feature {key!r} is not an integer id") from None
        if not 0 <= i < sae.d_sae:
            raise LlmriError(f"clamp: feature {i} is out of range: the SAE has features 0..{sae.d_sae - 1}")
        if isinstance(value, str) and _NUMBER.match(value):
            value = float(value)
        if isinstance(value, str):
            m = _MULTIPLE.match(value)
            if not m:
                raise LlmriError(f"clamp: value {value!r} of feature {i}: give a number or a multiple like '10x'")
            if not fmax[i] > 0:
                raise LlmriError(f"clamp: feature {i} never fired in the data seen, so {value!r} has no "
                                 "scale; give an absolute value")
            v = float(m.group(1)) * float(fmax[i])
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise LlmriError(f"clamp: value {value!r} of feature {i} is not a number") from None
        idx.append(i)
        vals.append(v)
    return idx, vals


def _first_positions(call: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, positions in ``x``) of each sequence's first real token, if this forward pass holds it."""
    B, T = x.shape[0], x.shape[-2]
    mask = call.get("mask")
    if mask is None:
        if call.get("cached"):
            return None
        return torch.arange(B, device=x.device), torch.zeros(B, dtype=torch.long, device=x.device)
    first = mask.int().argmax(1).to(x.device) - (mask.shape[1] - T)  # this pass holds the last T columns
    rows = ((first >= 0) & (first < T)).nonzero().squeeze(1)
    return rows, first[rows]


@contextlib.contextmanager
def clamp(model, sae: SAE, spec: dict, feats=None, skip_first: bool | None = None):
    """Inside the block, every forward pass (and generation) of ``model`` runs with the features
    of ``spec`` set to their values at every token: ``{1234: 8.0}`` or ``{1234: "10x"}``.
    ``skip_first`` (default: on for decoders) leaves each sequence's first token, the attention
    sink, unclamped.

    >>> with llmri.clamp(model, sae, {1234: "10x"}) as c:         # doctest: +SKIP
    ...     llmri.generate(model, "Tell me about yourself.")
    """
    model = as_model(model)
    if not isinstance(sae, SAE):
        raise LlmriError(f"sae: expected an llmri.SAE (SAE.load(folder)), got {type(sae).__name__}")
    sae.check_fits(model)
    idx, vals = resolve_values(sae, spec, feats)
    if skip_first is None:
        skip_first = bool(model.adapter.causal)
    handle = Clamp(sae, idx, vals)
    sae = sae.to(model.device)
    index = torch.tensor(idx, dtype=torch.long, device=model.device)
    values = torch.tensor(vals, dtype=torch.float32, device=model.device)
    source: dict = {}
    call: dict = {}

    def top_pre(mod, args, kwargs):  # where this forward pass sits in its sequences
        call["mask"] = kwargs.get("attention_mask")
        past = kwargs.get("past_key_values")
        call["cached"] = past is not None and (not hasattr(past, "get_seq_length") or past.get_seq_length() > 0)

    def read(x):
        source["x"] = x
        return None

    def replace(x):
        src = source["x"] if sae.is_transcoder else x
        if src.shape[-1] != sae.d_in or x.shape[-1] != sae.d_out:
            raise LlmriError(f"clamp: the SAE reads width {sae.d_in}, the site {sae.site} has width "
                             f"{src.shape[-1]}: the SAE belongs to another model or site")
        with torch.no_grad():
            f = sae.encode(src.float())
            f2 = f.clone()
            f2[..., index] = values
            if skip_first and f2.dim() == 3:
                first = _first_positions(call, x)
                if first is not None:
                    f2[first[0], first[1]] = f[first[0], first[1]]
            handle.features = f2
            return (x.float() + (f2 - f) @ sae.W_dec).to(x.dtype)

    fns = {sae.target_site: replace}
    if sae.is_transcoder:
        fns = {sae.site: read, sae.target_site: replace}
    top = model.module.register_forward_pre_hook(top_pre, with_kwargs=True) if skip_first else None
    try:
        with hooks(model.module, model.adapter, fns):
            yield handle
    finally:
        if top is not None:
            top.remove()


def clamp_generations(model, sae: SAE, feature: int, values, prompt, max_new_tokens: int = 40, feats=None,
                      skip_first: bool | None = None, progress: bool | None = None) -> list[tuple[str, str]]:
    """Generate from ``prompt`` unclamped, then with ``feature`` clamped to each of ``values``
    (absolute, or multiples like ``"10x"``): ``[(label, generation), ...]``, the rows of
    ``llmri sae steer`` and of :func:`llmri.report.clamp_page`. Every value is checked before the
    first generation. ``progress``: a bar on stderr, one step per generation (None: only when
    stderr is a terminal); the rows are the same either way.

    >>> rows = clamp_generations(model, sae, 1234, ["0", "10x"], "Tell me about yourself.")  # doctest: +SKIP
    >>> rows[0][0], rows[2][0]
    ('none (original)', '10x = 41.7')
    """
    import sys

    from tqdm.auto import tqdm

    from ..generate import generate

    model = as_model(model)
    values = [values] if isinstance(values, (str, int, float)) else list(values)
    for v in values:
        resolve_values(sae, {feature: v}, feats)
    bar = tqdm(total=len(values) + 1, unit="generation", desc="clamping", file=sys.stderr, dynamic_ncols=True,
               disable=None if progress is None else not progress)
    with bar:
        rows = [("none (original)", generate(model, prompt, max_new_tokens=max_new_tokens, progress=False))]
        bar.update(1)
        for v in values:
            bar.set_postfix(value=str(v))
            with clamp(model, sae, {feature: v}, feats=feats, skip_first=skip_first) as c:
                rows.append((f"{v} = {c.values[0]:.4g}",
                             generate(model, prompt, max_new_tokens=max_new_tokens, progress=False)))
            bar.update(1)
    return rows


def feature_readback(model, sae: SAE, feature: int, texts, skip_first: bool | None = None,
                     batch_tokens: int = 8192):
    """How much SAE feature ``feature`` fires on each text, read by the model with no intervention:
    ``[len(texts)]`` means of its activation over the text's tokens (each text alone, as a Scan reads
    a document; NaN for an empty text). As in :func:`llmri.feature_activations`, the first token
    (the attention sink, for decoders: ``skip_first=None``) and tokens above the SAE's
    ``metadata["max_norm"]`` are left out.

    >>> feature_readback(model, sae, 1234, ["Flour, butter and sugar.", "The match ended 2-1."])  # doctest: +SKIP
    array([3.1, 0. ])
    """
    import numpy as np

    from ..batches import pad_batch, plan_batches, tokenize
    from ..precision import computing

    model = as_model(model)
    if not isinstance(sae, SAE):
        raise LlmriError(f"sae: expected an llmri.SAE (SAE.load(folder)), got {type(sae).__name__}")
    sae.check_fits(model)
    resolve_values(sae, {feature: 0.0})                       # the feature id, checked
    texts = [texts] if isinstance(texts, str) else list(texts)
    skip_first = bool(model.adapter.causal) if skip_first is None else bool(skip_first)
    max_norm = (sae.metadata or {}).get("max_norm")
    out = np.full(len(texts), np.nan)
    live = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not live:
        return out
    ids, _ = tokenize(model, [texts[i] for i in live], model.max_length)
    sae = sae.to(model.device)
    got: dict = {}
    with hooks(model.module, model.adapter, {sae.site: lambda x: got.__setitem__("x", x)}), torch.no_grad(), \
            computing(model, "scan"):
        for b in plan_batches(np.asarray([len(x) for x in ids]), batch_tokens):
            kwargs, mask = pad_batch(model, [ids[d] for d in b])
            model.base(**kwargs)
            x = got["x"].view(*mask.shape, -1).float()
            keep = mask.clone()
            if skip_first:
                keep[torch.arange(mask.shape[0], device=mask.device), mask.int().argmax(1)] = False
            if max_norm is not None:
                keep &= x.norm(dim=-1) <= max_norm
            f = sae.encode(x)[..., int(feature)] * keep
            n = keep.sum(1)
            for r, d in enumerate(b):
                out[live[d]] = float(f[r].sum() / n[r]) if n[r] > 0 else float("nan")
    return out


def clamp_effect(model, sae: SAE, feature: int, values, prompts, feats=None, scan=None, category: str | None = None,
                 probe_layer: int | None = None, max_new_tokens: int = 40, skip_first: bool | None = None,
                 seed: int = 0, progress: bool | None = None):
    """Clamping measured, not only shown: generate from each of ``prompts`` unclamped and with
    ``feature`` clamped to each of ``values`` (:func:`clamp_generations`), then read every
    generation back with the clamp removed and measure (1) the feature's own mean activation on it
    (:func:`feature_readback`) and, given a ``scan`` and one of its ``category`` labels, (2) the
    probability that a probe of ``category`` against the scan's other documents, on its pooled
    ``resid.{probe_layer}`` (default: the SAE's layer), gives the generation
    (:func:`llmri.generate.category_probe`, as :func:`llmri.steer_sweep` scores its generations).

    Returns a DataFrame: prompt, clamp (label), value (the absolute clamp; NaN unclamped),
    generation, feature_mean, p_category (NaN without a scan). ``attrs`` name the feature, the
    site, the category and the probe's layer.

    >>> df = clamp_effect(model, sae, 1234, ["0", "5x", "10x"], ["Tell me about yourself."], feats=feats,
    ...                   scan=scan, category="cooking")                 # doctest: +SKIP
    >>> df.groupby("clamp", sort=False)[["feature_mean", "p_category"]].mean()
    """
    import numpy as np
    import pandas as pd

    from ..generate import category_probe, check_prompts, probe_texts
    from ..sites import parse_site

    model = as_model(model)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    check_prompts(prompts)
    clf = None
    if category is not None:
        if scan is None:
            raise LlmriError("category: the probe of a category needs the scan it is trained on (scan=)")
        kind, layer = parse_site(sae.site)
        probe_layer = layer if probe_layer is None else probe_layer
        if kind != "resid" or probe_layer is None:
            raise LlmriError(f"probe_layer: give the resid layer to probe on (the SAE reads {sae.site})")
        others = [c for c in scan.label_names if c != category]
        clf = category_probe(scan, [category], others, probe_layer, "resid", seed)
    labels = [str(v) for v in ([values] if isinstance(values, (str, int, float)) else values)]
    rows = clamp_generations(model, sae, feature, labels, prompts, max_new_tokens=max_new_tokens, feats=feats,
                             skip_first=skip_first, progress=progress)
    vals = [float("nan")] + [resolve_values(sae, {feature: v}, feats)[1][0] for v in labels]
    table = pd.DataFrame([{"prompt": p, "clamp": label, "value": v, "generation": g}
                          for (label, gens), v in zip(rows, vals) for p, g in zip(prompts, gens)])
    table["feature_mean"] = feature_readback(model, sae, feature, list(table["generation"]), skip_first=skip_first)
    table["p_category"] = (probe_texts(model, clf, list(table["generation"]), f"resid.{probe_layer}",
                                       scan.settings["pool"]) if clf is not None else np.nan)
    table.attrs.update(feature=int(feature), site=sae.site, category=category, probe_layer=probe_layer)
    return table
