"""Activation patching (causal tracing): restore sites of a clean run inside a corrupted one.

>>> res = llmri.patch(model, "The Eiffel Tower is in Paris", "The Colosseum is in Paris")  # doctest: +SKIP
>>> res.matrix("resid").shape
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..batches import pad_batch
from ..errors import LlmriError
from ..model import Model, as_model, is_causal_lm
from ..precision import computing, precision_used
from ..sites import expand_sites, hooks, parse_site


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

    with torch.no_grad(), computing(model, "patch"), hooks(model.module, model.adapter, {s: keep(s) for s in names}):
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
    precision: str = "float32"  # what the forwards ran in (llmri.model.precision_used)

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
    with torch.no_grad(), computing(model, "patch"):
        m_clean = float(metric(clean_out))
        m_corr = float(metric(_forward(model, corrupted_in)))
    if abs(m_clean - m_corr) < 1e-9:
        raise LlmriError("patch: the metric is the same on the clean and the corrupted input; nothing to restore")
    positions = list(range(T)) if positions is None else [p % T for p in positions]
    tokens = model.tokenizer.convert_ids_to_tokens(corrupted_in["input_ids"][0].tolist())
    rows = []
    jobs = [(s, p) for s in cache for p in positions]
    with torch.no_grad(), computing(model, "patch"):
        for site, p in tqdm(jobs, desc="patching", disable=None if progress is None else not progress):
            with patching(model, {site: cache[site]}, positions=[p]):
                m = float(metric(_forward(model, corrupted_in)))
            kind, layer = parse_site(site)
            rows.append({"kind": kind, "layer": layer, "position": p, "token": tokens[p], "metric": m,
                         "restored": (m - m_corr) / (m_clean - m_corr)})
    return PatchResult(pd.DataFrame(rows), tokens, m_clean, m_corr, precision_used(model, "patch"))
