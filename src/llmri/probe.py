"""Probes: cross-validated linear classifiers on activations, and the full-vs-reduced evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .errors import LlmriError


def interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of per-fold scores."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2 or v.std(ddof=1) == 0:
        return m, m, m
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def folds(labels: np.ndarray, cv: int, seed: int):
    """Stratified, shuffled folds; ``cv`` is lowered to the smallest class size when needed."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise LlmriError("a probe needs at least two categories with documents")
    k = min(cv, int(counts.min()))
    if k < 2:
        raise LlmriError(f"every category needs at least 2 documents for cross-validation "
                         f"(smallest has {int(counts.min())})")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(labels, labels))


def make_classifier(kind: str = "logistic", seed: int = 0, C: float = 1.0):
    """A standardised logistic regression (inverse L2 strength ``C``), or a small MLP (one hidden
    layer of 64)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    if kind == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=500,
                                                             early_stopping=False, random_state=seed))
    raise LlmriError(f"probe model {kind!r} is not one of logistic, mlp")


def fold_scores(X: np.ndarray, y: np.ndarray, splits, kind: str = "logistic", seed: int = 0):
    """Accuracy and macro F1 of a fresh classifier on each (train, test) split."""
    from sklearn.metrics import f1_score

    accs, f1s = [], []
    for train, test in splits:
        clf = make_classifier(kind, seed).fit(X[train], y[train])
        pred = clf.predict(X[test])
        accs.append(float((pred == y[test]).mean()))
        f1s.append(float(f1_score(y[test], pred, average="macro")))
    return np.asarray(accs), np.asarray(f1s)


def fold_accuracies(X: np.ndarray, y: np.ndarray, splits) -> np.ndarray:
    """Accuracy of a standardised logistic regression on each (train, test) split."""
    return fold_scores(X, y, splits)[0]


def control_labels(types, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A control task (Hewitt and Liang, 2019): each input type gets a random label, drawn from
    the empirical label distribution, and keeps it wherever it occurs."""
    rng = np.random.default_rng(seed)
    types = list(types)
    uniq = {t: i for i, t in enumerate(dict.fromkeys(types))}
    drawn = rng.choice(labels, size=len(uniq), replace=True)
    return np.asarray([drawn[uniq[t]] for t in types])


def _encode_target(target, n: int, what: str = "target") -> np.ndarray:
    arr = np.asarray(target)
    if arr.ndim != 1 or len(arr) != n:
        raise LlmriError(f"{what}: expected one value per item ({n}), got shape {list(arr.shape)}")
    _, codes = np.unique(arr.astype(str) if arr.dtype.kind not in "iu" else arr, return_inverse=True)
    return codes.astype(np.int64)


def probe(scan, site: str = "resid", layers=None, target=None, cv: int = 5, control: bool = True,
          model: str = "logistic", seed: int = 0) -> pd.DataFrame:
    """A cross-validated probe per layer for the corpus labels or any per-document ``target``.

    Columns: ``layer``, ``accuracy``, ``f1_macro`` (means over folds) with ``*_low``/``*_high``
    95% bounds, and, with ``control=True``, ``control_accuracy`` (the same probe on a control
    task: a random label per distinct document text, Hewitt and Liang, 2019) and
    ``selectivity`` = accuracy - control accuracy.

    >>> llmri.probe(scan)[["layer", "accuracy", "selectivity"]]        # doctest: +SKIP
    """
    y = scan.labels if target is None else _encode_target(target, scan.n_docs)
    splits = folds(y, cv, seed)
    available = scan.layers(site)
    if not available:
        raise LlmriError(f"site {site!r} was not captured; this scan has {scan.site_kinds}")
    chosen = available if layers is None else list(layers)
    y_control = control_labels(scan.texts, y, seed) if control else None
    rows = []
    for L in chosen:
        X = scan.activations(L, site)
        acc, f1 = fold_scores(X, y, splits, model, seed)
        row = {"layer": L}
        for name, v in (("accuracy", acc), ("f1_macro", f1)):
            row[name], lo, hi = interval(v)
            row[f"{name}_low"], row[f"{name}_high"] = max(0.0, lo), min(1.0, hi)
        if control:
            row["control_accuracy"] = float(fold_scores(X, y_control, splits, model, seed)[0].mean())
            row["selectivity"] = row["accuracy"] - row["control_accuracy"]
        rows.append(row)
    return pd.DataFrame(rows)


