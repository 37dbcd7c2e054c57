"""Distributed capture benchmark: llmri.scan on a local Ray cluster against the local path, same run.

Every timing is the wall time of one ``scan`` call from the model's name, so both paths load the
model: the local path in this process, each Ray worker in its own process (an actor).

(a) Ray, 1 worker / local on 1 torch thread     the overhead of the Ray path (goal <= 1.15)
(b) Ray, 2 workers / Ray, 1 worker              what a second worker buys on this machine
(c) Ray, 2 workers / local on all threads       what a user of this machine gains or loses
(d) fixed cost of a Ray scan: a repeated call answered from the finished Scan still starts the
    workers, loads the model and plans (seconds, not a ratio)

The cluster is started once (not timed in the ratios; printed). On CPU a worker runs torch on as
many threads as CPUs it holds (one here), so a 2-core machine gains nothing from a second worker
over a local scan that already uses both cores. No GPU figures: none was measured.

Run: python benchmarks/distributed.py [--docs 300] [--model default] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import llmri
from capture import mixed_corpus  # benchmarks/capture.py: the same 300-document corpus


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--shard-tokens", type=int, default=8192, help="the unit of work of a Ray worker")
    args = ap.parse_args()
    corpus = mixed_corpus(args.docs)
    sites = dict(sites=("resid", "mlp"), shard_tokens=args.shard_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="llmri-bench-distributed-"))
    runs = iter(range(10**6))

    def local(threads: int):
        def run():
            torch.set_num_threads(threads)
            llmri.scan(args.model, corpus, tmp / f"local-{next(runs)}", progress=False, **sites)
        return run

    def on_ray(workers: int, out=None):
        def run():
            llmri.scan(args.model, corpus, out or tmp / f"ray-{next(runs)}", engine=llmri.Engine("ray", workers=workers),
                       progress=False, **sites)
        return run

    threads = torch.get_num_threads()
    t_local_all = best_of(args.repeats, local(threads))
    t_local_1 = best_of(args.repeats, local(1))
    torch.set_num_threads(threads)
    t = time.perf_counter()
    ray = llmri.distributed.connect("local")
    t_init = time.perf_counter() - t
    cpus = int(ray.cluster_resources().get("CPU", 0))
    t_ray_1 = best_of(args.repeats, on_ray(1))
    t_ray_2 = best_of(args.repeats, on_ray(2))
    done = tmp / "ray-finished"
    on_ray(2, done)()
    t_fixed = best_of(args.repeats, on_ray(2, done))
    ray.shutdown()

    n_tokens = llmri.Scan.open(done).manifest["plan"]["n_tokens"]
    n_shards = llmri.Scan.open(done).manifest["plan"]["n_shards"]
    print(f"{args.docs} documents, {n_tokens} tokens in {n_shards} shards, model {args.model}, sites resid+mlp; "
          f"{os.cpu_count()} cores, Ray cluster of {cpus} CPUs (started in {t_init:.1f} s), best of {args.repeats}; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"  local, {threads} threads      {t_local_all:7.1f} s")
    print(f"  local, 1 thread        {t_local_1:7.1f} s")
    print(f"  Ray, 1 worker          {t_ray_1:7.1f} s")
    print(f"  Ray, 2 workers         {t_ray_2:7.1f} s")
    print(f"(a) Ray 1 worker / local 1 thread       {t_ray_1 / t_local_1:5.2f}x   (goal <= 1.15)")
    print(f"(b) Ray 2 workers / Ray 1 worker        {t_ray_2 / t_ray_1:5.2f}x")
    print(f"(c) Ray 2 workers / local {threads} threads     {t_ray_2 / t_local_all:5.2f}x")
    print(f"(d) fixed cost of a Ray scan (workers start, load the model, plan): {t_fixed:.1f} s")


if __name__ == "__main__":
    main()
