"""Feature circuits: attribution graphs over SAE features, checked against autograd on the plain
model, finite differences and real ablations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import llmri
from llmri import LlmriError
from llmri.circuits import attribute, validate_circuit
from llmri.sae import SAE

from conftest import make_model

PROMPT = "the star shines over the galaxy and the"


def identity_sae(d: int, site: str) -> SAE:
    """W_enc = W_dec = I, no biases, threshold -inf: encode is the identity, no sparsity."""
    sae = SAE(d, d, arch="jumprelu", k=None, site=site)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.threshold.fill_(-float("inf"))
    return sae


def random_sae(d: int, d_sae: int, site: str, seed: int) -> SAE:
    """A ReLU SAE with random unit decoder rows and a negative encoder bias (sparse-ish codes)."""
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(d, d_sae, arch="relu", k=None, site=site)
    with torch.no_grad():
        W = torch.randn(d_sae, d, generator=gen)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.fill_(-0.01)  # residuals of the tiny model have entries of about 0.02
    return sae


@pytest.fixture(scope="module")
def llama():
    return make_model("llama")


@pytest.fixture(scope="module")
def llama64(llama):
    """The same model in float64, for checks that float32 rounding would blur: a finite difference
    of a log-probability of size ~4 in float32 carries an error of about 5e-7 / eps, and a small edge
    weight summed from larger terms carries an absolute error of about 6e-6."""
    import copy

    return llmri.Model.from_module(copy.deepcopy(llama.module).double(), llama.tokenizer, name=llama.name)


def _plain_grad(model, layer: int, target: int):
    """Metric value, residual stream resid.layer and the gradient of the metric there, from the
    plain transformers model (output_hidden_states), no llmri hooks."""
    ids = model.tokenizer(PROMPT)["input_ids"]
    out = model.module(input_ids=torch.tensor([ids]), output_hidden_states=True)
    h = out.hidden_states[layer]
    h.retain_grad()
    m = torch.log_softmax(out.logits[0, -1].float(), -1)[target]
    m.backward()
    return float(m.detach()), h.detach()[0], h.grad[0]


def _scaled_metric(model, layer: int, scale: float, target: int) -> float:
    """Metric with resid.layer multiplied by ``scale`` (a plain forward pre-hook on block layer)."""
    ids = model.tokenizer(PROMPT)["input_ids"]
    block = model.module.model.layers[layer]
    h = block.register_forward_pre_hook(lambda mod, args, kw: ((args[0] * scale,) + args[1:], kw) if args
                                        else (args, {**kw, "hidden_states": kw["hidden_states"] * scale}),
                                        with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model.module(input_ids=torch.tensor([ids])).logits
    finally:
        h.remove()
    return float(torch.log_softmax(logits[0, -1].double(), -1)[target])


def test_identity_saes_give_gradient_times_activation(llama, llama64):
    saes = [identity_sae(32, "resid.1"), identity_sae(32, "resid.2")]
    target = "moon"
    tid = llama.tokenizer(target, add_special_tokens=False)["input_ids"][0]
    g = attribute(llama, saes, PROMPT, target=target, skip_first=False, max_feature_nodes=1)
    for L in (1, 2):
        m, x, grad = _plain_grad(llama, L, tid)
        assert g.metric == pytest.approx(m, abs=1e-5)
        df = g.features[g.features["layer"] == L]
        got = np.zeros(tuple(x.shape))
        got[df["position"].to_numpy(), df["feature"].to_numpy()] = df["attribution"].to_numpy()
        np.testing.assert_allclose(got, (grad * x).numpy(), rtol=1e-4, atol=1e-7)
        # the layer's features plus its error nodes: the first-order change when the layer is removed,
        # checked against a central finite difference of the real model, in float64
        row = g.layer_totals().set_index("layer").loc[L]
        assert abs(row["error"]) < 1e-6 * max(abs(row["features"]), 1e-6)
        eps = 1e-3
        fd = (_scaled_metric(llama64, L, 1 + eps, tid) - _scaled_metric(llama64, L, 1 - eps, tid)) / (2 * eps)
        assert row["total"] == pytest.approx(fd, rel=2e-2)


def test_edges_sum_to_the_linearised_change(llama):
    """With identity SAEs every upstream node is kept, so the edges into a downstream node add up to
    d(metric)/d(node) x d(node)/d(scale of resid.1), a finite difference on the plain model."""
    saes = [identity_sae(32, "resid.1"), identity_sae(32, "resid.2")]
    tid = llama.tokenizer("moon", add_special_tokens=False)["input_ids"][0]
    g = attribute(llama, saes, PROMPT, target="moon", skip_first=False, max_feature_nodes=10_000, batch_size=64)
    ids = llama.tokenizer(PROMPT)["input_ids"]

    def resid2(scale):
        block = llama.module.model.layers[1]
        h = block.register_forward_pre_hook(lambda mod, args, kw: ((args[0] * scale,) + args[1:], kw) if args
                                            else (args, {**kw, "hidden_states": kw["hidden_states"] * scale}),
                                            with_kwargs=True)
        try:
            with torch.no_grad():
                return llama.module(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        finally:
            h.remove()

    eps = 1e-3
    jvp = (resid2(1.0) - resid2(1 - eps)) / eps
    _, _, grad2 = _plain_grad(llama, 2, tid)
    df = g.features[g.features["layer"] == 2]
    checked = 0
    for _, r in df.reindex(df["attribution"].abs().sort_values(ascending=False).index).head(10).iterrows():
        incoming = sum(e["weight"] for *_, e in g.graph.in_edges(r["node_id"], data=True))
        want = float(grad2[r["position"], r["feature"]] * jvp[r["position"], r["feature"]])
        assert incoming == pytest.approx(want, rel=3e-2, abs=1e-7)
        checked += 1
    assert checked == 10
    # embeddings feed resid.1's features only, resid.2's features feed the target
    kinds = {(g.graph.nodes[u]["kind"], g.graph.nodes[v]["kind"], g.graph.nodes[v]["layer"]) for u, v in g.graph.edges}
    assert ("embedding", "feature", 1) in kinds and ("feature", "feature", 2) in kinds
    assert all(layer in (1, 2, llama.n_layers + 1) for *_, layer in kinds)


def test_attribution_predicts_single_ablations_and_topk_beats_random(llama):
    """Attribution is the first-order ablation effect; on the tiny random model effects are small
    (|drop| well below 0.1 nats), where first order should rank them almost perfectly. A wrong
    sign, index or layer gives a correlation near 0 or negative; 0.8 leaves room for the curvature
    of the real model (measured: above 0.95)."""
    saes = [random_sae(32, 64, "resid.1", 1), random_sae(32, 64, "resid.2", 2)]
    g = attribute(llama, saes, PROMPT, target="moon", skip_first=False)
    v = validate_circuit(llama, saes, g, k=(3, 6), n_random=8, n_single=40, seed=0)
    assert v["single"]["n"] == 40
    assert v["single"]["spearman"] > 0.8
    actual = np.array([r["actual_drop"] for r in v["single"]["rows"]])
    assert np.abs(actual).max() < 0.1
    for row in v["topk"]:
        assert row["top_drop"] > row["random_drop_mean"] + row["random_drop_std"]
        assert row["top_drop"] == pytest.approx(row["predicted_drop"], rel=0.3)
    assert g.validation is v


def test_ablate_nodes_equals_a_hand_ablation_and_subgraph_keeps_the_chain(llama):
    """Zeroing two chosen features (two layers) by hand, with a plain forward pre-hook that
    subtracts f_i * W_dec[i] (f_i as encoded there, after the upstream ablation) from the residual
    stream, gives ablate_nodes' drop; matched
    random controls draw from the same cells; the subgraph keeps exactly the chosen nodes, the
    target and the edges among them."""
    from llmri.circuits import ablate_nodes

    saes = [random_sae(32, 64, "resid.1", 1), random_sae(32, 64, "resid.2", 2)]
    g = attribute(llama, saes, PROMPT, target="moon", skip_first=False)
    df = g.features
    pick = [df[df["site"] == s].sort_values("attribution").iloc[-1] for s in ("resid.1", "resid.2")]
    res = ablate_nodes(llama, saes, g, [r["node_id"] for r in pick], n_random=4)
    ids = llama.tokenizer(PROMPT)["input_ids"]
    tid = llama.tokenizer("moon", add_special_tokens=False)["input_ids"][0]
    hooks = []
    for r in pick:   # resid.L is the input of block L: a pre-hook on that block edits it
        def pre(mod, args, kwargs, r=r, sae=saes[0 if r["site"] == "resid.1" else 1]):
            h = args[0].clone() if args else kwargs["hidden_states"].clone()
            p, i = int(r["position"]), int(r["feature"])
            f = sae.encode(h[0, p][None])[0, i]         # its value now, after the upstream ablation
            h[0, p] -= f * sae.W_dec[i]
            if args:
                return (h,) + tuple(args[1:]), kwargs
            return args, dict(kwargs, hidden_states=h)
        hooks.append(llama.module.model.layers[int(r["layer"])].register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            ablated = float(torch.log_softmax(llama.module(input_ids=torch.tensor([ids])).logits[0, -1], -1)[tid])
    finally:
        for h in hooks:
            h.remove()
    assert res["baseline"] == pytest.approx(g.metric, abs=1e-5)
    assert res["drop"] == pytest.approx(g.metric - ablated, abs=1e-5)
    assert res["predicted_drop"] == pytest.approx(sum(float(r["attribution"]) for r in pick), rel=1e-5)
    assert res["n"] == 2 and np.isfinite(res["random_drop_mean"])
    with pytest.raises(LlmriError, match="not an active feature"):
        ablate_nodes(llama, saes, g, ["1_99999_0"])
    sub = g.subgraph([r["node_id"] for r in pick])
    want = {r["node_id"] for r in pick} | set(g.nodes("logit"))
    assert set(sub.graph.nodes) == want
    assert {(u, v) for u, v in sub.graph.edges} == {(u, v) for u, v in g.graph.edges if u in want and v in want}
    with pytest.raises(LlmriError, match="not a node"):
        g.subgraph(["nope"])


def test_logit_difference_and_mean_ablation(llama):
    saes = [random_sae(32, 64, "resid.2", 3)]
    g = attribute(llama, saes, PROMPT, target=("moon", "sun"), skip_first=False)
    ids = llama.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        logits = llama.module(input_ids=torch.tensor([ids])).logits[0, -1]
    tok = llama.tokenizer
    want = float(logits[tok.convert_tokens_to_ids("moon")] - logits[tok.convert_tokens_to_ids("sun")])
    assert g.metric == pytest.approx(want, abs=1e-5)
    v = validate_circuit(llama, saes, g, k=5, mode="mean", n_single=20)
    assert v["single"]["spearman"] > 0.8


def test_freeze_keeps_the_forward_and_changes_gradients(llama):
    saes = [identity_sae(32, "resid.1")]
    a = attribute(llama, saes, PROMPT, target="moon", skip_first=False, max_feature_nodes=5)
    b = attribute(llama, saes, PROMPT, target="moon", skip_first=False, max_feature_nodes=5, freeze=True)
    assert a.metric == pytest.approx(b.metric, abs=1e-6)
    diff = np.abs(a.features["attribution"].to_numpy() - b.features["attribution"].to_numpy())
    assert diff.max() > 1e-6
    assert b.info["freeze"] and not a.info["freeze"]
    # the softmax is restored after the block
    assert torch.nn.functional.softmax(torch.zeros(2, requires_grad=True), -1).requires_grad


def test_prune_top_features_scores_and_json(llama, tmp_path):
    saes = [random_sae(32, 64, "resid.1", 1), random_sae(32, 64, "resid.2", 2)]
    g = attribute(llama, saes, PROMPT, target="moon", skip_first=False, max_feature_nodes=60)
    p = g.prune(node_threshold=0.5, edge_threshold=0.9)
    n_feat = lambda gr: sum(d["kind"] == "feature" for _, d in gr.graph.nodes(data=True))
    assert 0 < n_feat(p) < n_feat(g)
    assert p.graph.number_of_edges() < g.graph.number_of_edges()
    top = g.top_features(5, model=llama, saes=saes)
    assert list(top["attribution"].abs()) == sorted(top["attribution"].abs(), reverse=True)
    assert {"layer", "position", "feature", "activation", "attribution", "top_tokens", "token"} <= set(top.columns)
    s = g.scores()
    assert 0 <= s["replacement_score"] <= 1 and 0 <= s["completeness_score"] <= 1 and 0 < s["feature_share"] < 1
    totals = g.token_totals()
    assert len(totals) == len(g.tokens)
    path = p.to_json(tmp_path / "graph.json")
    data = json.loads(path.read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    for key in ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version"):
        assert key in data["metadata"]
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    ids = {n["node_id"] for n in data["nodes"]}
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
    for n in data["nodes"]:
        assert fields <= set(n) and isinstance(n["layer"], str)
    assert {n["feature_type"] for n in data["nodes"]} == {"cross layer transcoder", "mlp reconstruction error",
                                                         "embedding", "logit"}
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    assert all(l["source"] in ids and l["target"] in ids and set(l) == {"source", "target", "weight"}
               for l in data["links"])
    assert data["metadata"]["prompt_tokens"] == g.tokens


def test_bad_input(llama):
    saes = [identity_sae(32, "resid.1")]
    with pytest.raises(LlmriError, match=r"not one token: the tokenizer splits it into 2 tokens \['moon', 'sun'\]"):
        attribute(llama, saes, PROMPT, target="moon sun")
    with pytest.raises(LlmriError, match="prompt: give a non-empty string"):
        attribute(llama, saes, "  ", target="moon")
    with pytest.raises(LlmriError, match="width 16.*another model"):
        attribute(llama, [identity_sae(16, "resid.1")], PROMPT, target="moon")
    with pytest.raises(LlmriError, match="does not exist"):
        attribute(llama, [identity_sae(32, "resid.9")], PROMPT, target="moon")
    with pytest.raises(LlmriError, match="residual-stream SAEs"):
        attribute(llama, [identity_sae(32, "mlp_out.1")], PROMPT, target="moon")
    other = identity_sae(32, "resid.1")
    other.model_name = "gpt2"
    with pytest.raises(LlmriError, match="trained on gpt2"):
        attribute(llama, [other], PROMPT, target="moon")
    with pytest.raises(LlmriError, match="two SAEs for site resid.1"):
        attribute(llama, saes * 2, PROMPT, target="moon")
    g = attribute(llama, saes, PROMPT, target="moon", max_feature_nodes=3)
    with pytest.raises(LlmriError, match="built with SAEs at"):
        validate_circuit(llama, [identity_sae(32, "resid.2")], g)


def test_default_target_is_the_top_token(llama):
    g = attribute(llama, [identity_sae(32, "resid.1")], PROMPT, max_feature_nodes=3)
    ids = llama.tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        top = int(llama.module(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    assert g.info["target_ids"] == [top]
    assert llmri.attribute is attribute


def test_cli_train_several_sites_then_circuit(tmp_path):
    """llmri sae train --sites (one SAE per site), then llmri circuit writes the page and the JSON."""
    from conftest import tiny_cli_folder
    from test_cli import assert_one_line_error, run

    tiny_cli_folder(tmp_path)
    proc = run("scan", "c.csv", "--model", "tiny", "--token-sites", "resid.1,resid.2", "--out", "s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run("sae", "train", "s", "--sites", "resid.1,resid.2", "--latents", "32", "--k", "4", "--batch-size", "32",
               "--epochs", "2", "--out", "saes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "saes" / "resid.1" / "cfg.json").is_file() and (tmp_path / "saes" / "resid.2" / "cfg.json").is_file()
    proc = run("circuit", "the star shines over the", "--model", "tiny", "--saes", "saes", "--target", "moon",
               "--k", "2,4", "--out", "circ", "--viewer", "viewer", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "validation: Spearman" in proc.stdout
    page = (tmp_path / "circ" / "circuit.html").read_text()
    for part in ("Validation", "Top features", "replacement score", "the star shines over the", "Plotly.newPlot"):
        assert part in page
    data = json.loads((tmp_path / "circ" / "graph.json").read_text())
    assert data["metadata"]["prompt"] == "the star shines over the" and data["nodes"] and data["links"]
    assert (tmp_path / "circ" / "circuit.png").is_file() and (tmp_path / "circ" / "top_features.csv").is_file()
    # the out folder and --viewer are data folders of circuit-tracer's server: an index beside the graphs
    assert json.loads((tmp_path / "circ" / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "graph"
    slug = "the-star-shines-over-the-moon"
    assert (tmp_path / "viewer" / f"{slug}.json").read_text() == (tmp_path / "circ" / "graph.json").read_text().replace(
        '"slug": "graph"', f'"slug": "{slug}"', 1)
    from click.testing import CliRunner

    from llmri.cli import cli

    def invoke(*args):
        return CliRunner().invoke(cli, ["circuit", "the star shines over the", "--model", str(tmp_path / "tiny"),
                                        "--saes", str(tmp_path / "saes"), "--target", "moon",
                                        *[str(a) for a in args]])

    r = invoke("--contrast", "sun", "--no-validate", "--out", tmp_path / "circ2", "--viewer", tmp_path / "viewer",
               "--slug", "pair")
    assert r.exit_code == 0, r.output
    index = json.loads((tmp_path / "viewer" / "graph-metadata.json").read_text())
    assert [e["slug"] for e in index["graphs"]] == [slug, "pair"]
    (tmp_path / "badview").mkdir()
    (tmp_path / "badview" / "graph-metadata.json").write_text("[1]")
    for args, msg in ((["--viewer", tmp_path / "badview"], "graph-metadata.json: not a graph index"),
                      (["--slug", "x"], "--slug names the graph in --viewer")):
        r = invoke("--out", tmp_path / "bad", *args)
        assert isinstance(r.exception, LlmriError) and msg in str(r.exception), r.output
    assert not (tmp_path / "bad").exists()
    assert_one_line_error(run("circuit", "the star", "--model", "tiny", "--saes", "saes", "--target", "moon sun",
                              "--out", "bad", cwd=tmp_path), "not one token")
    assert_one_line_error(run("circuit", "the star", "--saes", "nowhere", "--out", "bad", cwd=tmp_path),
                          "no such folder")
    assert_one_line_error(run("circuit", "the star", "--saes", "saes", "--edge-threshold", "2", "--out", "bad",
                              cwd=tmp_path), "edge-threshold")
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- transcoders
def identity_transcoder(d: int, layer: int) -> SAE:
    """mlp_in.L -> mlp_out.L with W_enc = W_dec = I, no biases, threshold -inf: f = the MLP's input."""
    tc = SAE(d, d, arch="jumprelu", k=None, site=f"mlp_in.{layer}", target_site=f"mlp_out.{layer}")
    with torch.no_grad():
        tc.W_enc.copy_(torch.eye(d))
        tc.W_dec.copy_(torch.eye(d))
        tc.threshold.fill_(-float("inf"))
    return tc