def probe_neurons(scan, layer: int, site: str = "resid", target=None, top_k=(1, 5, 10, 50), cv: int = 5,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank neurons by the weights of a linear probe (Dalvi et al., 2019) and keep only the top k.

    Returns (ranking, curve): ``ranking`` has ``neuron`` and ``weight`` (mean absolute
    standardised weight over classes, probe fit on all documents), largest first; ``curve`` has,
    for each k, the cross-validated ``accuracy`` of a probe on the top-k neurons (ranked inside
    each training fold, so the test fold never chooses them) and ``random_accuracy`` on k random
    neurons.
    """
    y = scan.labels if target is None else _encode_target(target, scan.n_docs)
    X = scan.activations(layer, site)
    splits = folds(y, cv, seed)

    def rank(Xtr, ytr):
        clf = make_classifier("logistic").fit(Xtr, ytr)
        w = np.abs(clf[-1].coef_).mean(0)
        return np.argsort(-w, kind="stable"), w

    order, w = rank(X, y)
    ranking = pd.DataFrame({"neuron": order, "weight": w[order]})
    rng = np.random.default_rng(seed)
    rows = []
    for k in top_k:
        if not 0 < k <= X.shape[1]:
            raise LlmriError(f"top_k: {k} is out of range 1..{X.shape[1]}")
        acc, rand = [], []
        for train, test in splits:
            top = rank(X[train], y[train])[0][:k]
            rnd = rng.choice(X.shape[1], size=k, replace=False)
            for cols, out in ((top, acc), (rnd, rand)):
                clf = make_classifier("logistic").fit(X[train][:, cols], y[train])
                out.append(float((clf.predict(X[test][:, cols]) == y[test]).mean()))
        rows.append({"k": k, "accuracy": float(np.mean(acc)), "random_accuracy": float(np.mean(rand))})
    return ranking, pd.DataFrame(rows)


def probe_tokens(scan, layer: int, target, site: str = "resid", cv: int = 5, control: bool = True,
                 seed: int = 0) -> dict:
    """A token-level probe on the token records of ``site.layer`` for a per-token ``target``.

    ``target`` is an array with one value per token in corpus order (see ``scan.token_offsets``)
    or a function of the token id array. Folds are grouped by document, so no document's tokens
    are on both sides. The control task gives each token type (token id) a random label.
    Returns ``accuracy``, ``f1_macro``, ``control_accuracy``, ``selectivity`` and ``n_tokens``.
    """
    from sklearn.model_selection import GroupKFold

    X = scan.token_activations(layer, site)
    ids = scan.token_ids()
    y = _encode_target(target(ids) if callable(target) else target, len(ids), "target (per token)")
    groups = np.repeat(np.arange(scan.n_docs), np.diff(scan.token_offsets))
    k = min(cv, scan.n_docs)
    if k < 2 or len(np.unique(y)) < 2:
        raise LlmriError("token probe: need at least 2 documents and 2 target values")
    splits = list(GroupKFold(n_splits=k).split(X, y, groups))
    acc, f1 = fold_scores(X, y, splits)
    out = {"layer": layer, "accuracy": float(acc.mean()), "f1_macro": float(f1.mean()), "n_tokens": len(y)}
    if control:
        out["control_accuracy"] = float(fold_scores(X, control_labels(ids.tolist(), y, seed), splits)[0].mean())
        out["selectivity"] = out["accuracy"] - out["control_accuracy"]
    return out


def evaluate_reduction(scan, regions, cv: int = 5, seed: int = 0) -> pd.DataFrame:
    """Probe accuracy on full activations vs region-map coordinates, per layer and overall.

    Columns: ``layer``, ``full``, ``reduced``, ``reduced_minus_full`` (the sign is in the name: negative when the map loses accuracy;
    LLM-MRI's ``evaluate_model`` reports full minus reduced; mean accuracy over
    folds) and ``*_low``/``*_high`` 95% confidence bounds over folds. The last row
    (``layer == "all"``) averages the layers fold by fold.
    """
    y = np.asarray(regions.labels)
    splits = folds(y, cv, seed)
    rows, per_fold = [], []
    for L in regions.layers:
        full = fold_accuracies(scan.activations(L, regions.site), y, splits)
        reduced = fold_accuracies(regions.coords(L), y, splits)
        per_fold.append((full, reduced))
        rows.append(_row(L, full, reduced))
    full_all = np.mean([f for f, _ in per_fold], axis=0)
    red_all = np.mean([r for _, r in per_fold], axis=0)
    rows.append(_row("all", full_all, red_all))
    return pd.DataFrame(rows)


def _row(layer, full, reduced) -> dict:
    row = {"layer": layer}
    for name, v, lo, hi in (("full", full, 0, 1), ("reduced", reduced, 0, 1), ("reduced_minus_full", reduced - full, -1, 1)):
        m, low, high = interval(v)
        row[name], row[f"{name}_low"], row[f"{name}_high"] = m, max(lo, low), min(hi, high)
    return row
