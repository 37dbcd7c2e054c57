"""Corpus-level attention statistics (`--sites attn`) against a plain scan of residuals on the
same corpus: wall time and peak memory, each scan in a fresh process.

Run: python benchmarks/attention.py [--docs 300] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from capture import mixed_corpus  # noqa: E402  (the same mixed-length corpus as the capture benchmark)


def child(n_docs: int, sites: str, device: str) -> None:
    import llmri

    model = llmri.load_model("default", device=device)
    corpus = mixed_corpus(n_docs)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        s = llmri.scan(model, corpus, Path(d) / "s", sites=tuple(sites.split(",")), progress=False)
        wall = time.perf_counter() - t
        size = sum(p.stat().st_size for p in Path(d, "s").iterdir())
        print(json.dumps({"wall": wall, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "disk_mb": size / 2**20, "tokens": s.manifest["plan"]["n_tokens"]}))


def measure(n_docs: int, sites: str, device: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", sites, "--docs", str(n_docs), "--device", device],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args.docs, args.child, args.device)
    resid = measure(args.docs, "resid", args.device)
    attn = measure(args.docs, "attn", args.device)
    both = measure(args.docs, "resid,attn", args.device)
    print(f"{args.docs} documents, {resid['tokens']} tokens, device {args.device}")
    for name, r in (("resid only", resid), ("attn stats only", attn), ("resid + attn", both)):
        print(f"{name:16s} {r['wall']:6.1f} s   peak RSS {r['maxrss_mb']:6.0f} MB   on disk {r['disk_mb']:.2f} MB")
    print(f"attn / resid: time {attn['wall'] / resid['wall']:.2f}x, peak memory {attn['maxrss_mb'] / resid['maxrss_mb']:.2f}x")
    print(f"(resid + attn) / resid: time {both['wall'] / resid['wall']:.2f}x, "
          f"peak memory {both['maxrss_mb'] / resid['maxrss_mb']:.2f}x")


if __name__ == "__main__":
    main()
