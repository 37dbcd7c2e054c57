"""bfloat16 against float32, for speed: the time of a scan in each precision, in one process.

Both embedded models scan the same real text (a seeded sample of ``english_corpus``) in float32,
``bf16-mixed`` (float32 weights, bf16 matrix products: what ``dtype="auto"`` uses where the
fidelity table holds) and ``bfloat16`` (bf16 weights). The model loads once per weight dtype;
the precisions are interleaved, ``--repeats`` rounds, and each figure is the minimum over the
rounds. Ratios are against float32 in the same process.

Goals (issue 19): encoder scan <= 0.50, decoder scan <= 0.45.

    HF_HUB_OFFLINE=1 python3 benchmarks/bf16_speed.py --docs 300 --decoder-docs 60 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llmri  # noqa: E402
from llmri.precision import native_bf16  # noqa: E402

PRECISIONS = ("float32", "bf16-mixed", "bfloat16")


def time_scans(name: str, corpus, site: str, repeats: int, tmp: Path) -> dict:
    f32 = llmri.load_model(name, device="cpu", dtype="float32")
    bf16 = llmri.load_model(name, device="cpu", dtype="bfloat16")
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for k in range(repeats):
        order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]
        for p in order:
            model = bf16 if p == "bfloat16" else f32
            model.precision = p
            t = time.perf_counter()
            llmri.scan(model, corpus, tmp / f"{name}-{p}-{k}", sites=(site,), progress=False)
            times[p].append(time.perf_counter() - t)
    best = {p: min(v) for p, v in times.items()}
    return dict(times=times, best=best, ratio={p: best[p] / best["float32"] for p in PRECISIONS})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=300, help="documents of the encoder scan")
    ap.add_argument("--decoder-docs", type=int, default=60, help="documents of the decoder scan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    import torch

    print(f"native bf16 on this CPU: {native_bf16(torch.device('cpu'))}; torch threads {torch.get_num_threads()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n, site, goal in (("default", args.docs, "resid", 0.50),
                                    ("default-decoder", args.decoder_docs, "resid.15", 0.45)):
            corpus = llmri.english_corpus(max_docs=n, seed=0)
            r = time_scans(name, corpus, site, args.repeats, Path(tmp))
            results[name] = dict(r, docs=n, site=site, goal=goal)
            print(f"{name}, {n} documents, {site}: " + ", ".join(
                f"{p} {r['best'][p]:.1f} s ({r['ratio'][p]:.2f})" for p in PRECISIONS) + f"; goal <= {goal}",
                flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
