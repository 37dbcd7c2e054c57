"""Training SAEs on activations made on the fly: a model, a corpus and a token budget, no Scan.

The corpus is tokenized once and cut into forward batches as :func:`llmri.scan` cuts it
(length-sorted, under ``batch_tokens`` padded tokens), visited in a seeded random order, a new
order each pass when the budget asks for more tokens than the corpus holds. One forward pass
through :func:`llmri.sites.hooks` reads every site the SAEs need, under
``llmri.precision.computing(model, "sae-activations")`` (bf16-mixed where the fidelity table allows it: an SAE trained on bf16-mixed activations holds, README *Precision*), and
stops after the deepest block needed. The tokens go through a shuffling buffer into the same
:class:`~llmri.sae.session.Session` that training from a Scan uses.

**The shuffling buffer** holds ``buffer_tokens`` tokens (65,536 by default) of every site; each
step draws ``batch_size`` of them at random (seeded) and the buffer is refilled from the next
forward batches. A forward batch is length-sorted, as a scan's: 8,192 padded tokens hold some 160
English paragraphs (``english_corpus`` averages 51 tokens) of nearly the same length, and a
paragraph's consecutive tokens are strongly correlated. Drawn straight from the forward passes, a
step of 4,096 tokens would see about 80 paragraphs, all of one length (so one mix of token
positions), and the next step another length. The buffer spans about 8 forward batches (some
1,300 paragraphs of different lengths, in a seeded random order) and a token stays in it for about
16 steps, so every step mixes them. It is not larger because it costs ``buffer_tokens x d x 4``
bytes per site (151 MB at SmolLM2's width 576; 1.2 GB for 8 sites), held whatever the budget, and
every checkpoint writes it. At the start it also holds the first sample (up to 65,536 tokens)
that sets the scales, so its size is at most ``max(buffer_tokens, 65536)`` plus one forward batch.

**Checkpoints** (``checkpoint=PATH``, every ``checkpoint_every`` seconds and at the end) are one
safetensors file written whole or not at all (:func:`llmri.store.write_shard`: a temporary file and
an atomic rename): every SAE's weights, Adam's state and firing statistics, the buffer, the random
generator's state and the corpus position, with the run's settings in its JSON metadata. A run
given an existing checkpoint of the same settings resumes from it and ends with the same weights,
bit for bit, as a run never stopped (on the CPU; CUDA's atomic adds are not deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batches import pad_batch, plan_batches, tokenize
from ..capture import TokenIds, _StopForward
from ..corpus import Corpus
from ..errors import LlmriError
from ..model import Model, as_model
from ..precision import computing, precision_used
from ..sites import block_of, expand_sites, hooks, parse_site
from ..store import write_shard
from .session import INIT_TOKENS, Session, drop_outliers
from .settings import StreamSettings, site_pairs
from .trainer import training_precision

CHECKPOINT_FORMAT = 1


def check_stream_sites(sites: list[str], n_layers: int | None) -> None:
    """Each site names one layer of a token site the model has (``n_layers`` blocks; None: unknown yet)."""
    for s in sites:
        kind, layer = parse_site(s)
        if layer is None:
            raise LlmriError(f"site {s!r}: give a layer, e.g. {kind}.3")
        if kind == "attn":
            raise LlmriError(f"site {s!r}: attention probabilities are not a token site; train on resid, mlp, "
                             "mlp_in, mlp_out, attn_out or attn_z")
        if n_layers is not None:
            expand_sites([s], n_layers)


class ShuffleBuffer:
    """Rows of every site, aligned; ``take(m)`` removes ``m`` rows drawn at random (``shuffle``) or
    the oldest ``m`` (without), and the last rows fill the holes, so storage stays compact."""

    def __init__(self, rng: np.random.Generator, shuffle: bool):
        self.rng, self.shuffle = rng, shuffle
        self.data: dict[str, torch.Tensor] = {}
        self.n = 0

    def put(self, rows: dict[str, torch.Tensor]) -> None:
        m = next(iter(rows.values())).shape[0]
        if not self.data:
            self.data = {k: v.new_empty((max(m, 1024),) + v.shape[1:]) for k, v in rows.items()}
        size = next(iter(self.data.values())).shape[0]
        if self.n + m > size:
            grow = max(2 * size, self.n + m)
            for k, v in self.data.items():
                bigger = v.new_empty((grow,) + v.shape[1:])
                bigger[:self.n] = v[:self.n]
                self.data[k] = bigger
        for k, v in rows.items():
            self.data[k][self.n:self.n + m] = v
        self.n += m

    def take(self, m: int) -> dict[str, torch.Tensor]:
        m, n = min(m, self.n), self.n
        if not self.shuffle:
            out = {k: v[:m].clone() for k, v in self.data.items()}
            for v in self.data.values():
                v[:n - m] = v[m:n].clone()
        else:
            idx = self.rng.choice(n, m, replace=False)
            taken = np.zeros(n, dtype=bool)
            taken[idx] = True
            dev = next(iter(self.data.values())).device
            holes = torch.from_numpy(idx[idx < n - m]).to(dev)
            movers = torch.from_numpy(np.flatnonzero(~taken[n - m:]) + (n - m)).to(dev)
            sel = torch.from_numpy(idx).to(dev)
            out = {k: v[sel] for k, v in self.data.items()}
            for v in self.data.values():
                v[holes] = v[movers]
        self.n -= m
        return out

    def rows(self) -> dict[str, torch.Tensor]:
        return {k: v[:self.n] for k, v in self.data.items()}


class ActivationSource:
    """Forward batches of the corpus in a seeded order per pass; ``next()`` gives one batch's
    tokens at every site in ``names`` (each document's first token left out with ``skip_first``)."""

    def __init__(self, model: Model, ids: TokenIds, batches: list[list[int]], names: list[str],
                 skip_first: bool, shuffle: bool, seed: int, device: torch.device):
        self.model, self.ids, self.batches, self.names = model, ids, batches, names
        self.skip_first, self.shuffle, self.seed, self.device = skip_first, shuffle, seed, device
        self.pass_i, self.pos = 0, 0
        self._order = self.order(0)
        self.stop_at = f"resid.{max(block_of(s) for s in names) + 1}"
        self.got: dict[str, torch.Tensor] = {}
        self.mask = None

    def order(self, pass_i: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.batches))
        return np.random.default_rng([self.seed, 0, pass_i]).permutation(len(self.batches))

    def seek(self, pass_i: int, pos: int) -> None:
        self.pass_i, self.pos, self._order = pass_i, pos, self.order(pass_i)

    def hooks(self):
        def make(site):
            def fn(x):
                if x.dim() == 2:  # some families flatten [batch * tokens, dim] around the MLP
                    x = x.view(*self.mask.shape, -1)
                if site in self.names:
                    self.got[site] = x[self.mask].float().to(self.device)
                if site == self.stop_at:
                    raise _StopForward
                return None
            return fn

        fns = {s: make(s) for s in dict.fromkeys(self.names + [self.stop_at])}
        return hooks(self.model.module, self.model.adapter, fns)

    def next(self) -> dict[str, torch.Tensor]:
        if self.pos == len(self.batches):
            self.seek(self.pass_i + 1, 0)
        docs = self.batches[self._order[self.pos]]
        self.pos += 1
        kwargs, mask = pad_batch(self.model, [self.ids[d] for d in docs])
        if self.skip_first:
            mask = mask.clone()
            mask[torch.arange(mask.shape[0], device=mask.device), mask.int().argmax(1)] = False
        self.mask = mask
        with torch.no_grad(), computing(self.model, "sae-activations"):
            try:
                self.model.base(**kwargs)
            except _StopForward:
                pass
        got, self.got = self.got, {}
        return got


