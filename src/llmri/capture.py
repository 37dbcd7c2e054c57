"""Capture: run every document once, pool each site's activations, stream shards into a Scan.

Documents are tokenized once, sorted by length and cut into batches under a token budget
(padded size = documents x longest document), so little compute is spent on padding.
Consecutive batches form shards; a shard is written atomically as soon as it is done,
so a killed scan resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import default_pool, pad_batch, plan_batches, pool, tokenize
from .batches import pool as _pool  # for functions whose ``pool`` argument names the pooling
from .corpus import Corpus
from .engine import JobsFailed, as_engine
from .errors import LlmriError
from .model import Model, as_model
from .precision import computing, precision_used
from .scan_settings import DEFAULT_BATCH_TOKENS, ScanSettings, cached_scan, out_folder, scan_request
from .sites import POOLS, block_of, eager_attention, expand_sites, hooks, parse_site
from .disk import size_text
from .store import (CORPUS_FILE, FORMAT_VERSION, MANIFEST, DiskFull, Scan, atomic_write_json,
                    complete_shards, read_manifest, shard_name, write_corpus, write_shard)

TOKEN_SHARD_BYTES = 256 * 2**20  # bound on token-level activations held in memory per shard


class _StopForward(Exception):
    """Raised at the output of the deepest block needed: the rest of the forward pass is not."""


ATTN_STATS = ("entropy", "first", "special", "previous", "distance")


def attention_stats(probs: torch.Tensor, mask: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Per-document, per-head summaries of attention probabilities ``[batch, heads, query, key]``.

    Over the real query tokens of ``mask``: mean row entropy (nats), attention to the first real
    token, to special tokens, to the previous token (queries that have one), and the mean
    attended distance in tokens. Returns ``[batch, len(ATTN_STATS) * heads]``, stat-major.
    """
    p = probs.float()
    B, H, T, _ = p.shape
    m = mask.float()
    nq = m.sum(1).clamp(min=1)                                        # [B]
    qmask = m[:, None, :]                                             # [B, 1, T]

    def mean_q(x):                                                    # x [B, H, T] over queries
        return (x * qmask).sum(-1) / nq[:, None]

    entropy = torch.special.entr(p).sum(-1)                           # -sum p log p, 0 log 0 = 0
    first_idx = mask.int().argmax(1)                                  # [B]
    first = p[torch.arange(B), :, :, first_idx]                       # [B, H, T]
    special_mass = torch.matmul(p, special.to(p.dtype)[:, None, :, None]).squeeze(-1)
    prev = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1)             # [B, H, T-1]: A[q, q-1]
    has_prev = (m[:, 1:] * m[:, :-1])[:, None, :]
    n_prev = has_prev.sum(-1).clamp(min=1)
    previous = (prev * has_prev).sum(-1) / n_prev
    pos = torch.arange(T, device=p.device, dtype=p.dtype)
    distance = torch.einsum("bhqk,qk->bhq", p, (pos[:, None] - pos[None, :]).abs())
    stats = torch.stack([mean_q(entropy), mean_q(first), mean_q(special_mass), previous, mean_q(distance)], 1)
    return stats.reshape(B, len(ATTN_STATS) * H)


def plan_shards(batches: list[list[int]], lengths: np.ndarray, shard_tokens: int) -> list[list[int]]:
    """Group consecutive batches into shards of about ``shard_tokens`` real tokens."""
    shards, cur, size = [], [], 0
    for b, docs in enumerate(batches):
        cur.append(b)
        size += int(sum(int(lengths[d]) for d in docs))
        if size >= shard_tokens:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    return shards


