"""Activation windows of one unit (an MLP neuron or an SAE feature), split into an explanation
set and a held-out scoring set that never share a window.

Token-level activations are cut into consecutive windows of ``window`` tokens per document.
Activations are shown on the 0-10 scale of Bills et al. (2023, "Language models can explain
neurons in language models"): ``round(10 * a / max_a)`` with the unit's maximum over the whole
corpus, negatives at 0. A window is *activating* when it shows a non-zero value on that scale.

Activating windows are ranked by their maximum and dealt in pairs, one to each side (which
side by a seeded coin), so both sides see the whole range. The explanation set is the top of
its side (Bills et al.); the held-out set samples its side evenly across activation quantiles
and adds non-activating windows (as in EleutherAI's delphi, Paulo et al. 2024, "Automatically
interpreting millions of features in large language models").

A *unit source* is anything that yields per-token activations: an MLP site of a Scan with
token records (its neurons), or the same site passed through an encoder (an SAE: a callable or
an object with ``encode``) for features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import LlmriError
from ..sites import parse_site


@dataclass
class Window:
    """A run of consecutive tokens of one document and one unit's raw activations on them."""

    doc: int
    start: int
    tokens: list[str]
    activations: np.ndarray

    def scaled(self, max_activation: float) -> np.ndarray:
        """Activations on the 0-10 integer scale of Bills et al."""
        return scale(self.activations, max_activation)


@dataclass
class UnitExamples:
    """The windows of one unit: ``explain`` (top windows shown to the explainer) and the held-out
    ``activating`` (sampled across quantiles) and ``non_activating`` windows used for scoring."""

    unit: int
    max_activation: float
    explain: list[Window]
    activating: list[Window]
    non_activating: list[Window]
    quantiles: list[int] = field(default_factory=list)   # quantile bin of each held-out activating window

    @property
    def held_out(self) -> list[Window]:
        return self.activating + self.non_activating

    @property
    def n_examples(self) -> int:
        return len(self.explain) + len(self.activating) + len(self.non_activating)


def scale(a: np.ndarray, max_activation: float) -> np.ndarray:
    """``round(10 * a / max)`` clipped to 0..10 (integers); all zeros when the maximum is not positive."""
    a = np.asarray(a, dtype=np.float64)
    if not max_activation > 0:
        return np.zeros(a.shape, dtype=np.int64)
    return np.clip(np.rint(10.0 * a / max_activation), 0, 10).astype(np.int64)


