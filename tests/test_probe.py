"""Probes against scikit-learn run directly, planted signals, control tasks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import llmri
from llmri.probe import control_labels
from llmri.store import scan_from_arrays

from conftest import TEXTS, make_model


def planted(path, layer=2, n=120, dim=20, layers=5, seed=0):
    """Random activations with a linear signal for the labels in one layer only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    acts = {f"resid.{L}": rng.normal(size=(n, dim)) for L in range(layers)}
    acts[f"resid.{layer}"][:, 3] += 2.5 * (2 * y - 1)
    return scan_from_arrays(path, acts, y, ["neg", "pos"], [f"text {i}" for i in range(n)])


def test_probe_equals_sklearn_and_peaks_at_the_planted_layer(tmp_path):
    s = planted(tmp_path / "s")
    df = llmri.probe(s, cv=5, seed=0)
    assert list(df.columns) == ["layer", "accuracy", "accuracy_low", "accuracy_high", "f1_macro", "f1_macro_low",
                                "f1_macro_high", "control_accuracy", "selectivity"]
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    for L in range(5):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        acc = cross_val_score(clf, s.activations(L), s.labels, cv=cv).mean()
        f1 = cross_val_score(clf, s.activations(L), s.labels, cv=cv, scoring="f1_macro").mean()
        row = df.set_index("layer").loc[L]
        assert row["accuracy"] == pytest.approx(acc) and row["f1_macro"] == pytest.approx(f1)
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    assert int(df.loc[df["accuracy"].idxmax(), "layer"]) == 2 and df["accuracy"].max() > 0.9
    assert df.drop(index=2)["accuracy"].max() < 0.7
    assert (df["control_accuracy"] < 0.65).all()           # random labels per text: near chance
    assert df.set_index("layer").loc[2, "selectivity"] > 0.3


def test_control_task_is_consistent_per_type():
    y = np.array([0, 1, 0, 1, 1, 0])
    c = control_labels(["a", "b", "a", "c", "b", "a"], y, seed=1)
    assert c[0] == c[2] == c[5] and c[1] == c[4]


def test_probe_mlp_and_target(tmp_path):
    s = planted(tmp_path / "s", n=80)
    target = np.where(np.arange(80) % 2 == 0, "even", "odd")
    df = llmri.probe(s, layers=[2], target=target, model="mlp", control=False)
    assert "control_accuracy" not in df.columns and 0 <= df["accuracy"][0] <= 1
    with pytest.raises(llmri.LlmriError, match="expected one value per item"):
        llmri.probe(s, target=[1, 2, 3])
    with pytest.raises(llmri.LlmriError, match="probe model 'svm'"):
        llmri.probe(s, model="svm")


def test_probe_neurons_finds_the_planted_neuron(tmp_path):
    s = planted(tmp_path / "s")
    ranking, curve = llmri.probe_neurons(s, 2, top_k=(1, 3))
    assert ranking["neuron"].iloc[0] == 3
    top1 = curve.set_index("k").loc[1]
    assert top1["accuracy"] > 0.9 and top1["random_accuracy"] < top1["accuracy"]
    X = s.activations(2)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, s.labels)
    np.testing.assert_allclose(ranking.sort_values("neuron")["weight"], np.abs(clf[-1].coef_).mean(0))


def test_token_probe(tmp_path):
    model = make_model("gpt2")
    s = llmri.scan(model, llmri.Corpus(TEXTS * 2), tmp_path / "t", token_sites=("resid.1",))
    is_the = lambda ids: ids == model.tokenizer.convert_tokens_to_ids("the")
    out = llmri.probe_tokens(s, 1, is_the, cv=4)
    assert out["n_tokens"] == s.token_offsets[-1] and out["accuracy"] > 0.9
    assert out["control_accuracy"] <= 1.0 and "selectivity" in out