def random_transcoder(d: int, d_sae: int, layer: int, seed: int, dec: float = 0.02) -> SAE:
    """A ReLU transcoder with random unit encoder columns, a negative bias (MLP inputs of the tiny
    model have entries of about 0.8) and decoder rows of norm ``dec`` (MLP outputs: norm about 0.005)."""
    gen = torch.Generator().manual_seed(seed)
    tc = SAE(d, d_sae, arch="relu", k=None, site=f"mlp_in.{layer}", target_site=f"mlp_out.{layer}")
    with torch.no_grad():
        W = torch.randn(d, d_sae, generator=gen)
        tc.W_enc.copy_(W / W.norm(dim=0, keepdim=True))
        tc.b_enc.fill_(-0.5)
        D = torch.randn(d_sae, d, generator=gen)
        tc.W_dec.copy_(dec * D / D.norm(dim=1, keepdim=True))
    return tc


def _mlp_outputs(model) -> dict[int, torch.Tensor]:
    ids = model.tokenizer(PROMPT)["input_ids"]
    got = {}
    hs = [blk.mlp.register_forward_hook(lambda mod, a, o, L=L: got.__setitem__(L, o.detach()))
          for L, blk in enumerate(model.module.model.layers)]
    try:
        with torch.no_grad():
            model.module(input_ids=torch.tensor([ids]))
    finally:
        for h in hs:
            h.remove()
    return got


