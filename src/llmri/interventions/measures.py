"""Effect measures: one number from a pass of the corpus through the (ablated) model.

>>> name, run, clean = make_measure(model, corpus, "loss")                 # doctest: +SKIP
>>> with llmri.ablate(model, {"mlp_out.3": None}):
...     run() - clean_value
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..batches import Batches, default_pool, pool
from ..errors import LlmriError
from ..model import Model, is_causal_lm
from ..precision import computing
from ..sites import hooks

MEASURES = ("auto", "loss", "representation", "probe")


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
        with torch.no_grad(), computing(model, "lesion"):
            clean = _representation(model, batches)
        if measure == "representation":
            name = "representation change (1 - cosine)"
            unit = clean / np.linalg.norm(clean, axis=1, keepdims=True).clip(1e-12)

            def score(r):
                return float(np.mean(1 - (r * unit).sum(1) / np.linalg.norm(r, axis=1).clip(1e-12)))
        else:
            from ..probe import make_classifier  # scipy and scikit-learn: loaded when a probe is asked for

            if len(set(corpus.labels.tolist())) < 2:
                raise LlmriError("measure 'probe' needs at least two categories")
            name = "probe accuracy"
            clf = make_classifier("logistic").fit(clean, corpus.labels)

            def score(r):
                return float((clf.predict(r) == corpus.labels).mean())
        return name, lambda: score(_representation(model, batches)), score(clean)
    raise LlmriError(f"measure {measure!r} is not one of auto, loss, representation, probe, or a function")