def train_sae_stream(model, corpus, sites, target_site=None, *, settings: StreamSettings | None = None,
                     checkpoint=None, device: str = "auto", progress: bool | None = None, **kwargs):
    """Train SAEs (or transcoders) of ``sites`` on ``settings.tokens`` tokens of ``corpus`` run
    through ``model`` on the fly; :func:`llmri.train_sae` with a model comes here. ``kwargs`` are
    the settings when ``settings`` is not given. Returns ``{site: SAE}``, or one SAE for one site."""
    settings = settings or StreamSettings(**kwargs)
    single = isinstance(sites, str)
    names, tnames = site_pairs(sites, target_site)
    check_stream_sites(names + tnames, None)
    if isinstance(corpus, (str, Path)):
        corpus = Corpus.from_path(corpus)
    if not isinstance(corpus, Corpus):
        raise LlmriError(f"corpus: expected an llmri.Corpus or a path, got {type(corpus).__name__}")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.is_dir():
        raise LlmriError(f"checkpoint {checkpoint}: is a folder; give a file name, e.g. {checkpoint}/train.safetensors")
    model = as_model(model, device)
    check_stream_sites(names + tnames, model.n_layers)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    precision = training_precision(settings.dtype, dev)
    skip_first = model.adapter.causal if settings.skip_first is None else bool(settings.skip_first)
    needed = list(dict.fromkeys(names + tnames))
    key = dict(model=model.fingerprint, corpus=corpus.fingerprint, sites=names, targets=tnames, precision=precision,
               forward=precision_used(model, "sae-activations"), settings=dict(settings.values(), skip_first=skip_first))
    saved = read_checkpoint(checkpoint, key) if checkpoint is not None and checkpoint.is_file() else None
    if checkpoint is not None:  # what a writer killed in the middle leaves (never read)
        for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    limit = model.max_length
    ids, _ = tokenize(model, corpus.texts, min(limit, settings.max_length or limit))
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    corpus_tokens = int(lengths.sum()) - (len(ids) if skip_first else 0)
    if corpus_tokens < 1:
        raise LlmriError("corpus: no token to train on (every document is one token long, and the first "
                         "token of each is left out)")
    if settings.tokens > corpus_tokens and saved is None:
        warnings.warn(f"the corpus holds {corpus_tokens:,} training tokens; tokens={settings.tokens:,} reads it "
                      f"{settings.tokens / corpus_tokens:.1f} times", stacklevel=3)
    s = settings
    total_steps = -(-s.tokens // s.batch_size)
    source = ActivationSource(model, TokenIds(ids), plan_batches(lengths, s.batch_tokens), needed, skip_first,
                              s.shuffle, s.seed, dev)
    buffer = ShuffleBuffer(np.random.default_rng([s.seed, 1]), s.shuffle)
    session_settings = dataclasses.replace(s, skip_first=skip_first)
    with source.hooks():
        if saved is None:
            sample, n = [], 0
            while n < min(INIT_TOKENS, s.tokens) and source.pos < len(source.batches):
                sample.append(source.next())
                n += sample[-1][needed[0]].shape[0]
            sample = {k: torch.cat([g[k] for g in sample]) for k in needed}
            session = Session.start(session_settings, names, tnames, {k: v.cpu() for k, v in sample.items()}, dev,
                                    precision, model.name, total_steps, s.tokens)
            buffer.put(drop_outliers(sample, session.max_norm))
            drawn = 0
        else:
            tensors, meta = saved
            st = meta["session"]
            session = Session(session_settings, names, tnames, st["dims"], st["scales"], st["max_norm"], dev,
                              precision, model.name, total_steps, s.tokens)
            session.restore({k[4:]: v.to(dev) for k, v in tensors.items() if k.startswith("sae/")}, st)
            rows = {k[7:]: v.to(dev) for k, v in tensors.items() if k.startswith("buffer/")}
            if rows and next(iter(rows.values())).shape[0]:
                buffer.put(rows)
            buffer.rng.bit_generator.state = meta["rng"]
            source.seek(*meta["position"])
            drawn = meta["drawn"]
        bar = tqdm(total=s.tokens, initial=drawn, unit="tok", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                   desc=f"training {s.arch} SAE" + (f" x{len(names)}" if len(names) > 1 else ""),
                   disable=None if progress is None else not progress)
        last_save = time.monotonic()
        with bar:
            while drawn < s.tokens:
                m = min(s.batch_size, s.tokens - drawn)
                target = max(m, min(s.buffer_tokens, s.tokens - drawn)) if s.shuffle else m
                while buffer.n < target:
                    buffer.put(drop_outliers(source.next(), session.max_norm))
                session.step(buffer.take(m))
                drawn += m
                bar.update(m)
                bar.set_postfix(session.postfix(), refresh=False)
                if checkpoint is not None and time.monotonic() - last_save >= s.checkpoint_every and drawn < s.tokens:
                    write_checkpoint(checkpoint, key, session, buffer, source, drawn)
                    last_save = time.monotonic()
    if checkpoint is not None and (saved is None or saved[1]["drawn"] < s.tokens):
        write_checkpoint(checkpoint, key, session, buffer, source, drawn)
    out = session.finish(tokens=s.tokens, passes=round(s.tokens / corpus_tokens, 3), buffer_tokens=s.buffer_tokens,
                         shuffle=s.shuffle, corpus=corpus.source, corpus_fingerprint=corpus.fingerprint,
                         batch_tokens=s.batch_tokens, forward_precision=key["forward"])
    return out[names[0]] if single else out


# ---------------------------------------------------------------- checkpoints
def write_checkpoint(path: Path, key: dict, session: Session, buffer: ShuffleBuffer, source: ActivationSource,
                     drawn: int) -> None:
    """One safetensors file, whole or absent: tensors of the session and the buffer, state in its metadata."""
    tensors, state = session.state()
    arrays = {f"sae/{k}": v.detach().cpu().numpy() for k, v in tensors.items()}
    arrays.update({f"buffer/{k}": v.cpu().numpy() for k, v in buffer.rows().items()})
    meta = dict(format=CHECKPOINT_FORMAT, key=key, drawn=drawn, position=[source.pass_i, source.pos],
                rng=buffer.rng.bit_generator.state, session=state)
    write_shard(path, arrays, {"llmri": json.dumps(meta)})


def read_checkpoint_meta(path) -> dict:
    """The JSON state of the checkpoint at ``path`` (its corpus position, ``drawn`` tokens, ...), without
    its tensors; a one-line error when the file is damaged."""
    return _open_checkpoint(path, tensors=False)[1]


def _open_checkpoint(path, tensors: bool) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["llmri"])
            out = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file: never half-loaded
        raise LlmriError(f"checkpoint {path}: damaged or not an llmri training checkpoint ({type(e).__name__}); "
                         "delete it to start again") from None
    return out, meta


def read_checkpoint(path: Path, key: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and state of the checkpoint at ``path``, refused in one line when it is damaged or
    was written by a run with other settings (a file is only ever replaced whole, so a kill while
    writing leaves the previous checkpoint)."""
    tensors, meta = _open_checkpoint(path, tensors=True)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise LlmriError(f"checkpoint {path}: format {meta.get('format')}, this llmri reads {CHECKPOINT_FORMAT}")
    old = meta.get("key", {})
    if old != key:
        diffs = [k for k in key if k != "settings" and old.get(k) != key[k]]
        diffs += [f"{k} {old.get('settings', {}).get(k)} -> {v}" for k, v in key["settings"].items()
                  if old.get("settings", {}).get(k) != v]
        raise LlmriError(f"checkpoint {path}: written by another run ({', '.join(diffs) or 'settings'}); "
                         "delete it or give another checkpoint")
    return tensors, meta