def _plain_derivative(model, target: int, read=None, scale="emb", held=()) -> float:
    """d(read)/ds at s = 1 by plain autograd on the transformers module: ``read`` is the metric
    (None) or the MLP input of block L at (pos, i) (``(L, pos, i)``); ``scale`` multiplies the token
    embeddings (``"emb"``) or the MLP output of block ``scale`` by s; the MLP outputs of the blocks in
    ``held`` are replaced by their original values (cut from their inputs)."""
    ids = model.tokenizer(PROMPT)["input_ids"]
    orig = _mlp_outputs(model)
    s = torch.tensor(1.0, dtype=next(model.module.parameters()).dtype, requires_grad=True)
    got, hs = {}, []
    for L, blk in enumerate(model.module.model.layers):
        if L in held or L == scale:
            hs.append(blk.mlp.register_forward_hook(
                lambda mod, a, o, L=L: (orig[L] * s if L == scale else orig[L] + 0 * o)))
    if read is not None:
        hs.append(model.module.model.layers[read[0]].mlp.register_forward_pre_hook(
            lambda mod, a: got.__setitem__("x", a[0])))
    try:
        e = model.module.get_input_embeddings()(torch.tensor([ids])).detach()
        out = model.module(inputs_embeds=e * s if scale == "emb" else e).logits
    finally:
        for h in hs:
            h.remove()
    y = torch.log_softmax(out[0, -1].double(), -1)[target] if read is None else got["x"][0, read[1], read[2]]
    (d,) = torch.autograd.grad(y, s)
    return float(d)