def embed(model, texts, site: str, pool: str = "auto",
          batch_tokens: int = DEFAULT_BATCH_TOKENS) -> np.ndarray:
    """Pooled activations ``[n_texts, dim]`` of one site, in memory (no Scan written).

    Batching and pooling are those of :func:`scan`, and the forward pass stops right after the
    site. Use it to read a few texts, for example generations, the way a Scan read its corpus.

    >>> llmri.embed(model, ["a text", "another"], "resid.6").shape     # doctest: +SKIP
    (2, 384)
    """
    model = as_model(model)
    if pool == "auto":
        pool = default_pool(model)
    if pool not in POOLS:
        raise LlmriError(f"pool {pool!r} is not one of auto, {', '.join(POOLS)}")
    if isinstance(texts, str):
        texts = [texts]
    names = expand_sites([site], model.n_layers)
    if len(names) != 1 or parse_site(names[0])[0] == "attn":
        raise LlmriError(f"embed: site {site!r} must name one layer of resid, mlp, attn_out, mlp_out or attn_z")
    ids, _ = tokenize(model, list(texts), model.max_length)
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    out = np.zeros((len(ids), 0), dtype=np.float32)
    state: dict = {}

    def grab(x):
        mask = state["mask"]
        state["x"] = _pool(x.view(*mask.shape, -1) if x.dim() == 2 else x, mask, pool).cpu().numpy()
        raise _StopForward

    with hooks(model.module, model.adapter, {names[0]: grab}), torch.no_grad(), computing(model, "scan"):
        for b in plan_batches(lengths, batch_tokens):
            kwargs, state["mask"] = pad_batch(model, [ids[d] for d in b])
            try:
                model.base(**kwargs)
            except _StopForward:
                pass
            if out.shape[1] == 0:
                out = np.zeros((len(ids), state["x"].shape[1]), dtype=np.float32)
            out[b] = state["x"]
    return out


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _differences(old: dict, new: dict) -> str:
    diffs = []
    if old.get("model", {}).get("fingerprint") != new["model"]["fingerprint"]:
        diffs.append(f"model {old.get('model', {}).get('name')} -> {new['model']['name']}")
    if old.get("corpus", {}).get("fingerprint") != new["corpus"]["fingerprint"]:
        diffs.append("corpus")
    for k, v in new["settings"].items():
        if old.get("settings", {}).get(k) != v:
            diffs.append(f"{k} {old.get('settings', {}).get(k)} -> {v}")
    return ", ".join(diffs) or "format"


