"""Attention analysis: probabilities of one text, rollout and flow (Abnar and Zuidema, 2020),
and corpus-level per-head statistics read from a Scan, compared across categories."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
import torch

from .batches import default_pool
from .capture import ATTN_STATS, POOLS
from .errors import LlmriError
from .model import as_model
from .precision import computing
from .sites import eager_attention, hooks
from .stats import bh_q, category_vs_rest


TARGETS = POOLS  # "mean", "mean-nosink", "first", "last", "max": what rollout and flow explain


@dataclass
class Attention:
    """Attention of one text: ``probs`` ``[layers, heads, query, key]`` (rows sum to 1), ``tokens``."""

    probs: np.ndarray
    tokens: list[str]
    token_ids: list[int]
    causal: bool
    text: str = ""

    @property
    def n_layers(self) -> int:
        return self.probs.shape[0]

    @property
    def n_heads(self) -> int:
        return self.probs.shape[1]

    pool: str = ""

    @property
    def default_position(self) -> int:
        """The single position closest to the model's pooling: CLS/first token for encoders, the
        last token for decoders."""
        return len(self.tokens) - 1 if self.causal else 0

    @property
    def default_target(self):
        """The target that fits how the model's documents are pooled (``pool``, set by
        :func:`attention` from the model's default pooling): ``"mean"`` for a mean-pooled encoder
        (every position feeds the embedding), ``"mean-nosink"`` for decoders; with no pooling
        known, :attr:`default_position`."""
        return self.pool if self.pool in TARGETS else self.default_position

    def position(self, position: int | None = None) -> int:
        """A validated token position (negative counts from the end); None is the default position."""
        T = len(self.tokens)
        if position is None:
            return self.default_position
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
            raise LlmriError(f"position {position!r}: give a token position (an integer)")
        if not -T <= position < T:
            raise LlmriError(f"position {position} is out of range for {T} tokens")
        return int(position) % T

    def target_weights(self, target=None) -> np.ndarray:
        """Weights over query positions (summing to 1) of what rollout and flow explain.

        ``target``: a position, a list of positions (averaged), ``"first"``, ``"last"``,
        ``"mean"`` (all positions: what a mean-pooled embedding reads), ``"mean-nosink"`` (all but
        the first) or ``"max"`` (all positions); None is :attr:`default_target`.
        """
        T = len(self.tokens)
        target = self.default_target if target is None else target
        w = np.zeros(T)
        if isinstance(target, str):
            if target not in TARGETS:
                raise LlmriError(f"target {target!r} is not a position or one of {', '.join(TARGETS)}")
            if target == "first":
                w[0] = 1
            elif target == "last":
                w[-1] = 1
            elif target == "mean-nosink" and T > 1:
                w[1:] = 1
            else:
                w[:] = 1
        elif isinstance(target, (list, tuple, np.ndarray)):
            if len(target) == 0:
                raise LlmriError("target: give at least one position")
            for p in target:
                w[self.position(p)] += 1
        else:
            w[self.position(target)] = 1
        return w / w.sum()

    def target_label(self, target=None) -> str:
        """Words for a target, e.g. ``token 0 ('[CLS]')`` or ``the mean of all 9 tokens``."""
        w = self.target_weights(target)
        nz = np.flatnonzero(w)
        if len(nz) == 1:
            return f"token {nz[0]} ({self.tokens[nz[0]]!r})"
        if len(nz) == len(w):
            return f"the mean of all {len(w)} tokens"
        if len(nz) == len(w) - 1 and w[0] == 0:
            return f"the mean of tokens 1-{len(w) - 1} (all but the first, the attention sink)"
        return "the mean of tokens " + ", ".join(map(str, nz))

    def residual_attention(self) -> np.ndarray:
        """A'_l per layer: heads averaged, half identity added for the residual, rows renormalised."""
        a = self.probs.mean(1) * 0.5 + 0.5 * np.eye(self.probs.shape[-1])[None]
        return a / a.sum(-1, keepdims=True)

    def rollout(self) -> np.ndarray:
        """Attention rollout ``[query, key]``: R_0 = I, R_l = A'_l R_{l-1}; returns R_L."""
        r = np.eye(self.probs.shape[-1])
        for a in self.residual_attention():
            r = a @ r
        return r

    def contributions(self, target=None) -> np.ndarray:
        """Rollout contribution of each input token to ``target`` (see :meth:`target_weights`):
        the target's weights times the rollout matrix; sums to 1."""
        return self.target_weights(target) @ self.rollout()

    def flow(self, target=None) -> np.ndarray:
        """Attention flow: the max-flow value from each input token to ``target`` at the top layer,
        through a layered network whose capacities are A'_l. A target of several positions is a
        sink fed by each of them with capacity equal to its weight, so values stay in [0, 1]."""
        w = self.target_weights(target)
        T = self.probs.shape[-1]
        g = nx.DiGraph()
        for layer, a in enumerate(self.residual_attention(), start=1):
            for i in range(T):
                for j in range(T):
                    if a[i, j] > 0:
                        g.add_edge((layer - 1, j), (layer, i), capacity=float(a[i, j]))
        sink = "sink"
        for i in np.flatnonzero(w):
            g.add_edge((self.n_layers, int(i)), sink, capacity=float(w[i]))
        return np.array([nx.maximum_flow_value(g, (0, k), sink) if g.has_node((0, k)) else 0.0
                         for k in range(T)])


