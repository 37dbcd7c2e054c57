"""llmri's graph files read by circuit-tracer 0.5.0 itself: its viewer's data step (``formatData``
in ``attribution_graph/util-cg.js``, run by Node on the wheel's own file with d3 from npm), its
pydantic graph models, and its local server serving the data folder llmri writes. ``setup.sh
--test`` puts the wheel (unpacked, no dependencies) and the npm packages in ``.peers/``; the slow
test at the end installs circuit-tracer with its dependencies in a venv of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from llmri import LlmriError
from llmri.circuits import attribute

from conftest import make_model
from test_circuit import PROMPT, random_sae

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
WHEEL = PEERS / "circuit-tracer"
ASSETS = WHEEL / "circuit_tracer" / "frontend" / "assets"
MODULES = PEERS / "node" / "node_modules"
HARNESS = Path(__file__).with_name("viewer_data.js")


def _need_peers():
    missing = [p for p in (ASSETS / "attribution_graph" / "util-cg.js", MODULES / "d3" / "dist" / "d3.js",
                           MODULES / "d3-jetpack" / "build" / "d3v7+jetpack.js") if not p.is_file()]
    assert not missing and shutil.which("node"), f"run bash setup.sh --test: {missing or 'node'} missing"


def viewer(graph_file, query: str = "", threshold=None) -> dict:
    """What circuit-tracer's viewer makes of a graph file (tests/viewer_data.js)."""
    _need_peers()
    proc = subprocess.run(["node", HARNESS, ASSETS, MODULES, graph_file, query, "" if threshold is None else str(threshold)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def graphs():
    """One pruned graph per target kind: one token, a logit-difference pair, the model's top token."""
    model = make_model("llama")
    saes = [random_sae(32, 64, "resid.1", 1), random_sae(32, 64, "resid.2", 2)]
    out = {}
    for name, target in (("token", "moon"), ("pair", ("moon", "sun")), ("top", None)):
        g = attribute(model, saes, PROMPT, target=target, skip_first=False, max_feature_nodes=40)
        out[name] = (g, g.prune(0.8, 0.98))
    return out


def circuit_tracer_shares(g) -> dict:
    """circuit-tracer's ``prune_graph`` cumulative scores, written out from its definition on the
    adjacency matrix: ``A`` (rows: targets) with |weights| normalised per row, influence
    ``w (A + A^2 + ...) = w ((I - A)^-1 - I)`` with ``w`` 1 at the target logit, then the nodes sorted
    by influence, running sum over the total."""
    nodes = list(g.graph.nodes)
    idx = {n: i for i, n in enumerate(nodes)}
    A = np.zeros((len(nodes), len(nodes)))
    for u, v, e in g.graph.edges(data=True):
        A[idx[v], idx[u]] = abs(e["weight"])
    A /= np.maximum(A.sum(1, keepdims=True), 1e-10)
    w = np.array([1.0 if g.graph.nodes[n]["kind"] == "logit" else 0.0 for n in nodes])
    infl = w @ (np.linalg.inv(np.eye(len(nodes)) - A) - np.eye(len(nodes)))
    order = np.argsort(-infl, kind="stable")
    share = np.empty(len(nodes))
    share[order] = np.cumsum(infl[order]) / infl.sum()
    return {n: share[idx[n]] for n in nodes}


@pytest.mark.parametrize("kind", ["token", "pair", "top"])
def test_the_viewer_shows_every_node_and_the_target_as_meant(graphs, kind, tmp_path):
    g, p = graphs[kind]
    path = p.to_viewer(tmp_path)
    shown = viewer(path)
    by_id = {n["node_id"]: n for n in shown["nodes"]}
    assert set(by_id) == set(p.graph.nodes)  # formatData throws on nothing and drops nothing
    feats = [(n, d) for n, d in p.graph.nodes(data=True) if d["kind"] == "feature"]
    assert feats
    for n, d in feats:  # the feature panel prints L{layer}/{latent}, undoing the Cantor pairing
        assert by_id[n]["unpaired"] == [d["layer"], d["feature"]]
        assert by_id[n]["label"] == f"L{d['layer']}/{d['feature']}"
    (logit,) = [n for n in shown["nodes"] if n["feature_type"] == "logit"]
    d = p.graph.nodes[logit["node_id"]]
    token = g.target[0] if isinstance(g.target, tuple) else g.target
    assert token and logit["logitToken"] == token  # the token printed under the graph
    assert logit["logitPct"] == pytest.approx(d["prob"], abs=5e-4)
    if kind == "pair":
        assert f'minus "{g.target[1]}" (p=' in logit["clerp"]
    # the viewer's pruning keeps what circuit-tracer's cumulative scores of the unpruned graph keep
    shares = circuit_tracer_shares(g)
    kept = viewer(path, threshold=0.8)
    want = {n for n, d in p.graph.nodes(data=True) if d["kind"] in ("embedding", "logit") or shares[n] <= 0.8}
    assert {n["node_id"] for n in kept["nodes"]} == want
    assert len(want) < p.graph.number_of_nodes()  # the threshold bites: raw influence would keep all
    data = json.loads(path.read_text())
    for node in data["nodes"]:
        if node["feature_type"] != "logit":
            assert node["influence"] == pytest.approx(shares[node["node_id"]], abs=1e-9)
            assert node["raw_influence"] == pytest.approx(p.graph.nodes[node["node_id"]]["influence"])


def test_a_logit_difference_used_to_break_the_viewer(graphs, tmp_path):
    """The check can fail: a logit clerp without ``(p=`` makes formatData throw, as before."""
    _, p = graphs["pair"]
    data = p.to_dict()
    for node in data["nodes"]:
        if node["feature_type"] == "logit":
            node["clerp"] = "logit 'moon' - 'sun'"
    (tmp_path / "old.json").write_text(json.dumps(data))
    _need_peers()
    proc = subprocess.run(["node", HARNESS, ASSETS, MODULES, tmp_path / "old.json"], capture_output=True, text=True)
    assert proc.returncode == 1 and "split" in proc.stderr


_SERVE = """
import functools, sys
from circuit_tracer.frontend import local_server as ls
handler = functools.partial(ls.CircuitGraphHandler, frontend_dir=ls.DEFAULT_FRONTEND_DIR, data_dir=sys.argv[1])
httpd = ls.ReusableTCPServer(("127.0.0.1", 0), handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""

_VALIDATE = """
import json, sys
from circuit_tracer.frontend.graph_models import Model
for f in sys.argv[1:]:
    Model.model_validate(json.load(open(f)))
print("valid")
"""


def served(python, env, folder, paths) -> list[bytes]:
    """GET each path from circuit-tracer's own request handler serving ``folder`` on 127.0.0.1."""
    proc = subprocess.Popen([python, "-c", _SERVE, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline())
        return [urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=30).read() for p in paths]
    finally:
        proc.kill()
        proc.wait()


def test_circuit_tracers_server_serves_the_viewer_folder(graphs, tmp_path):
    _need_peers()
    folder = tmp_path / "viewer"
    a = graphs["token"][1].to_viewer(folder)
    b = graphs["pair"][1].to_viewer(folder, slug="pair")
    graphs["top"][1].to_viewer(folder, slug="pair")  # the same slug again replaces its entry
    index = json.loads((folder / "graph-metadata.json").read_text())
    assert [e["slug"] for e in index["graphs"]] == [a.stem, "pair"]
    assert a.name == "the-star-shines-over-the-galaxy-and-the-moon.json"
    env = dict(os.environ, PYTHONPATH=str(WHEEL))
    got = served(sys.executable, env, folder, ["/data/graph-metadata.json", f"/graph_data/{a.stem}.json",
                                               "/graph_data/pair.json", "/index.html"])
    assert json.loads(got[0]) == index
    assert got[1] == a.read_bytes() and got[2] == b.read_bytes()
    assert b"./data/graph-metadata.json" in got[3]
    assert json.loads(got[2])["metadata"]["prompt_tokens"] == graphs["top"][1].tokens
    proc = subprocess.run([sys.executable, "-c", _VALIDATE, a, b], capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "valid", proc.stderr


def test_viewer_folder_bad_input(graphs, tmp_path):
    p = graphs["token"][1]
    with pytest.raises(LlmriError, match="slug: 'a/b' is not a file name"):
        p.to_viewer(tmp_path, slug="a/b")
    with pytest.raises(LlmriError, match="not 'graph-metadata'"):
        p.to_viewer(tmp_path, slug="graph-metadata")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "graph-metadata.json").write_text('{"graphs": 3}')
    with pytest.raises(LlmriError, match=r"bad/graph-metadata.json: not a graph index"):
        p.to_viewer(tmp_path / "bad")
    assert sorted(os.listdir(tmp_path / "bad")) == ["graph-metadata.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(LlmriError, match="exists and is not a folder"):
        p.to_viewer(tmp_path / "file")


@pytest.mark.slow
def test_circuit_tracer_installed_in_its_own_venv_serves_and_validates(graphs, tmp_path):
    """circuit-tracer 0.5.0 with its dependencies (it pins transformers <= 4.57.3) in
    ``.venv-circuit-tracer``, built here on first use (minutes; needs the package registry): its
    public ``serve`` serves llmri's folder, and its models validate the files."""
    venv = ROOT / ".venv-circuit-tracer"
    python = venv / "bin" / "python"
    if subprocess.run([python, "-c", "import circuit_tracer.frontend"], capture_output=True).returncode if python.exists() else True:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "circuit-tracer==0.5.0"], check=True)
    folder = tmp_path / "viewer"
    files = [graphs[k][1].to_viewer(folder) for k in ("token", "pair", "top")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    serve = ("import sys, time\nfrom circuit_tracer.frontend import serve\n"
             "s = serve(sys.argv[1], port=int(sys.argv[2]))\nprint('up', flush=True)\ntime.sleep(600)\n")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([python, "-c", serve, str(folder), str(port)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "up"
        index = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/graph-metadata.json").read())
        assert [e["slug"] for e in index["graphs"]] == [f.stem for f in files]
        for f in files:
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/graph_data/{f.name}").read() == f.read_bytes()
    finally:
        proc.kill()
        proc.wait()
    proc = subprocess.run([python, "-c", _VALIDATE, *files], capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == "valid", proc.stderr
