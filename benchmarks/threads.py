"""Thread-policy benchmark: the README's steer run on ``default-decoder`` with torch's own thread
count against llmri's policy (:mod:`llmri.threads`), idle and while busy processes load the cores.

Each run is a cold process (model load, then the timed ``steer_sweep`` of the README: positive vs
negative reviews, layer 6, probe layer 16, alphas -6,-3,0,3,6, two prompts, 40 new tokens); the
arms are interleaved and each reports the minimum of its runs. Arms:

- ``default``: torch's start-up thread count, the policy switched off, TOKENIZERS_PARALLELISM unset;
- ``policy``:  llmri as it ships (``configure_threads()`` before generating);
- ``one``:     ``OMP_NUM_THREADS=1``, the issue's work-around on a loaded machine.

``--load N`` starts N busy-loop processes (pure Python ``while True: pass``) for the runs of that
level; ``--load 0,2`` measures idle and loaded. A Scan of the reviews corpus is made once.

Run: python benchmarks/threads.py [--repeats 3] [--load 0,2] [--alphas -6,-3,0,3,6]
                                  [--max-new-tokens 40] [--arms default,policy,one]

Measured on the project's 2-core machine (no SMT, no cgroup quota: usable_cores() = torch's own 2),
shared with other sessions (load average 3-6, so "idle" here is loaded), dtype auto (float32 here):
the README run, min of 2: default 256.6 s, policy 342.1 s (same 2 threads; the gap is the load
moving, runs 257-366 s), one thread 51.3 s (0.20 of default); 3 alphas x 20 tokens, min of 3:
default 72.4 s, policy 82.3 s, one thread 16.2 s (0.22). Generations identical in every arm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SRC = str(Path(__file__).resolve().parents[1] / "src")   # this checkout's llmri, here and in the runs
sys.path.insert(0, SRC)
PROMPTS = ["How was the hotel?", "Tell me about your weekend."]
ARMS = ("default", "policy", "one")


def child(scan: str, arm: str, alphas: list[float], max_new_tokens: int) -> None:
    """One cold steer run; prints a JSON line with its times and thread count."""
    t0 = time.perf_counter()
    import torch

    import llmri
    import llmri.threads

    if arm == "default":
        llmri.threads._state["done"] = True      # the policy never runs: torch keeps its own count
    dec = llmri.load_model("default-decoder")
    t1 = time.perf_counter()
    df = llmri.steer_sweep(dec, scan, "positive", "negative", 6, alphas, PROMPTS, probe_layer=16,
                           max_new_tokens=max_new_tokens, progress=False)
    t2 = time.perf_counter()
    print(json.dumps(dict(arm=arm, threads=torch.get_num_threads(), loadavg=os.getloadavg()[0], load_s=t1 - t0, steer_s=t2 - t1,
                          total_s=t2 - t0, tokenizers=os.environ.get("TOKENIZERS_PARALLELISM"),
                          generations=list(df["generation"]))))


def run_arm(scan: str, arm: str, alphas: str, max_new_tokens: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "TOKENIZERS_PARALLELISM")}
    if arm == "one":
        env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", arm, "--scan", scan, f"--alphas={alphas}",
                           "--max-new-tokens", str(max_new_tokens)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} run failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    return out


def make_scan(folder: Path) -> str:
    import llmri

    dec = llmri.load_model("default-decoder")
    llmri.scan(dec, llmri.reviews_corpus(), folder, layers=[6, 16], progress=False)
    return str(folder)


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", default="0,2", help="Busy processes per level, comma-separated.")
    ap.add_argument("--alphas", default="-6,-3,0,3,6")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--scan", default=None, help="A reviews Scan of default-decoder with layers 6 and 16.")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    if args.child:
        child(args.scan, args.child, alphas, args.max_new_tokens)
        return

    import llmri.threads

    arms = args.arms.split(",")
    print(f"usable cores (policy): {llmri.threads.usable_cores()}, os.cpu_count(): {os.cpu_count()}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        scan = args.scan or make_scan(Path(tmp) / "reviews-dec")
        for level in [int(x) for x in args.load.split(",")]:
            procs = busy(level)
            try:
                runs: dict[str, list[dict]] = {a: [] for a in arms}
                for _ in range(args.repeats):
                    for arm in arms:
                        runs[arm].append(run_arm(scan, arm, args.alphas, args.max_new_tokens))
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            gens = {a: runs[a][0]["generations"] for a in arms}
            same = all(g == gens[arms[0]] for g in gens.values())
            print(f"\nload: {level} busy processes; {len(alphas)} alphas x {len(PROMPTS)} prompts x "
                  f"{args.max_new_tokens} tokens, min of {args.repeats} cold runs each "
                  f"(generations identical across arms: {same})")
            base = min(r["steer_s"] for r in runs[arms[0]])
            for arm in arms:
                s = min(r["steer_s"] for r in runs[arm])
                p = min(r["process_s"] for r in runs[arm])
                print(f"  {arm:8s} threads {runs[arm][0]['threads']:2d}  steer_sweep {s:7.2f} s "
                      f"(runs {', '.join(format(r['steer_s'], '.1f') for r in runs[arm])})  whole process {p:7.2f} s  "
                      f"steer / {arms[0]} = {s / base:.2f}  (load average at the runs: "
                      f"{', '.join(format(r['loadavg'], '.1f') for r in runs[arm])})")


if __name__ == "__main__":
    main()