def window_bounds(lengths, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(doc, start_in_doc, global_start)`` of every window; windows never cross documents."""
    docs, starts, gstarts = [], [], []
    offset = 0
    for d, n in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        for s in range(0, n, window):
            docs.append(d)
            starts.append(s)
            gstarts.append(offset + s)
        offset += n
    return np.asarray(docs, np.int64), np.asarray(starts, np.int64), np.asarray(gstarts, np.int64)


def unit_examples(acts: np.ndarray, offsets: np.ndarray, tokens, unit: int, window: int = 24,
                  n_explain: int = 10, n_quantiles: int = 5, per_quantile: int = 2,
                  n_non_activating: int = 5, seed: int = 0) -> UnitExamples | None:
    """Windows of one unit from its activations on every token ``acts`` ``[n_tokens]`` (corpus
    order; document d is ``offsets[d]:offsets[d+1]``). ``tokens(doc)`` returns a document's token
    strings. Returns None for a unit that never activates (no non-zero value on the 0-10 scale).

    >>> ex = unit_examples(acts[:, 7], scan.token_offsets, tokens, unit=7)   # doctest: +SKIP
    >>> len(ex.explain), len(ex.activating), len(ex.non_activating)
    (10, 10, 5)
    """
    acts = np.asarray(acts, dtype=np.float32)
    offsets = np.asarray(offsets, dtype=np.int64)
    if acts.ndim != 1 or len(acts) != offsets[-1]:
        raise LlmriError(f"unit {unit}: expected {offsets[-1]} token activations, got shape {list(acts.shape)}")
    lengths = np.diff(offsets)
    wdoc, wstart, gstart = window_bounds(lengths, window)
    wend = np.minimum(gstart + window, offsets[wdoc + 1])
    if len(acts) == 0:
        return None
    top = float(acts.max())
    wmax = np.maximum.reduceat(acts, gstart)
    active = scale(wmax, top) >= 1
    if not active.any():
        return None
    rng = np.random.default_rng([seed, unit])
    ranked = np.flatnonzero(active)[np.argsort(-wmax[active], kind="stable")]
    coin = rng.integers(0, 2, size=(len(ranked) + 1) // 2)
    side = np.empty(len(ranked), dtype=np.int64)      # 0 explanation, 1 held out
    side[0::2] = coin[:len(side[0::2])]
    side[1::2] = 1 - coin[:len(side[1::2])]
    explain_ids = ranked[side == 0][:n_explain]
    pool = ranked[side == 1]                            # held-out activating windows, ranked
    held, bins = [], []
    if len(pool):
        edges = np.linspace(0, len(pool), min(n_quantiles, len(pool)) + 1).round().astype(int)
        for q in range(len(edges) - 1):
            members = pool[edges[q]:edges[q + 1]]
            pick = rng.choice(members, size=min(per_quantile, len(members)), replace=False)
            held.extend(sorted(pick.tolist(), key=lambda w: -wmax[w]))
            bins.extend([q] * len(pick))
    quiet = np.flatnonzero(~active)
    negatives = sorted(rng.choice(quiet, size=min(n_non_activating, len(quiet)), replace=False).tolist())

    def make(w: int) -> Window:
        d = int(wdoc[w])
        a, b = int(gstart[w]), int(wend[w])
        s = int(wstart[w])
        return Window(d, s, list(tokens(d))[s:s + (b - a)], acts[a:b].copy())

    return UnitExamples(unit=int(unit), max_activation=top, explain=[make(w) for w in explain_ids],
                        activating=[make(w) for w in held], non_activating=[make(w) for w in negatives],
                        quantiles=bins)


def _encode(encoder, x: np.ndarray) -> np.ndarray:
    fn = getattr(encoder, "encode", None) or encoder
    if not callable(fn):
        raise LlmriError(f"encoder: expected a callable or an object with encode(), got {type(encoder).__name__}")
    if hasattr(encoder, "parameters"):                  # a torch module (e.g. llmri's SAE) takes tensors
        import torch

        with torch.inference_mode():
            p = next(encoder.parameters(), None)
            t = torch.from_numpy(np.ascontiguousarray(x))
            out = fn(t.to(p.device) if p is not None else t)
    else:
        out = fn(x)
    if hasattr(out, "detach"):                          # a torch tensor
        out = out.detach().float().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise LlmriError(f"encoder: expected an output of shape [{x.shape[0]}, n_features], got {list(out.shape)}")
    return out


def _check_token_site(scan, site: str) -> None:
    if not scan.token_sites:
        raise LlmriError(f"{scan.folder}: this scan has no token-level records; "
                         f"rescan with --token-sites {site}")
    if site not in scan.token_sites:
        raise LlmriError(f"site {site!r} has no token-level records in {scan.folder}; "
                         f"token sites: {', '.join(scan.token_sites)}")


def unit_activations(scan, site: str, units=None, encoder=None) -> np.ndarray:
    """Per-token activations ``[n_tokens, len(units)]`` of the scan's token records at ``site``,
    in corpus order (rows follow ``scan.token_offsets``), read shard by shard.

    Without ``encoder`` the units are the site's dimensions (MLP neurons); with one, each shard's
    activations go through ``encoder`` (a callable or an object with ``encode``, e.g. an SAE)
    and the units are its output columns (features). ``units=None`` keeps every column.
    """
    _check_token_site(scan, site)
    kind, layer = parse_site(site)
    offsets = scan.token_offsets
    out = None
    for doc, ntok, _, block in scan.iter_token_shards(layer, kind):
        x = np.asarray(block, dtype=np.float32)
        if encoder is not None:
            x = _encode(encoder, x)
        if units is not None:
            bad = [u for u in units if not 0 <= u < x.shape[1]]
            if bad:
                what = "feature" if encoder is not None else "neuron"
                raise LlmriError(f"{what} {bad[0]} is out of range: {site} has {x.shape[1]} {what}s")
            x = x[:, list(units)]
        if out is None:
            out = np.empty((int(offsets[-1]), x.shape[1]), dtype=np.float32)
        row = 0
        for d, n in zip(doc.tolist(), ntok.tolist()):
            out[offsets[d]:offsets[d] + n] = x[row:row + n]
            row += n
    return out


def top_units(scan, site: str, k: int, encoder=None) -> list[int]:
    """The ``k`` units with the largest maximum activation over every token (ties by the lower
    index), read shard by shard without holding every unit's activations."""
    _check_token_site(scan, site)
    kind, layer = parse_site(site)
    peak = None
    for _, _, _, block in scan.iter_token_shards(layer, kind):
        x = np.asarray(block, dtype=np.float32)
        if encoder is not None:
            x = _encode(encoder, x)
        m = x.max(0)
        peak = m if peak is None else np.maximum(peak, m)
    return sorted(np.argsort(-peak, kind="stable")[:k].tolist())
