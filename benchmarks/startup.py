"""Start-up benchmark: how long the command line takes before it does real work, and peak memory.

Each measure runs in a fresh process (median of --repeats runs) against baselines measured in
the same run: a bare ``python -c pass`` and ``python -c "import torch, transformers"`` (what
every command paid before imports were made lazy).

  llmri --help, import llmri, an argument error (a typo in --sites): goals 0.5 s, 1.0 s, 1.0 s
  a cached rescan (same command twice; the second answers from disk): goal 2 s
  peak RSS of a plain `llmri scan` of a 300-document corpus: goal 1.0 GB

Run: python benchmarks/startup.py [--docs 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture import mixed_corpus  # noqa: E402  (the capture benchmark's 300-document corpus)

import llmri  # noqa: E402

# Children run the llmri this process imports, whatever their working folder.
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(llmri.__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

_PEAK = ("import resource, sys; sys.argv = ['llmri'] + sys.argv[1:]\n"
         "from llmri.cli import main\n"
         "try:\n    main()\nfinally:\n"
         "    print('PEAK_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)")


def run(args: list[str], cwd: str | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=_ENV)
    return time.perf_counter() - t, proc


def median_time(args: list[str], repeats: int, cwd: str | None = None, ok: bool = True) -> float:
    times = []
    for _ in range(repeats):
        dt, proc = run(args, cwd)
        if ok and proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
        times.append(dt)
    return statistics.median(times)


def llmri_peak(cli_args: list[str], cwd: str) -> tuple[float, float]:
    dt, proc = run(["-c", _PEAK, *cli_args], cwd)
    if proc.returncode != 0:
        raise SystemExit(f"llmri {' '.join(cli_args)} failed: {proc.stderr.strip()[-500:]}")
    peak = [float(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_MB")]
    return dt, peak[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    r = args.repeats

    bare = median_time(["-c", "pass"], r)
    heavy = median_time(["-c", "import torch, transformers"], r)
    print(f"baselines: python -c pass {bare:.2f} s; import torch, transformers {heavy:.2f} s")
    helps = median_time(["-m", "llmri", "--help"], r)
    imp = median_time(["-c", "import llmri"], r)
    print(f"llmri --help          {helps:.2f} s  (goal 0.5; {helps / heavy:.2f}x the torch+transformers import)")
    print(f"import llmri          {imp:.2f} s  (goal 1.0; {imp / heavy:.2f}x)")

    with tempfile.TemporaryDirectory() as tmp:
        corpus = mixed_corpus(args.docs)
        rows = [{"text": t, "label": corpus.label_names[y]} for t, y in zip(corpus.texts, corpus.labels)]
        Path(tmp, "docs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        err = median_time(["-m", "llmri", "scan", "docs.jsonl", "--out", "s", "--sites", "resid,mpl"], r, tmp, ok=False)
        print(f"argument error        {err:.2f} s  (goal 1.0; a typo in --sites, reported before the model loads)")
        first, peak = llmri_peak(["scan", "docs.jsonl", "--out", "s"], tmp)
        cached = median_time(["-m", "llmri", "scan", "docs.jsonl", "--out", "s"], r, tmp)
        print(f"llmri scan, {args.docs} docs   {first:.2f} s, peak RSS {peak / 1024:.2f} GB (goal 1.0 GB)")
        print(f"cached rescan         {cached:.2f} s  (goal 2.0; {cached / first:.3f}x the first scan, no model load)")


if __name__ == "__main__":
    main()