def scan(model, corpus, out, sites=("resid",), pool: str = "auto", layers=None,
         max_length: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
         token_sites=(), shard_tokens: int | None = None, device: str = "auto",
         dtype: str = "auto", store_dtype: str = "float32", overwrite: bool = False,
         worker: tuple[int, int] | None = None,
         progress: bool | None = None, engine="local", workers: int = 1,
         resources: dict | None = None, request: str | bool | None = None, address: str | None = None,
         retries: int | None = None, settings: ScanSettings | None = None) -> Scan:
    """Run each document of ``corpus`` through ``model`` once and store a Scan in ``out``.

    One pooled vector per document, site and layer; ``token_sites`` (for example
    ``("resid.6",)``) additionally keeps every token's vector. A rerun with the same model,
    corpus and settings continues an interrupted scan, or returns the finished one at once.
    ``device`` and ``dtype`` apply when ``model`` is a name or folder; a loaded Model runs where it is.
    ``pool="auto"`` is ``mean`` for encoders and ``mean-nosink`` for decoders (:func:`default_pool`).
    ``settings`` (a :class:`~llmri.scan_settings.ScanSettings`) may stand for the keyword
    arguments it holds.

    ``engine`` says where the shards are captured: ``"local"``, or an :class:`~llmri.Engine`
    (``engine="ray", workers=N, resources={"GPU": 1}, address=..., retries=...`` makes one):
    the plan is made once, by a worker that holds the model, the shards go to whichever worker
    is free, and the files written are the same. ``worker=(i, n)`` captures only shards
    ``i, i + n, ...`` locally (several processes sharing one folder).

    ``request`` is stored in the manifest as is: a key of the request (model files, corpus and
    options as given, :func:`~llmri.scan_settings.scan_request`) that answers a repeated scan
    without loading the model; ``request=True`` makes that key here (for a model given by name
    or folder) and returns the finished Scan of the same request at once.

    >>> import llmri                                              # doctest: +SKIP
    >>> s = llmri.scan("default", llmri.demo_corpus(), "runs/demo")
    >>> s.activations(6).shape
    (96, 384)
    """
    engine = as_engine(engine, workers, resources, address, retries)
    if worker is not None and engine.remote:
        raise LlmriError("worker: Ray deals the shards out itself; leave worker unset with engine='ray'")
    given = ScanSettings(sites=sites, token_sites=token_sites, pool=pool, layers=layers, batch_tokens=batch_tokens,
                         max_length=max_length, shard_tokens=shard_tokens, device=device, dtype=dtype,
                         store_dtype=store_dtype)
    if settings is None:
        settings = given
    elif given != ScanSettings():
        raise LlmriError("settings: give the scan settings as a ScanSettings or as keyword arguments, not both")
    corpus, out = check_scan_args(corpus, out)
    if request is True:
        request = scan_request(model, corpus, settings)
        done = cached_scan(out, request)
        if done is not None:
            return done
    out = engine.path(out)
    state = engine.model_state(model, settings.device, settings.dtype)
    failed = None
    with engine:
        plan = engine.map(_plan_job, [(corpus, out, settings, overwrite, worker is None, request)], state=state)[0]
        if plan.cached:
            done = Scan.open(out)  # answered from the cache
            done.origin = "cached"
            return done
        todo = [s for s in plan.todo if worker is None or s % worker[1] == worker[0]]
        chunks = engine.chunks(todo)
        driver, jobs = engine.progress(progress)
        bar = tqdm(total=len(chunks), unit="shard", desc=engine.label("scanning"),
                   disable=None if driver is None else not driver, dynamic_ncols=True)
        with bar:
            if len(chunks) < engine.workers:
                bar.write(f"note: {len(chunks)} shard(s) to capture for {engine.workers} workers; a smaller "
                          "shard_tokens (--shard-tokens) spreads the work", file=sys.stderr)
            try:
                engine.map(partial(_capture_job, plan, jobs), chunks, state=state, done=lambda i: bar.update(1))
            except JobsFailed as e:
                failed = e
    result = finish_scan(plan)
    if result is not None:
        result.resumed_shards = len(plan.shards) - len(plan.todo)
        result.origin = "resumed" if result.resumed_shards else "captured"
    if result is None and worker is None:
        done = len(complete_shards(out, len(plan.shards)))
        message = (f"{out}: {failed.failed if failed else 0} shard(s) failed after {engine.retries} retries "
                   f"({failed.why if failed else 'shards missing'}); {done}/{len(plan.shards)} shards are "
                   "complete: rerun the same command to capture the rest")
        raise (failed.reword(message) if failed else LlmriError(message)) from None
    return result


def _plan_job(model: Model, args: tuple) -> ScanPlan:
    corpus, out, settings, overwrite, clean, request = args
    return plan_scan(model, corpus, out, settings, overwrite=overwrite, clean=clean, request=request)


def _capture_job(plan: ScanPlan, progress: bool | None, model: Model, shards: list[int]) -> int:
    capture_shards(model, plan, shards, progress)
    return len(shards)


# ---------------------------------------------------------------- the scan in three steps
# plan_scan (once), capture_shards (any worker, any subset of shards), finish_scan (once, at the
# end): scan runs them as jobs on its engine.
class TokenIds:
    """Token ids of every document packed in one int64 array: ``ids[d]`` is document d's list."""

    def __init__(self, ids: list[list[int]]):
        self.offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        self.flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(self.offsets[-1]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, d: int) -> list[int]:
        return self.flat[self.offsets[d]:self.offsets[d + 1]].tolist()


@dataclass
class ScanPlan:
    """What a scan will write: its manifest, the token ids, batches and shards, the shards to do."""

    out: Path
    manifest: dict
    ids: TokenIds
    lengths: np.ndarray
    batches: list[list[int]]
    shards: list[list[int]]
    todo: list[int]
    cached: bool = False


def check_scan_args(corpus, out) -> tuple[Corpus, Path]:
    """The checks of the inputs that need no model: the corpus (read when a path) and the output folder."""
    if isinstance(corpus, (str, Path)):
        corpus = Corpus.from_path(corpus)
    if not isinstance(corpus, Corpus):
        raise LlmriError(f"corpus: expected an llmri.Corpus or a path, got {type(corpus).__name__}")
    return corpus, out_folder(out)