def _plain_mlp_grad(model, layer: int, target: int):
    """Metric, MLP input and output of block ``layer`` and the metric's gradient at that output
    (plain forward hooks on the transformers module, nothing replaced)."""
    ids = model.tokenizer(PROMPT)["input_ids"]
    got = {}

    def keep(mod, args, out):
        out.retain_grad()
        got["in"], got["out"] = args[0].detach(), out

    h = model.module.model.layers[layer].mlp.register_forward_hook(keep)
    try:
        logits = model.module(input_ids=torch.tensor([ids])).logits
    finally:
        h.remove()
    m = torch.log_softmax(logits[0, -1].double(), -1)[target]
    m.backward()
    model.module.zero_grad(set_to_none=True)
    return float(m.detach()), got["in"][0], got["out"].detach()[0], got["out"].grad[0]


def test_identity_transcoders_give_gradient_times_activation(llama):
    """Feature (L, p, i) = the MLP input x[p, i], written to the MLP output: attribution = dm/dy[p, i] *
    x[p, i]; error node p = dm/dy[p] . (y[p] - x[p]); a layer's features plus errors = dm/dy . y, the
    first-order change when the MLP output is removed (finite difference on the plain model)."""
    tcs = [identity_transcoder(32, 0), identity_transcoder(32, 1)]
    tid = llama.tokenizer("moon", add_special_tokens=False)["input_ids"][0]
    g = attribute(llama, tcs, PROMPT, target="moon", skip_first=False, max_feature_nodes=1)
    ids = llama.tokenizer(PROMPT)["input_ids"]
    for L in (0, 1):
        m, x, y, grad = _plain_mlp_grad(llama, L, tid)
        assert g.metric == pytest.approx(m, abs=1e-5)
        df = g.features[g.features["layer"] == L]
        assert set(df["site"]) == {f"mlp_in.{L}"}
        got = np.zeros(tuple(x.shape))
        got[df["position"].to_numpy(), df["feature"].to_numpy()] = df["attribution"].to_numpy()
        ref = (grad * x).numpy()
        tol = 1e-5 * np.abs(ref).max()  # float32 rounding of the rewrite y = decode(f) + err
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=tol)
        err = [g.graph.nodes[f"{L}_-1_{p}"]["attribution"] for p in range(len(ids))]
        np.testing.assert_allclose(err, (grad * (y - x)).sum(-1).numpy(), rtol=1e-4, atol=tol)
        row = g.layer_totals().set_index("layer").loc[L]
        def scaled(c):
            h = llama.module.model.layers[L].mlp.register_forward_hook(lambda mod, a, o: o * c)
            try:
                with torch.no_grad():
                    return float(torch.log_softmax(llama.module(input_ids=torch.tensor([ids])).logits[0, -1], -1)[tid])
            finally:
                h.remove()

        eps = 0.05  # central difference: the effect is small against float32 rounding of the metric
        assert row["total"] == pytest.approx((scaled(1 + eps) - scaled(1 - eps)) / (2 * eps), rel=2e-2)
        assert row["total"] == pytest.approx(float((grad * y).sum()), rel=1e-4, abs=1e-6)


