"""The whole LLM-MRI pipeline, llmri against the original LLM-MRI 0.2.1: time and peak memory.

The pipeline is LLM-MRI's: hidden states of every layer, 2-d PCA regions on a 10x10 grid, one
NRAG per category and the graph metrics of each. Each side runs as a cold process (a fresh
interpreter that imports its package, loads all-MiniLM-L6-v2 from the same folder and reads the
same corpus), the two sides interleaved, ``--repeats`` times; the figures are the minimum wall
time and the minimum peak resident memory (``ru_maxrss`` of the child) of each side.

- the original runs in its own venv (``benchmarks/llm_mri_fidelity.py`` builds it:
  ``llm_mri==0.2.1``, ``pyarrow<18``; Debian's graphviz and libgraphviz-dev);
- llmri runs in its default mode (``dtype="auto"``, default pooling, ``regions(grid=10)``), or
  with ``--dtype float32`` for the exact mode.

Goal (issue 19): time ratio <= 0.35 and peak memory ratio <= 0.25.

    HF_HUB_OFFLINE=1 python3 benchmarks/llm_mri_speed.py --docs 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import llmri  # noqa: E402
from llm_mri_fidelity import _ORIGINAL, ensure_venv  # noqa: E402
from llmri.model import model_folder  # noqa: E402

_OURS = r'''
import json, sys
import llmri
spec, model, grid, out, dtype = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
corpus = llmri.Corpus(spec["texts"], [spec["label_names"][i] for i in spec["labels"]])
scan = llmri.scan(model, corpus, out + ".scan", dtype=dtype, progress=False)
rm = llmri.regions(scan, grid=grid, progress=False)
metrics = {}
for name, cats in [("all", None)] + [(c, [c]) for c in corpus.label_names]:
    metrics[name] = llmri.graph_metrics(llmri.nrag(rm, cats))
json.dump({"metrics": metrics, "dtype": scan.settings["dtype"]}, open(out, "w"), default=float)
'''

# Runs one command as a child and prints its wall time and the child's peak RSS (MB).
_MEASURE = r'''
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
if rc.returncode:
    sys.exit(rc.stderr[-3000:])
print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''


def corpus_of(n: int) -> llmri.Corpus:
    """A labelled corpus of ``n`` real paragraphs: a seeded sample of :func:`llmri.english_corpus`."""
    return llmri.english_corpus(max_docs=n, seed=0)


def measure(cmd: list, cwd: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, cmd)], capture_output=True, text=True,
                          cwd=cwd, env=env)
    if proc.returncode:
        raise SystemExit(f"{cmd[1]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=".venv-llm-mri")
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--grid", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="llmri's dtype (auto is its default mode)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    python = ensure_venv(Path(args.venv)).absolute()
    corpus = corpus_of(args.docs)
    folder = str(model_folder("default"))
    runs: dict[str, list[dict]] = {"llm_mri": [], "llmri": []}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"texts": corpus.texts, "labels": corpus.labels.tolist(), "label_names": corpus.label_names}
        Path(tmp, "corpus.json").write_text(json.dumps(spec))
        Path(tmp, "original.py").write_text(_ORIGINAL)
        Path(tmp, "ours.py").write_text(_OURS)
        for k in range(args.repeats):
            for side in ("llm_mri", "llmri") if k % 2 == 0 else ("llmri", "llm_mri"):
                out = Path(tmp, f"{side}-{k}.json")
                if side == "llm_mri":
                    cmd = [python, "original.py", "corpus.json", folder, args.grid, out]
                    env = dict(os.environ, PYTHONPATH="")
                else:
                    cmd = [sys.executable, "ours.py", "corpus.json", folder, args.grid, out, args.dtype]
                    env = dict(os.environ)
                r = measure(cmd, tmp, env)
                runs[side].append(r)
                print(f"run {k} {side}: {r['wall']:.1f} s, peak {r['rss_mb']:.0f} MB", flush=True)
        dtype = json.loads(Path(tmp, "llmri-0.json").read_text())["dtype"]
    best = {s: {"wall": min(r["wall"] for r in v), "rss_mb": min(r["rss_mb"] for r in v)} for s, v in runs.items()}
    ratio = {k: best["llmri"][k] / best["llm_mri"][k] for k in ("wall", "rss_mb")}
    print(f"{len(corpus)} documents, grid {args.grid}, llmri dtype {args.dtype} (ran {dtype}); "
          f"min of {args.repeats} cold runs per side")
    print(f"  LLM-MRI 0.2.1: {best['llm_mri']['wall']:.1f} s, {best['llm_mri']['rss_mb']:.0f} MB")
    print(f"  llmri:         {best['llmri']['wall']:.1f} s, {best['llmri']['rss_mb']:.0f} MB")
    print(f"  ratio: time {ratio['wall']:.2f} (goal <= 0.35), peak memory {ratio['rss_mb']:.2f} (goal <= 0.25)")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(docs=len(corpus), dtype=dtype, runs=runs, best=best, ratio=ratio),
                                             indent=1))


if __name__ == "__main__":
    main()
