"""llmri's SAE training side by side with SAELens' (``sae_lens`` from PyPI) on the same activations.

Both train the same architecture (BatchTopK or TopK), width, k, batch size, learning rate
(constant, linear decay to 0 over the last 20% of steps), number of tokens and AuxK settings
(coefficient 1/32; a latent is dead after the same number of tokens) on the identical token
activations: ``resid.15`` of the default decoder over real English (``llmri.english_corpus()``,
the split of ``benchmarks/sae.py``), every document's first token (the attention sink) left
out. SAELens is fed those activations as an in-memory data provider through its
``SAETrainer``; both normalise inputs to mean norm sqrt(d_in) (``expected_average_only_in``)
and fold the scale into the weights at the end. The SAELens SAE is then saved in its inference
layout and read by ``llmri.SAE.load``, so both are evaluated by the same ``evaluate_sae`` on the
same held-out paragraphs (explained variance, L0, CE loss score, KL, dead fraction). Prints the
wall time of each and the ratio.

    python benchmarks/sae_vs_saelens.py [--docs 600] [--latents 4096] [--k 32] [--arch batchtopk]
        [--batch-size 1024] [--epochs 1] [--tokens N] [--heldout-docs 40] [--out /tmp/llmri-sae-vs-saelens]
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import llmri
from llmri.sae import SAE, evaluate_sae, train_sae
from llmri.sae.train import _read_shard
from llmri.store import scan_from_arrays


def english_split(n_docs: int, n_heldout: int):
    """The training and held-out paragraphs of the SAE benchmarks: a seeded sample of
    ``n_docs`` paragraphs of ``english_corpus()``; every 15th is held out."""
    full = llmri.english_corpus(max_docs=n_docs, seed=0)
    train = full.subset(i for i in range(len(full)) if i % 15)
    heldout = full.subset([i for i in range(len(full)) if i % 15 == 0][:n_heldout])
    return train, heldout


def scan_activations(scan, site: str) -> torch.Tensor:
    """Every token activation of ``site`` that llmri's trainer sees (first tokens left out)."""
    parts = [_read_shard(scan, [site], s, skip_first=True)[site] for s in range(scan.n_shards)]
    return torch.from_numpy(np.concatenate(parts))


def train_saelens(x: torch.Tensor, arch: str, n_latents: int, k: int, batch_size: int, epochs: int,
                  lr: float, dead_tokens: int, seed: int):
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    cls, cfg_cls = ((BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig) if arch == "batchtopk"
                    else (TopKTrainingSAE, TopKTrainingSAEConfig))
    cfg = cfg_cls(d_in=x.shape[1], d_sae=n_latents, k=k, aux_loss_coefficient=1 / 32,
                  normalize_activations="expected_average_only_in", dtype="float32", device="cpu")
    sae = cls(cfg)
    n = x.shape[0]
    total = n * epochs
    steps = math.ceil(total / batch_size)
    rng = np.random.default_rng(seed)

    def provider():
        buf = torch.empty(0, x.shape[1])
        while True:
            while buf.shape[0] < batch_size:
                buf = torch.cat([buf, x[torch.from_numpy(rng.permutation(n))]])
            yield buf[:batch_size]
            buf = buf[batch_size:]

    tcfg = SAETrainerConfig(total_training_samples=total, train_batch_size_samples=batch_size, lr=lr,
                            lr_end=0.0, lr_decay_steps=int(0.2 * steps), device="cpu",
                            dead_feature_window=max(1, dead_tokens // batch_size),
                            feature_sampling_window=max(1, steps),
                            n_batches_for_norm_estimate=max(1, 65536 // batch_size),
                            logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=provider())
    return trainer.fit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600, help="paragraphs sampled from english_corpus()")
    ap.add_argument("--heldout-docs", type=int, default=40)
    ap.add_argument("--site", default="resid.15")
    ap.add_argument("--arch", default="batchtopk", choices=("batchtopk", "topk"))
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--tokens", type=int, default=None,
                    help="train both on the first N of those activations (an array-backed scan for llmri)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/llmri-sae-vs-saelens")
    args = ap.parse_args()
    out = Path(args.out)
    torch.manual_seed(args.seed)
    model = llmri.load_model("default-decoder")
    train, heldout = english_split(args.docs, args.heldout_docs)
    scan = llmri.scan(model, train, out / "scan", sites=(args.site,), token_sites=(args.site,), progress=True)
    x = scan_activations(scan, args.site)
    skip_first = True
    if args.tokens is not None and args.tokens < x.shape[0]:
        # the same tokens for both: llmri reads them from a Scan written from the array itself
        x = x[:args.tokens].contiguous()
        shutil.rmtree(out / "subset", ignore_errors=True)
        n_docs = math.ceil(len(x) / 50)
        lengths = [50] * (n_docs - 1) + [len(x) - 50 * (n_docs - 1)]
        scan = scan_from_arrays(out / "subset", {}, labels=np.zeros(n_docs, dtype=int), model_name=scan.model_name,
                                token_activations={args.site: x.numpy()}, lengths=lengths)
        skip_first = False  # the sinks are already out of x
    n = x.shape[0]
    lr = args.lr if args.lr is not None else 2e-4 / math.sqrt(args.latents / 2 ** 14)
    dead_tokens = max(args.batch_size, min(10_000_000, n * args.epochs // 10))
    print(f"{n} training tokens ({train.__len__()} paragraphs), {args.arch}, {args.latents} latents, k={args.k}, "
          f"batch {args.batch_size}, lr {lr:.3g}, {args.epochs} epoch(s), torch threads {torch.get_num_threads()}")

    t = time.perf_counter()
    ours = train_sae(scan, args.site, n_latents=args.latents, k=args.k, arch=args.arch, batch_size=args.batch_size,
                     epochs=args.epochs, lr=lr, dead_tokens=dead_tokens, seed=args.seed, skip_first=skip_first,
                     progress=False)
    t_ours = time.perf_counter() - t
    print(f"llmri trained in {t_ours:.1f} s ({n * args.epochs / t_ours:.0f} tokens/s)", flush=True)
    t = time.perf_counter()
    theirs = train_saelens(x, args.arch, args.latents, args.k, args.batch_size, args.epochs, lr, dead_tokens, args.seed)
    t_theirs = time.perf_counter() - t
    print(f"SAELens trained in {t_theirs:.1f} s ({n * args.epochs / t_theirs:.0f} tokens/s)", flush=True)
    shutil.rmtree(out / "theirs", ignore_errors=True)
    theirs.save_inference_model(out / "theirs")
    theirs = SAE.load(out / "theirs")
    theirs.site = theirs.target_site = args.site
    print(f"training wall time: llmri {t_ours:.1f} s ({n * args.epochs / t_ours:.0f} tokens/s), SAELens "
          f"{t_theirs:.1f} s ({n * args.epochs / t_theirs:.0f} tokens/s); SAELens / llmri time ratio "
          f"{t_theirs / t_ours:.2f}x")
    keys = ("l0", "explained_variance", "cossim", "ce_loss_score", "kl_div_with_sae", "dead_fraction")
    print(f"held out ({len(heldout)} paragraphs):")
    for name, sae in (("llmri", ours), ("SAELens", theirs)):
        m = evaluate_sae(sae, model, heldout, progress=False)
        print(f"  {name:8s} n_tokens {m['n_tokens']}, " + ", ".join(f"{k} {m[k]:.4g}" for k in keys), flush=True)


if __name__ == "__main__":
    main()
