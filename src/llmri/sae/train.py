"""Training SAEs and transcoders: :func:`train_sae`, from a Scan's token-level records (read one
shard at a time) or, given a model and a corpus, from activations made on the fly (``stream``).

The step itself (architectures, initialisation, dead latents, precision) is ``trainer``'s; the
several SAEs of one run and their progress figures are ``session``'s; both ways of training
share them, so a Scan and a stream of the same tokens in the same order train the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from ..corpus import Corpus
from ..errors import LlmriError
from ..model import Model
from ..sites import ADAPTERS, parse_site
from ..store import Scan
from .session import Session, drop_outliers
from .settings import BUFFER_TOKENS, StreamSettings, TrainSettings, site_pairs
from .stream import train_sae_stream
from .trainer import training_precision


def train_sae(scan, site=None, n_latents: int = 4096, k: int = 32, arch: str = "batchtopk",
              target_site=None, epochs: int = 1, batch_size: int = 4096, lr: float | None = None,
              l1_coefficient: float = 5.0, l0_coefficient: float = 0.05, bandwidth: float = 0.05,
              b_dec_init: str = "geometric_median", normalize: bool = True, aux_k: int | None = None,
              aux_coefficient: float = 1 / 32, dead_tokens: int | None = None, skip_first: bool | None = None,
              skip_outliers: float | None = 10.0, seed: int = 0, device: str = "auto", dtype: str = "auto",
              progress: bool | None = None, *, shuffle: bool = True, corpus=None, sites=None, tokens=None,
              buffer_tokens: int = BUFFER_TOKENS, batch_tokens: int = 8192, max_length: int | None = None,
              checkpoint=None, checkpoint_every: float = 300.0):
    """Train an SAE (or a transcoder, with ``target_site``) on a Scan's token-level records, or on
    activations of a model made on the fly.

    **From a Scan** (``train_sae(scan, site, ...)``): ``site`` is one token site (``"resid.6"``) or a
    list of them: several SAEs are then trained in one pass over the data and a dict ``{site: SAE}``
    is returned. The Scan is read one shard at a time (memory stays bounded whatever the token
    count), shards in a seeded random order and tokens shuffled inside each shard (``shuffle=False``:
    shards and tokens in their stored order), ``epochs`` times.

    **From a model and a corpus** (``train_sae(model, corpus, sites=[...], tokens=N)``, taken when the
    first argument is a :class:`~llmri.Model`, or ``corpus`` or ``tokens`` is given; the first
    argument may then be a model name or folder): no Scan is written. ``tokens`` (default 2**22) is
    the budget of training tokens, ``ceil(tokens / batch_size)`` optimiser steps, the corpus read
    again in a new order when it holds fewer; every site comes from one forward pass per batch of
    ``batch_tokens`` padded tokens (cut at ``max_length``), computed as :func:`llmri.scan` computes
    (``computing(model, "sae-activations")``: bf16-mixed where the fidelity table allows it). Tokens pass
    through a seeded shuffling buffer of ``buffer_tokens`` tokens (65,536: each step then mixes
    some 1,300 paragraphs of different lengths; see :mod:`llmri.sae.stream`), or in order with ``shuffle=False``.
    ``checkpoint`` is a file that holds the whole training state, written atomically every
    ``checkpoint_every`` seconds and at the end; given an existing one of the same run, training
    resumes from it and ends with the weights an uninterrupted run would have. The arguments are
    checked by :class:`~llmri.sae.settings.StreamSettings`. See :func:`~llmri.sae.stream.train_sae_stream`.

    Either way, ``k`` is the number of active latents per token (TopK) or on average (BatchTopK);
    ReLU uses ``l1_coefficient`` and JumpReLU ``l0_coefficient`` and ``bandwidth`` instead. A run of
    fewer optimiser steps than its width needs (see :func:`~llmri.sae.settings.too_few_steps`) warns
    in one line. ``sae.metadata["window"]`` holds explained variance and L0 over the last tenth of
    the steps (2 to 100), ``metadata["final"]`` the last batch's. ``skip_first`` leaves out each
    document's first token, where decoders park an attention sink whose residual norm is orders
    of magnitude above the rest (default: on for decoders, see :func:`scan_is_causal`).
    ``skip_outliers`` leaves out every token whose norm at a trained site exceeds that many times
    the site's median token norm: the "massive activations" some decoders also write at other
    early tokens (Sun et al. 2024, *Massive activations in large language models*; SmolLM2-135M
    puts norms of 16,000-24,000 against a median of 220 at resid.20 on the second token of a
    document that starts with a two-token word). A few dozen such tokens in 100k would otherwise
    dominate the squared error and claim latents of their own. The threshold, in the site's raw
    units, is kept in ``sae.metadata["max_norm"]``, and :func:`feature_activations` skips the same
    tokens. ``None`` keeps every token.

    ``dtype`` is the precision of the training arithmetic: ``float32``, ``bf16-mixed`` (``bfloat16``
    means the same here: bfloat16 matrix products, float32 weights, optimiser state and losses) or
    ``auto`` (bf16-mixed on hardware with native bfloat16 where the fidelity table allows it, see
    :data:`llmri.precision.AUTO_BF16`, else float32). The saved SAE is float32 either way; the precision
    used is kept in ``sae.metadata["precision"]``.

    >>> sae = llmri.train_sae(scan, site="resid.15", n_latents=4096, k=32)   # doctest: +SKIP
    >>> tc = llmri.train_sae(scan, site="mlp_in.3", target_site="mlp_out.3")  # a transcoder
    >>> saes = llmri.train_sae("default-decoder", llmri.english_corpus(), sites=["resid.6", "resid.12"],
    ...                        tokens=2_000_000, n_latents=2048, checkpoint="runs/train.safetensors")
    """
    common = dict(n_latents=n_latents, k=k, arch=arch, batch_size=batch_size, lr=lr, l1_coefficient=l1_coefficient,
                  l0_coefficient=l0_coefficient, bandwidth=bandwidth, b_dec_init=b_dec_init, normalize=normalize,
                  aux_k=aux_k, aux_coefficient=aux_coefficient, dead_tokens=dead_tokens, skip_first=skip_first,
                  skip_outliers=skip_outliers, shuffle=shuffle, seed=seed, dtype=dtype)
    streaming = isinstance(scan, (Model, tuple)) or isinstance(site, Corpus) or corpus is not None or tokens is not None
    if streaming and isinstance(scan, Scan):
        raise LlmriError("tokens, corpus: a Scan is read for epochs; give a model and a corpus to train for a "
                         "token budget")
    if streaming:
        if epochs != 1:
            raise LlmriError("epochs: training from a model and a corpus is sized by tokens=, not epochs")
        corpus, sites = (site, sites) if corpus is None else (corpus, sites if site is None else site)
        if sites is None:
            raise LlmriError("sites: give the sites to train, e.g. sites=['resid.6']")
        settings = StreamSettings(**common, tokens=2**22 if tokens is None else tokens, buffer_tokens=buffer_tokens,
                                  batch_tokens=batch_tokens, max_length=max_length, checkpoint_every=checkpoint_every)
        return train_sae_stream(scan, corpus, sites, target_site, settings=settings, checkpoint=checkpoint,
                                device=device, progress=progress)
    if checkpoint is not None:
        raise LlmriError("checkpoint: only training from a model and a corpus writes checkpoints")
    if site is None and sites is None:
        raise LlmriError("site: give the token site(s) to train, e.g. site='resid.6'")
    return _train_from_scan(scan, site if site is not None else sites, target_site, epochs, TrainSettings(**common),
                            device, progress)


def _train_from_scan(scan, site, target_site, epochs: int, settings: TrainSettings, device: str, progress):
    if isinstance(scan, (str, os.PathLike)):
        scan = Scan.open(scan)
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise LlmriError(f"epochs must be a positive integer, got {epochs!r}")
    single = isinstance(site, str)
    sites, targets = site_pairs(site, target_site)
    names = [_site_name(scan, s) for s in sites]
    tnames = [_site_name(scan, t) for t in targets]
    if len(set(names)) != len(names):
        raise LlmriError(f"site: a site is named twice in {sites}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    precision = training_precision(settings.dtype, dev)
    s = settings
    rng = np.random.default_rng(s.seed)
    needed = list(dict.fromkeys(names + tnames))
    skip_first = scan_is_causal(scan) if s.skip_first is None else bool(s.skip_first)
    per_shard = [int(n.sum()) - (len(n) if skip_first else 0) for _, n in scan._index]
    total_tokens = sum(per_shard) * epochs
    total_steps = max(1, sum(-(-t // s.batch_size) for t in per_shard) * epochs)

    # First shard (in the first epoch's order) gives the scaling and the b_dec initialisation.
    orders = [rng.permutation(scan.n_shards) if s.shuffle else np.arange(scan.n_shards) for _ in range(epochs)]
    first = {nm: torch.from_numpy(a) for nm, a in _read_shard(scan, needed, orders[0][0], skip_first).items()}
    session = Session.start(dataclasses.replace(s, skip_first=skip_first), names, tnames, first, dev, precision,
                            scan.model_name, total_steps, total_tokens)
    del first
    bar = tqdm(total=total_tokens, unit="tok", unit_scale=True, desc=f"training {s.arch} SAE",
               disable=None if progress is None else not progress, file=sys.stderr, dynamic_ncols=True)
    with bar:
        for order in orders:
            for sh in order:
                data = {nm: torch.from_numpy(a) for nm, a in _read_shard(scan, needed, sh, skip_first).items()}
                data = drop_outliers(data, session.max_norm)
                n = data[needed[0]].shape[0]
                perm = torch.from_numpy(rng.permutation(n)) if s.shuffle else torch.arange(n)
                for start in range(0, n, s.batch_size):
                    rows = perm[start:start + s.batch_size]
                    session.step({nm: a[rows] for nm, a in data.items()})
                    bar.update(len(rows))
                    bar.set_postfix(session.postfix(), refresh=False)
                del data
    out = session.finish(epochs=epochs, scan=str(scan.folder))
    return out[names[0]] if single else out


def _site_name(scan, site: str) -> str:
    kind, layer = parse_site(site)
    if layer is None:
        raise LlmriError(f"site {site!r}: give a layer, e.g. {kind}.3")
    return scan._name(None, site, scan.token_sites, " at token level")


def scan_is_causal(scan) -> bool:
    """Whether the scanned model is a decoder (its first token is an attention sink)."""
    adapter = ADAPTERS.get(scan.manifest["model"].get("family"))
    return bool(adapter and adapter.causal)


def first_token_rows(ntok: np.ndarray) -> np.ndarray:
    """Rows of each document's first token in a shard's token arrays."""
    return np.concatenate([[0], np.cumsum(ntok)[:-1]]).astype(np.int64)


def _read_shard(scan, names: list[str], s: int, skip_first: bool = False) -> dict[str, np.ndarray]:
    """Token activations of one shard for every named site (one shard in memory at a time)."""
    out = {}
    for name in names:
        kind, layer = parse_site(name)
        for _, ntok, _, acts in scan.iter_token_shards(layer, kind, order=[s]):
            acts = np.asarray(acts, dtype=np.float32)
            out[name] = np.delete(acts, first_token_rows(ntok), axis=0) if skip_first else acts
    return out
