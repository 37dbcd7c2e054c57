"""SAE training throughput and quality on the default decoder's mid-layer residual stream.

Scans real English with ``default-decoder`` (SmolLM2-135M-Instruct) keeping ``resid.15`` for
every token, trains a BatchTopK SAE on it, and evaluates it spliced into the model on held-out
text. ``--corpus english`` (default) takes ``--docs`` paragraphs of ``llmri.english_corpus()``
(the Python documentation from Debian's python3-doc, seeded sample; every 15th paragraph is
held out, the first ``--heldout-docs`` of those are evaluated); ``--corpus demo`` the bundled
demo corpus, evaluated on the bundled reviews corpus. Prints tokens/s of training, peak resident
memory, L0, explained variance, CE loss score, KL and the dead fraction. As a baseline measured
in the same process it also times one pass of the same tokens through an SAE forward only
(encode + decode, no gradients), so the ratio says what the optimiser step costs.

    python benchmarks/sae.py --docs 4500 --heldout-docs 100 --batch-size 4096 --out /work/runs/sae15
    python benchmarks/sae.py --corpus demo --epochs 20 --batch-size 1024
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

import llmri
from llmri.sae import SAE, evaluate_sae, train_sae
from llmri.store import atomic_write_json

sys.path.insert(0, str(Path(__file__).parent))
from sae_vs_saelens import english_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--site", default="resid.15")
    ap.add_argument("--corpus", default="english", choices=("english", "demo"))
    ap.add_argument("--docs", type=int, default=4500, help="paragraphs sampled from english_corpus()")
    ap.add_argument("--heldout-docs", type=int, default=100)
    ap.add_argument("--out", default="/tmp/llmri-sae-bench")
    args = ap.parse_args()
    out = Path(args.out)
    model = llmri.load_model("default-decoder")
    if args.corpus == "english":
        train, heldout = english_split(args.docs, args.heldout_docs)
        pooled = (args.site,)
    else:
        train, heldout, pooled = llmri.demo_corpus(), llmri.reviews_corpus(), ("resid.0",)
    t = time.perf_counter()
    scan = llmri.scan(model, train, out / "scan", sites=pooled, token_sites=(args.site,), progress=True)
    n_tokens = int(scan.manifest["plan"]["n_tokens"])
    print(f"scan: {n_tokens} tokens of {scan.n_docs} documents in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    sae = train_sae(scan, args.site, n_latents=args.latents, k=args.k, epochs=args.epochs,
                    batch_size=args.batch_size, progress=True)
    train_s = time.perf_counter() - t
    shutil.rmtree(out / "sae", ignore_errors=True)
    sae.save(out / "sae")
    # baseline: forward only over the same tokens, same batches
    t = time.perf_counter()
    kind, layer = llmri.parse_site(args.site)
    with torch.no_grad():
        for _ in range(args.epochs):
            for _, _, _, acts in scan.iter_token_shards(layer, kind):
                x = torch.from_numpy(acts)
                for a in range(0, len(x), args.batch_size):
                    sae(x[a:a + args.batch_size])
    fwd_s = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    trained = int(sae.metadata["n_tokens"])   # each document's first token is left out of training
    print(f"training: {trained} tokens, {trained / train_s:.0f} tokens/s ({train_s:.1f} s); forward-only baseline "
          f"{n_tokens * args.epochs / fwd_s:.0f} tokens/s (every token); "
          f"train/forward time per token {(train_s / trained) / (fwd_s / (n_tokens * args.epochs)):.1f}x; "
          f"peak RSS {peak_gb:.2f} GB")
    m = evaluate_sae(SAE.load(out / "sae"), model, heldout, progress=True)
    atomic_write_json(out / "sae" / "eval.json", {k: v for k, v in m.items() if k != "feature_density"})
    print(f"held-out ({len(heldout)} documents): " + ", ".join(
        f"{k} {m[k]:.4g}" for k in ("n_tokens", "l0", "explained_variance", "cossim", "ce_loss_score",
                                     "ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation",
                                     "kl_div_with_sae", "dead_fraction", "dense_fraction")))


if __name__ == "__main__":
    main()
