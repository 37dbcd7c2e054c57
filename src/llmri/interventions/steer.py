"""Steering: add a vector to (or clamp a direction of) sites while a block runs, and contrastive vectors.

>>> v = llmri.steering_vector(scan, positive="positive", negative="negative", layer=12)  # doctest: +SKIP
>>> with llmri.steer(dec, {"resid.12": v}, alpha=6):
...     llmri.generate(dec, "Tell me about your weekend.")
"""

from __future__ import annotations

import math
import contextlib

import numpy as np
import torch

from ..errors import LlmriError
from ..model import as_model
from ..sites import hooks, layer_count, parse_site
from ..store import Scan

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
    if not math.isfinite(alpha):
        raise LlmriError(f"alpha must be a finite number, got {alpha!r}")
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