def plan_scan(model: Model, corpus: Corpus, out: Path, settings: ScanSettings, overwrite: bool = False,
              clean: bool = True, request: str | None = None) -> ScanPlan:
    """Tokenize, plan batches and shards, prepare ``out`` (corpus file, manifest) for the shards.

    ``clean`` removes temporary files of a killed writer (not while other workers may be writing).
    """
    pool = default_pool(model) if settings.pool == "auto" else settings.pool
    n_layers = model.n_layers
    pooled, tokened = settings.expand(n_layers)
    if not pooled and not tokened:
        raise LlmriError("sites: nothing to capture (no sites given)")
    limit = model.max_length
    max_length = min(limit if settings.max_length is None else settings.max_length, limit)
    batch_tokens, shard_tokens = settings.batch_tokens, settings.shard_tokens
    hidden = int(model.module.config.hidden_size)
    if shard_tokens is None:
        per_token = 4 * hidden * 4 * max(1, len(tokened))  # mlp sites are ~4x wider
        shard_tokens = max(batch_tokens, 65536 if not tokened else TOKEN_SHARD_BYTES // per_token)
    padding_side = getattr(model.tokenizer, "padding_side", "right")
    recorded = dict(sites=pooled, token_sites=tokened, pool=pool, max_length=max_length,
                    batch_tokens=batch_tokens, shard_tokens=int(shard_tokens),
                    dtype=precision_used(model, "scan"), padding_side=padding_side)
    if settings.store_dtype != "float32":   # recorded only when asked: float32 scans keep their keys
        recorded["store_dtype"] = settings.store_dtype
    head = dict(model=dict(name=model.name, fingerprint=model.fingerprint,
                           family=model.adapter.family, n_layers=n_layers, hidden_size=hidden),
                corpus=dict(fingerprint=corpus.fingerprint, n_docs=len(corpus),
                            label_names=corpus.label_names, source=corpus.source),
                settings=recorded)
    key = _key({"format": FORMAT_VERSION, "model": model.fingerprint,
                "corpus": corpus.fingerprint, "settings": recorded})

    old = read_manifest(out) if out.exists() else None
    if old is not None and old.get("key") == key and len(
            complete_shards(out, old["plan"]["n_shards"])) == old["plan"]["n_shards"]:
        return ScanPlan(out, old, TokenIds([]), np.zeros(0, np.int64), [], [], [], cached=True)
    if old is not None and old.get("key") != key:
        if not overwrite:
            raise LlmriError(f"{out}: holds a different scan ({_differences(old, head)}); "
                             "choose another output folder or pass --overwrite")
        for f in list(out.glob("shard-*.safetensors")) + [out / MANIFEST, out / CORPUS_FILE]:
            f.unlink(missing_ok=True)
    elif old is None and out.exists() and any(out.iterdir()):
        raise LlmriError(f"{out}: folder is not empty and holds no llmri scan; "
                         "choose a new output folder")

    ids, truncated = tokenize(model, corpus.texts, max_length)
    lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
    batches = plan_batches(lengths, batch_tokens)
    shards = plan_shards(batches, lengths, shard_tokens)
    manifest = dict(head, format_version=FORMAT_VERSION, key=key, request=request, sites=pooled, token_sites=tokened,
                    plan=dict(n_shards=len(shards), n_batches=len(batches), truncated=truncated,
                              n_tokens=int(lengths.sum())),
                    complete=False)
    out.mkdir(parents=True, exist_ok=True)
    if clean:  # temp files left by a killed writer (other workers may still be writing theirs)
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    if not (out / CORPUS_FILE).is_file():
        write_corpus(out, corpus)
    done = set(complete_shards(out, len(shards)))
    atomic_write_json(out / MANIFEST, dict(manifest, complete=len(done) == len(shards)))
    todo = [s for s in range(len(shards)) if s not in done]
    return ScanPlan(out, manifest, TokenIds(ids), lengths, batches, shards, todo)


def capture_shards(model: Model, plan: ScanPlan, todo: list[int], progress: bool | None = None) -> None:
    """Capture shards ``todo`` of ``plan`` with ``model``, each written atomically when done."""
    m = plan.manifest
    bar = tqdm(total=sum(len(plan.batches[b]) for s in todo for b in plan.shards[s]), unit="doc",
               desc="scanning", disable=None if progress is None else not progress,
               file=sys.stderr, dynamic_ncols=True)
    if m["plan"]["truncated"]:
        bar.set_postfix(truncated=m["plan"]["truncated"])
    with bar:
        _run(model, plan.ids, plan.lengths, plan.batches, plan.shards, todo, m["sites"], m["token_sites"],
             m["settings"]["pool"], plan.out, bar, m["settings"].get("store_dtype", "float32"))


def finish_scan(plan: ScanPlan) -> Scan | None:
    """Record in the manifest whether every shard is on disk; the Scan when it is, else None."""
    done = set(complete_shards(plan.out, len(plan.shards)))
    atomic_write_json(plan.out / MANIFEST, dict(plan.manifest, complete=len(done) == len(plan.shards)))
    if len(done) < len(plan.shards):  # another worker still owes shards
        return None
    return Scan.open(plan.out)


def _run(model: Model, ids, lengths, batches, shards, todo, pooled, tokened, how, out, bar, store_dtype):
    dev = model.device

    def stored(t: torch.Tensor):
        """What a shard keeps of a float32 array: itself, or its bfloat16 rounding."""
        return t.to(torch.bfloat16) if store_dtype == "bfloat16" else t.float().numpy()
    wanted = list(dict.fromkeys(pooled + tokened))
    # Stop at the output of the deepest block that holds a wanted site: inside a block, hooks
    # fire in an order that differs between families, so never stop in the middle of one.
    last_block = max(block_of(s) for s in wanted)
    stop_at = f"resid.{last_block + 1}"
    attn = {s for s in pooled if parse_site(s)[0] == "attn"}
    special_ids = torch.tensor(sorted(set(getattr(model.tokenizer, "all_special_ids", []) or [])),
                               dtype=torch.long)
    state: dict = {}

    def make_hook(site):
        def fn(x):
            mask = state["mask"]
            if x.dim() == 2:  # some families (OPT) flatten [batch * tokens, dim] around the MLP
                x = x.view(*mask.shape, -1)
            if site in attn:
                state["pooled"][site].append(attention_stats(x, mask, state["special"]).cpu())
            elif site in pooled:
                state["pooled"][site].append(pool(x, mask, how).cpu())
            if site in tokened:
                state["tokens"][site].append(x[mask].float().cpu())
            if site == stop_at:
                raise _StopForward
            return None
        return fn

    def stop(x):
        raise _StopForward

    fns = {s: make_hook(s) for s in wanted}
    fns.setdefault(stop_at, stop)

    probs_needed = eager_attention(model.module) if attn else contextlib.nullcontext()
    with probs_needed, hooks(model.module, model.adapter, fns), \
            torch.no_grad(), computing(model, "scan"):
        for s in todo:
            state["pooled"] = {site: [] for site in pooled}
            state["tokens"] = {site: [] for site in tokened}
            docs: list[int] = []
            token_ids: list[int] = []
            for b in shards[s]:
                batch = batches[b]
                kwargs, mask = pad_batch(model, [ids[d] for d in batch])
                for d in batch:
                    token_ids.extend(ids[d])
                state["mask"] = mask
                state["special"] = torch.isin(kwargs["input_ids"], special_ids.to(dev)) & mask
                try:
                    model.base(**kwargs)
                except _StopForward:
                    pass
                docs.extend(batch)
                bar.update(len(batch))
            tensors = {"doc_index": np.asarray(docs, dtype=np.int64),
                       "n_tokens": lengths[docs].astype(np.int64)}
            for site, parts in state["pooled"].items():
                tensors[site] = stored(torch.cat(parts))
            if tokened:
                tensors["token_ids"] = np.asarray(token_ids, dtype=np.int64)
                for site, parts in state["tokens"].items():
                    tensors["tokens." + site] = stored(torch.cat(parts))
            try:
                write_shard(out / shard_name(s), tensors, {"shard": str(s)})
            except DiskFull as e:      # the shards written so far are whole and kept
                left = len(todo) - todo.index(s)
                done = len(complete_shards(out, len(shards)))
                raise DiskFull(e.path, e.need, more=(
                    f"{done} of {len(shards)} shards are complete and kept; free about {size_text(e.need * left)} "
                    f"for the {left} left and rerun the same command to capture them")) from None
