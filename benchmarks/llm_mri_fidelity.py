"""LLM-MRI 0.2.1 side by side with llmri: the same corpus, the same model, compared for real.

The original (PyPI ``llm_mri==0.2.1``) runs in its own virtual environment, created here on
first use (``--venv``; it shares this interpreter's torch, so no second torch is fetched, and
pins ``pyarrow<18``, without which llm_mri does not import; it needs Debian's ``graphviz`` and
``libgraphviz-dev``). It writes its hidden states, grid cells, NRAG edges and metrics to JSON; this
script computes the same with llmri (``pool="first"``, ``regions(preset="llm-mri")``) and prints
how far apart they are.

Run: python benchmarks/llm_mri_fidelity.py [--venv .venv-llm-mri] [--corpus word_order] [--grid 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import llmri
from llmri.model import model_folder

# Runs inside the LLM-MRI venv: argv = corpus.json, model folder, grid, output.json
_ORIGINAL = r'''
import json, sys
import numpy as np
from datasets import ClassLabel, Dataset, Features, Value
from llm_mri import ActivationAreas, Metrics
from llm_mri.dimensionality_reduction import PCA

corpus, model, grid, out = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4]
features = Features({"text": Value("string"), "label": ClassLabel(names=corpus["label_names"])})
ds = Dataset.from_dict({"text": corpus["texts"], "label": corpus["labels"]}, features=features)
mri = ActivationAreas(model=model, dataset=ds, reduction_method=PCA(n_components=2, gridsize=grid), device="cpu")
mri.process_activation_areas()
gc = mri.graph_class
n = mri.num_layers
hidden = {i: np.asarray(mri.hidden_states_dataset[f"hidden_state_{i}"], dtype=np.float32).tolist() for i in range(n)}
cells = {i: [[int(x), int(y)] for x, y in zip(gc.reduced_dataset[i]["X"], gc.reduced_dataset[i]["Y"])] for i in range(n)}

def edges(g):
    return sorted([u, v, int(d["weight"])] for u, v, d in g.edges(data=True))

graphs = {"all": gc.full_graph}
graphs.update({c: mri.get_graph(c) for c in corpus["label_names"]})
metrics = {}
for name, g in graphs.items():
    m = Metrics(g.copy(), name, "m").get_basic_metrics()
    metrics[name] = {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else None)
                     for k, v in m.items() if k not in ("model_name", "label")}
json.dump({"hidden": hidden, "cells": cells, "edges": {k: edges(g) for k, g in graphs.items()},
           "metrics": metrics}, open(out, "w"))
'''

# llmri metric -> LLM-MRI metric, where both compute the same quantity under the preset
_SAME = {"degree_mean": "mean_degree", "degree_var": "var_degree", "degree_skew": "skew_degree",
         "degree_kurtosis": "kurt_degree", "strength_mean": "mean_strength", "strength_var": "var_strength",
         "strength_skew": "skew_strength", "strength_kurtosis": "kurt_strength",
         "assortativity": "assortativity", "density": "density"}


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llm_mri"], capture_output=True).returncode == 0:
        return python
    if shutil.which("dot") is None:
        raise SystemExit("LLM-MRI needs graphviz: apt-get install graphviz libgraphviz-dev")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "llm_mri==0.2.1", "pyarrow<18"], check=True)
    return python


def llmri_side(corpus, grid: int, folder: Path) -> dict:
    model = llmri.load_model("default", device="cpu", dtype="float32")
    scan = llmri.scan(model, corpus, folder, pool="first", progress=False)
    rm = llmri.regions(scan, grid=grid, preset="llm-mri")
    out = {"hidden": {L: scan.activations(L) for L in scan.layers()},
           "cells": {L: rm.cells(L) for L in rm.layers}, "edges": {}, "metrics": {}}
    for name, cats in [("all", None)] + [(c, [c]) for c in corpus.label_names]:
        g = llmri.nrag(rm, cats)
        out["edges"][name] = sorted([f"{u[0]}_{u[1]}_{u[2]}", f"{v[0]}_{v[1]}_{v[2]}", int(d["weight"])]
                                    for u, v, d in g.edges(data=True))
        out["metrics"][name] = llmri.graph_metrics(g)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=".venv-llm-mri")
    ap.add_argument("--corpus", default="word_order", choices=["word_order", "topics"])
    ap.add_argument("--grid", type=int, default=10)
    args = ap.parse_args()
    python = ensure_venv(Path(args.venv))
    corpus = llmri.demo_corpus(args.corpus)
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"texts": corpus.texts, "labels": corpus.labels.tolist(), "label_names": corpus.label_names}
        Path(tmp, "corpus.json").write_text(json.dumps(spec))
        Path(tmp, "original.py").write_text(_ORIGINAL)
        env = dict(os.environ, PYTHONPATH="")
        proc = subprocess.run([python, Path(tmp, "original.py"), Path(tmp, "corpus.json"),
                               str(model_folder("default")), str(args.grid), Path(tmp, "original.json")],
                              capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0:
            raise SystemExit(f"LLM-MRI failed:\n{proc.stderr[-3000:]}")
        orig = json.loads(Path(tmp, "original.json").read_text())
        ours = llmri_side(corpus, args.grid, Path(tmp, "scan"))

    layers = sorted(ours["hidden"])
    print(f"corpus {args.corpus}: {len(corpus)} documents, {corpus.label_names}; model {llmri.DEFAULT_MODEL}; "
          f"pooling: first token; {args.grid}x{args.grid} grid; llmri preset llm-mri")
    diff = max(float(np.abs(np.asarray(orig["hidden"][str(L)]) - ours["hidden"][L]).max()) for L in layers)
    print(f"hidden states: max |difference| {diff:.2e} over {len(layers)} layers")
    for L in layers:
        same = (np.asarray(orig["cells"][str(L)]) == ours["cells"][L]).all(1)
        print(f"  layer {L}: grid cells equal for {same.sum()}/{len(same)} documents")
    for name in orig["edges"]:
        a = {(u, v): w for u, v, w in orig["edges"][name]}
        b = {(u, v): w for u, v, w in ours["edges"][name]}
        print(f"NRAG {name}: {len(a)} edges in LLM-MRI, {len(b)} in llmri; identical (ends and weights): {a == b}")
    print("metrics (llmri preset llm-mri | LLM-MRI):")
    for name in orig["metrics"]:
        parts = []
        for ours_k, orig_k in _SAME.items():
            x, y = ours["metrics"][name][ours_k], orig["metrics"][name][orig_k]
            ok = y is not None and np.isclose(x, y, rtol=1e-9, atol=1e-12)
            parts.append(f"{ours_k} {'=' if ok else f'{x:.6g} vs {y}'}")
        print(f"  {name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