def attention(model, text: str, max_length: int | None = None) -> Attention:
    """Attention probabilities of every layer and head for one text.

    A model running fused kernels (SDPA, flash) is switched to eager attention for this call only.

    >>> att = llmri.attention("default", "The telescope saw a comet.")    # doctest: +SKIP
    >>> att.probs.shape                                                   # doctest: +SKIP
    (6, 12, 9, 9)
    """
    model = as_model(model)
    if not isinstance(text, str) or not text.strip():
        raise LlmriError("text: give a non-empty string")
    limit = min(max_length or model.max_length, model.max_length)
    ids = model.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
    n = model.n_layers
    probs: dict[int, np.ndarray] = {}

    def keep(layer):
        return lambda p: probs.__setitem__(layer, p[0].float().cpu().numpy())

    with eager_attention(model.module), torch.inference_mode(), computing(model, "scan"), \
            hooks(model.module, model.adapter, {f"attn.{L}": keep(L) for L in range(n)}):
        model.base(input_ids=torch.tensor([ids], device=model.device),
                   attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device))
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    return Attention(np.stack([probs[L] for L in range(n)]), list(tokens), list(ids), model.adapter.causal, text,
                     pool=default_pool(model))


# ---------------------------------------------------------------- corpus level
def head_stats(scan) -> pd.DataFrame:
    """Per-document, per-layer, per-head attention statistics captured with ``sites=("attn",)``.

    Columns: ``doc``, ``category``, ``layer``, ``head`` and one per statistic: ``entropy`` (mean
    row entropy, nats), ``first`` (attention to the first token), ``special`` (to special
    tokens), ``previous`` (to the previous token), ``distance`` (mean attended distance).
    """
    layers = scan.layers("attn")
    if not layers:
        raise LlmriError("this scan has no attention statistics; scan with --sites attn")
    k = len(ATTN_STATS)
    frames = []
    for L in layers:
        a = scan.activations(L, "attn")
        H = a.shape[1] // k
        a = a.reshape(len(a), k, H)
        doc = np.repeat(np.arange(len(a)), H)
        df = pd.DataFrame({"doc": doc, "category": np.asarray(scan.label_names, dtype=object)[scan.labels[doc]],
                           "layer": L, "head": np.tile(np.arange(H), len(a))})
        for i, stat in enumerate(ATTN_STATS):
            df[stat] = a[:, i, :].reshape(-1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def compare_heads(scan, category, stats=ATTN_STATS, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Which heads attend differently for ``category`` than for the other documents.

    For every layer, head and statistic: means, Cohen's d (pooled SD), a two-sided Mann-Whitney U
    test, and Benjamini-Hochberg q-values over all the tests. Sorted by p-value. ``table`` is
    ``head_stats(scan)`` when the caller already has it.
    """
    df = head_stats(scan) if table is None else table
    if category not in scan.label_names:
        raise LlmriError(f"unknown category {category!r}; categories: {scan.label_names}")
    for s in stats:
        if s not in ATTN_STATS:
            raise LlmriError(f"unknown statistic {s!r}; statistics: {', '.join(ATTN_STATS)}")
    rows = []
    inside = df["category"] == category
    if inside.all():
        raise LlmriError(f"category {category!r} has no other documents to compare with")
    for (L, h), grp in df.groupby(["layer", "head"]):
        a_mask = (grp["category"] == category).to_numpy()
        for s in stats:
            v = grp[s].to_numpy()[:, None]
            row = category_vs_rest(v[a_mask], v[~a_mask], test="mannwhitney")
            rows.append({"layer": L, "head": h, "stat": s, **{k: float(x[0]) for k, x in row.items()}})
    cols = ["layer", "head", "stat", "mean_category", "mean_rest", "effect_size", "p_value"]
    out = pd.DataFrame(rows)[cols]
    out["q_value"] = bh_q(out["p_value"].to_numpy())
    return out.sort_values(["p_value", "layer", "head"], ignore_index=True)


def stat_matrix(table: pd.DataFrame, stat: str, category=None) -> np.ndarray:
    """Mean of one statistic per layer and head ``[layers, heads]`` of a :func:`head_stats`
    table (optionally one category)."""
    df = table
    if category is not None:
        df = df[df["category"] == category]
    return df.pivot_table(index="layer", columns="head", values=stat, aggfunc="mean").to_numpy()