def test_transcoder_edges_are_direct_effects(llama64):
    """Edges into a feature (and into the target) come from the token embeddings and from every
    earlier transcoder, each transcoder's output cut from its input. Summed per source layer they are
    derivatives of the plain model with that layer's output scaled and the other outputs held."""
    llama = llama64                                      # exact algebra, checked in float64
    tcs = [identity_transcoder(32, 0).double(), identity_transcoder(32, 1).double()]
    tid = llama.tokenizer("moon", add_special_tokens=False)["input_ids"][0]
    g = attribute(llama, tcs, PROMPT, target="moon", skip_first=False, max_feature_nodes=10_000, batch_size=128)
    logit = g.nodes("logit")[0]

    def into(node, layer):
        return sum(e["weight"] for u, _, e in g.graph.in_edges(node, data=True) if g.graph.nodes[u]["layer"] == layer)

    _, _, _, grad1 = _plain_mlp_grad(llama, 1, tid)
    df = g.features[g.features["layer"] == 1]
    for _, r in df.reindex(df["attribution"].abs().sort_values(ascending=False).index).head(4).iterrows():
        w = float(grad1[r["position"], r["feature"]])          # dm/d(feature) = dm/d(MLP output 1)[p, i]
        read = (1, r["position"], r["feature"])
        assert into(r["node_id"], 0) == pytest.approx(w * _plain_derivative(llama, tid, read, scale=0), rel=1e-3, abs=1e-9)
        assert into(r["node_id"], -1) == pytest.approx(w * _plain_derivative(llama, tid, read, "emb", held=(0,)),
                                                       rel=1e-3, abs=1e-9)
    # into the target: direct effects of each layer, the other transcoder outputs held
    assert into(logit, 1) == pytest.approx(_plain_derivative(llama, tid, None, scale=1, held=(0,)), rel=1e-3)
    assert into(logit, 0) == pytest.approx(_plain_derivative(llama, tid, None, scale=0, held=(1,)), rel=1e-3)
    assert into(logit, -1) == pytest.approx(_plain_derivative(llama, tid, None, "emb", held=(0, 1)), rel=1e-3)
    # the direct effect of layer 0 on the target is not its total effect (which runs through MLP 1 too)
    total0 = g.layer_totals().set_index("layer").loc[0, "total"]
    assert abs(into(logit, 0) - total0) > 1e-3 * abs(total0)
    kinds = {(g.graph.nodes[u]["kind"], g.graph.nodes[v]["layer"]) for u, v in g.graph.edges}
    assert {("embedding", 0), ("embedding", 1), ("feature", 1), ("error", 1), ("feature", llama.n_layers + 1)} <= kinds


