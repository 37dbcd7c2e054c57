"""Ablation: remove MLP neurons, attention heads, sublayers or residual directions while a block runs.

>>> with llmri.ablate(model, {"mlp.3": [12, 40], "attn.5": [2]}):      # doctest: +SKIP
...     out = model.module(**inputs)
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..errors import LlmriError
from ..model import Model, as_model
from ..sites import _linear_dims, hooks, layer_count, n_heads, parse_site, submodule

MODES = ("zero", "mean", "resample")
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