def test_transcoders_predict_ablations_prune_and_export(llama, tmp_path):
    tcs = [random_transcoder(32, 64, 0, 1), random_transcoder(32, 64, 1, 2)]
    g = attribute(llama, tcs, PROMPT, target="moon", skip_first=False)
    v = validate_circuit(llama, tcs, g, k=(3, 6), n_random=8, n_single=40, seed=0)
    assert v["single"]["spearman"] > 0.8
    assert np.abs([r["actual_drop"] for r in v["single"]["rows"]]).max() < 0.1
    for row in v["topk"]:
        assert row["top_drop"] > row["random_drop_mean"] + row["random_drop_std"]
        assert row["top_drop"] == pytest.approx(row["predicted_drop"], rel=0.3)
    # one ablation by hand: zero feature i of MLP 1 at p, i.e. subtract f_i * W_dec[i] from the MLP output
    r = g.features.iloc[int(np.argmax(np.abs(g.features["attribution"].to_numpy())))]
    tc = tcs[r["layer"]]
    ids = llama.tokenizer(PROMPT)["input_ids"]
    tid = llama.tokenizer("moon", add_special_tokens=False)["input_ids"][0]

    def minus(mod, a, o):
        o = o.clone()
        o[0, r["position"]] -= r["activation"] * tc.W_dec[r["feature"]]
        return o

    h = llama.module.model.layers[r["layer"]].mlp.register_forward_hook(minus)
    try:
        with torch.no_grad():
            ablated = float(torch.log_softmax(llama.module(input_ids=torch.tensor([ids])).logits[0, -1], -1)[tid])
    finally:
        h.remove()
    row = [x for x in v["single"]["rows"] if x["node_id"] == r["node_id"]][0]
    assert row["actual_drop"] == pytest.approx(g.metric - ablated, abs=1e-5)
    p = g.prune(0.8, 0.98)
    assert 0 < len(p.nodes("feature")) < len(g.nodes("feature"))
    s = g.scores()
    assert 0 <= s["replacement_score"] <= 1 and 0 <= s["completeness_score"] <= 1
    data = json.loads(p.to_json(tmp_path / "g.json").read_text())
    assert data["metadata"]["transcoder_list"] == ["mlp_in.0->mlp_out.0", "mlp_in.1->mlp_out.1"]


def test_transcoder_bad_input(llama):
    with pytest.raises(LlmriError, match="a mix of residual-stream SAEs \\(resid.2\\) and transcoders"):
        attribute(llama, [identity_transcoder(32, 0), identity_sae(32, "resid.2")], PROMPT, target="moon")
    odd = identity_transcoder(32, 0)
    odd.target_site = "mlp_out.1"
    with pytest.raises(LlmriError, match="transcoders from mlp_in.L to mlp_out.L of the same block"):
        attribute(llama, [odd], PROMPT, target="moon")
    with pytest.raises(LlmriError, match="mlp_in.7.*does not exist"):
        attribute(llama, [identity_transcoder(32, 7)], PROMPT, target="moon")


def test_cli_transcoders_train_then_circuit_with_dashboards(tmp_path):
    """llmri sae train --target-site (one transcoder per layer), then llmri circuit over them with --scan."""
    from click.testing import CliRunner

    from conftest import tiny_cli_folder
    from llmri.cli import cli

    tiny_cli_folder(tmp_path)
    sites = "mlp_in.1,mlp_out.1,mlp_in.2,mlp_out.2"

    def ok(*args):
        r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    ok("scan", tmp_path / "c.csv", "--model", tmp_path / "tiny", "--token-sites", sites, "--out", tmp_path / "s")
    ok("sae", "train", tmp_path / "s", "--sites", "mlp_in.1,mlp_in.2", "--target-site", "mlp_out.1,mlp_out.2",
       "--latents", "32", "--k", "4", "--batch-size", "32", "--epochs", "2", "--out", tmp_path / "tcs")
    out = ok("circuit", "the star shines over the", "--model", tmp_path / "tiny", "--saes", tmp_path / "tcs",
             "--target", "moon", "--k", "2", "--scan", tmp_path / "s", "--node-threshold", "1", "--edge-threshold", "1",
             "--out", tmp_path / "circ")
    assert "mlp_in.2" in out and "validation: Spearman" in out
    page = (tmp_path / "circ" / "circuit.html").read_text()
    assert "mlp_out.2" in page and "top activations" in page
    assert "transcoders mlp_in.1-&gt;mlp_out.1, mlp_in.2-&gt;mlp_out.2 (edges: direct effects)" in page
    data = json.loads((tmp_path / "circ" / "graph.json").read_text())
    assert data["metadata"]["transcoder_list"] == ["mlp_in.1->mlp_out.1", "mlp_in.2->mlp_out.2"]
    cards = json.loads(page.split("var cards = ", 1)[1].split(";\n", 1)[0])
    feats = {f"mlp_in.{n['layer']}:{n['node_id'].split('_')[1]}" for n in data["nodes"]
             if n["feature_type"] == "cross layer transcoder"}
    assert feats and set(cards) == feats
