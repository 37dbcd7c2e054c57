"""The Scan on disk (``manifest.json`` + ``corpus.jsonl`` + safetensors shards) and the one
whole-or-nothing writer every other folder goes through.

Every file is written to a temporary name in the same folder and renamed into place, so a
killed scan leaves only whole files. A shard is complete when its file exists; disjoint
shards can therefore be written by independent workers. A folder of several files that belong
together (an SAE, an explain run's tables, a page) is written by :func:`whole_folder`: into a
hidden sibling that replaces the folder by one rename once every file is there. A full disk is
a one-line error naming the file and the space it needed. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from .disk import (DiskFull, atomic_write_bytes, atomic_write_json, atomic_write_text, check_out_folder,
                   json_safe, read_json_object, read_safetensors, whole_folder, write_shard)
from .errors import LlmriError
from .sites import parse_site

__all__ = ["Scan", "scan_from_arrays", "read_manifest", "complete_shards", "shard_name", "write_corpus",
           # the writers of llmri.disk, exported here too
           "DiskFull", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_out_folder",
           "json_safe", "read_json_object", "read_safetensors", "whole_folder", "write_shard"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CORPUS_FILE = "corpus.jsonl"


def write_corpus(folder, corpus) -> None:
    """Texts and integer labels of a Corpus as ``corpus.jsonl``, atomically."""
    atomic_write_text(Path(folder) / CORPUS_FILE, "".join(
        json.dumps({"text": t, "label": int(lab)}, ensure_ascii=False) + "\n"
        for t, lab in zip(corpus.texts, corpus.labels.tolist())))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def read_manifest(folder) -> dict | None:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LlmriError(f"{p}: the manifest is not valid JSON") from None
    if not isinstance(obj, dict) or not {"format_version", "plan", "model", "corpus"} <= set(obj):
        raise LlmriError(f"{p}: not an llmri scan manifest; choose another folder")
    return obj


def complete_shards(folder, n_shards: int) -> list[int]:
    folder = Path(folder)
    return [i for i in range(n_shards) if (folder / shard_name(i)).is_file()]


# ------------------------------------------------------------------ reading
class _Float32Shard:
    """A shard of a scan stored in bfloat16 (``store_dtype="bfloat16"``), read as numpy: every
    bfloat16 tensor comes back as float32 (exactly: bfloat16 is float32's upper half), the others
    as they are. The same ``get_tensor``/``get_slice`` as safetensors' own numpy reader."""

    def __init__(self, path: Path):
        self._f = safe_open(str(path), framework="pt")

    def __enter__(self) -> "_Float32Shard":
        self._f.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._f.__exit__(*exc)

    @staticmethod
    def _numpy(t) -> np.ndarray:
        import torch

        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def get_tensor(self, name: str) -> np.ndarray:
        return self._numpy(self._f.get_tensor(name))

    def get_slice(self, name: str) -> "_Rows":
        return _Rows(self._f.get_slice(name), self._numpy)


class _Rows:
    """Rows of one tensor of a :class:`_Float32Shard`, read on indexing."""

    def __init__(self, part, convert):
        self._part, self._convert = part, convert

    def __getitem__(self, key) -> np.ndarray:
        return self._convert(self._part[key])


class Scan:
    """A finished scan on disk, read lazily through memory-mapped safetensors shards.

    >>> s = Scan.open("runs/news")                   # doctest: +SKIP
    >>> s.activations(6).shape                       # doctest: +SKIP
    (96, 384)
    """

    #: how this Scan came about in this process (set by the scan that returned it; never stored):
    #: ``"opened"``, ``"captured"``, ``"resumed"`` (``resumed_shards`` were on disk from an
    #: interrupted run) or ``"cached"`` (the same scan was already complete).
    origin = "opened"
    resumed_shards = 0

    def __init__(self, folder, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest

    @classmethod
    def open(cls, folder) -> "Scan":
        folder = Path(folder)
        if not folder.is_dir():
            raise LlmriError(f"{folder}: no such scan folder")
        manifest = read_manifest(folder)
        if manifest is None:
            raise LlmriError(f"{folder}: not an llmri scan (no {MANIFEST})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise LlmriError(f"{folder}: scan format {manifest.get('format_version')} is not "
                             f"supported (this llmri reads format {FORMAT_VERSION})")
        n = manifest["plan"]["n_shards"]
        done = complete_shards(folder, n)
        if len(done) < n:
            raise LlmriError(f"{folder}: the scan is incomplete ({len(done)}/{n} shards); "
                             "rerun the same scan command to finish it")
        return cls(folder, manifest)

    def __repr__(self) -> str:
        return (f"Scan({str(self.folder)!r}: {self.n_docs} documents, model "
                f"{self.model_name}, sites {', '.join(self.site_kinds)})")

    # --- corpus ---
    @cached_property
    def _corpus(self) -> tuple[list[str], np.ndarray]:
        texts, labels = [], []
        with open(self.folder / CORPUS_FILE, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts.append(row["text"])
                labels.append(row["label"])
        return texts, np.asarray(labels, dtype=np.int64)

    @property
    def texts(self) -> list[str]:
        return self._corpus[0]

    @property
    def labels(self) -> np.ndarray:
        return self._corpus[1]

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["corpus"]["label_names"])

    @property
    def n_docs(self) -> int:
        return int(self.manifest["corpus"]["n_docs"])

    @property
    def n_layers(self) -> int:
        """Number of blocks of the scanned model (``resid`` has ``n_layers + 1`` entries)."""
        return int(self.manifest["model"]["n_layers"])

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def settings(self) -> dict:
        return dict(self.manifest["settings"])

    @property
    def sites(self) -> list[str]:
        """Every pooled site stored, e.g. ``['resid.0', ..., 'mlp.5']``."""
        return list(self.manifest["sites"])

    @property
    def token_sites(self) -> list[str]:
        return list(self.manifest["token_sites"])

    @property
    def site_kinds(self) -> list[str]:
        return list(dict.fromkeys(parse_site(s)[0] for s in self.sites + self.token_sites))

    def layers(self, site: str = "resid") -> list[int]:
        """Layers stored for a site kind."""
        return [parse_site(s)[1] for s in self.sites if parse_site(s)[0] == site]

    # --- shards ---
    def _shard(self, i: int):
        path = self.folder / shard_name(i)
        try:
            if self.settings.get("store_dtype", "float32") == "bfloat16":
                return _Float32Shard(path)
            return safe_open(str(path), framework="numpy")
        except (SafetensorError, OSError) as e:
            raise LlmriError(f"{path}: not a readable safetensors shard ({str(e).splitlines()[0] if str(e) else e!r}); "
                             "delete it and rerun the same scan command to capture it again") from None

    @cached_property
    def _index(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per shard: corpus indices of its documents and their token counts."""
        out = []
        for i in range(self.manifest["plan"]["n_shards"]):
            with self._shard(i) as f:
                out.append((f.get_tensor("doc_index"), f.get_tensor("n_tokens")))
        return out

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document after truncation, in corpus order."""
        out = np.zeros(self.n_docs, dtype=np.int64)
        for doc, ntok in self._index:
            out[doc] = ntok
        return out

    def _name(self, layer: int, site: str, stored: list[str], what: str) -> str:
        kind, explicit = parse_site(site)
        if explicit is not None:
            layer = explicit
        kinds = [parse_site(s)[0] for s in stored]
        if kind not in kinds:
            raise LlmriError(f"site {kind!r} was not captured{what}; this scan has "
                             f"{sorted(set(kinds)) or 'none'}")
        avail = [parse_site(s)[1] for s in stored if parse_site(s)[0] == kind]
        count = self.n_layers + 1 if kind == "resid" else self.n_layers
        if layer is not None and layer < 0:
            layer += count
        name = f"{kind}.{layer}"
        if name not in stored:
            raise LlmriError(f"layer {layer} of site {kind!r} was not captured{what}; "
                             f"layers available: {avail}")
        return name

    def activations(self, layer: int, site: str = "resid") -> np.ndarray:
        """Pooled activations ``[n_docs, dim]`` (float32, corpus order) of one site and layer."""
        name = self._name(layer, site, self.sites, "")
        out = None
        for i, (doc, _) in enumerate(self._index):
            with self._shard(i) as f:
                block = f.get_tensor(name)
            if out is None:
                out = np.empty((self.n_docs, block.shape[1]), dtype=np.float32)
            out[doc] = block
        return out

    # --- token-level records ---
    @cached_property
    def token_offsets(self) -> np.ndarray:
        """Document d's tokens are rows ``token_offsets[d]:token_offsets[d+1]`` of the
        corpus-order arrays returned by :meth:`token_activations` and :meth:`token_ids`."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @cached_property
    def _token_where(self) -> list[tuple[int, int]]:
        """For each document: (shard, first row inside that shard's token arrays)."""
        where = [(0, 0)] * self.n_docs
        for s, (doc, ntok) in enumerate(self._index):
            starts = np.concatenate([[0], np.cumsum(ntok)[:-1]])
            for d, st in zip(doc.tolist(), starts.tolist()):
                where[d] = (s, st)
        return where

    def _read_tokens(self, tensor: str, doc) -> np.ndarray:
        docs = range(self.n_docs) if doc is None else [doc]
        if doc is not None and not 0 <= doc < self.n_docs:
            raise LlmriError(f"document {doc} is out of range (the scan has {self.n_docs})")
        lengths = self.lengths
        parts = []
        handles: dict[int, object] = {}
        with contextlib.ExitStack() as stack:
            for d in docs:
                s, start = self._token_where[d]
                if s not in handles:
                    handles[s] = stack.enter_context(self._shard(s))
                parts.append(handles[s].get_slice(tensor)[start:start + int(lengths[d])])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def token_ids(self, doc: int | None = None) -> np.ndarray:
        """Token ids of one document, or of all documents concatenated in corpus order."""
        if not self.token_sites:
            raise LlmriError("this scan has no token-level records; scan with token_sites=...")
        return self._read_tokens("token_ids", doc)

    def token_activations(self, layer: int, site: str = "resid", doc: int | None = None) -> np.ndarray:
        """Token-level activations ``[n_tokens, dim]`` of one document, or of every document
        (corpus order; see :attr:`token_offsets`)."""
        name = self._name(layer, site, self.token_sites, " at token level")
        return self._read_tokens("tokens." + name, doc).astype(np.float32, copy=False)

    @property
    def n_shards(self) -> int:
        return int(self.manifest["plan"]["n_shards"])

    def iter_token_shards(self, layer: int, site: str = "resid", order=None):
        """Yield ``(doc_index, n_tokens, token_ids, activations)`` shard by shard (bounded memory),
        in stored order or in the shard ``order`` given (e.g. a permutation, to shuffle training)."""
        name = self._name(layer, site, self.token_sites, " at token level")
        for s in (range(self.n_shards) if order is None else order):
            doc, ntok = self._index[s]
            with self._shard(int(s)) as f:
                yield doc, ntok, f.get_tensor("token_ids"), f.get_tensor("tokens." + name)


def scan_from_arrays(folder, activations: dict[str, np.ndarray], labels, label_names=None,
                     texts=None, model_name: str = "arrays", token_activations: dict | None = None,
                     lengths=None, token_ids=None, shard_tokens: int = 65536) -> Scan:
    """Write a Scan from activations you already have: ``{"resid.0": [n_docs, dim], ...}``.

    Every llmri analysis can then read it like a captured scan. ``token_activations``
    (``{"resid.3": [n_tokens, dim]}``, documents' tokens one after another, ``lengths`` tokens
    each) adds token-level records, cut into shards of about ``shard_tokens`` tokens; a site
    given only there is pooled (mean over its tokens) for the document-level records.

    >>> s = scan_from_arrays("runs/mine", {"resid.0": X0, "resid.1": X1}, labels)  # doctest: +SKIP
    """
    from .corpus import Corpus

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise LlmriError(f"{folder}: folder is not empty; choose a new output folder")
    activations = dict(activations or {})
    token_activations = {k: np.asarray(v, dtype=np.float32) for k, v in (token_activations or {}).items()}
    if not activations and not token_activations:
        raise LlmriError("activations: no arrays given")
    n = len(labels)
    if token_activations:
        if lengths is None:
            raise LlmriError("lengths: token_activations need the number of tokens of each document")
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (n,) or (lengths < 1).any():
            raise LlmriError(f"lengths: expected {n} positive token counts, one per document")
        total = int(lengths.sum())
        for name, arr in token_activations.items():
            if arr.ndim != 2 or arr.shape[0] != total:
                raise LlmriError(f"token_activations[{name!r}]: expected shape [{total}, dim], got {list(arr.shape)}")
        token_ids = (np.zeros(total, dtype=np.int64) if token_ids is None
                     else np.asarray(token_ids, dtype=np.int64))
        if token_ids.shape != (total,):
            raise LlmriError(f"token_ids: expected {total} ids, got {token_ids.shape[0]}")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for name, arr in token_activations.items():
            if name not in activations:
                activations[name] = np.add.reduceat(arr, offsets[:-1], axis=0) / lengths[:, None]
    else:
        lengths = np.ones(n, dtype=np.int64)
        offsets = np.arange(n + 1)
    texts = list(texts) if texts is not None else [f"document {i}" for i in range(n)]
    corpus = Corpus(texts, labels, label_names, source="arrays")
    names = list(activations)
    max_layer = 0
    pooled = {}
    for name in names + list(token_activations):
        kind, layer = parse_site(name)
        if layer is None:
            raise LlmriError(f"activations: key {name!r} needs a layer, e.g. {kind}.0")
        max_layer = max(max_layer, layer if kind != "resid" else layer - 1)
    for name in names:
        arr = np.asarray(activations[name], dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise LlmriError(f"activations[{name!r}]: expected shape [{n}, dim], got {list(arr.shape)}")
        pooled[name] = arr
    # shards: consecutive documents, about shard_tokens tokens each
    bounds, start, size = [], 0, 0
    for d in range(n):
        size += int(lengths[d])
        if size >= shard_tokens or d == n - 1:
            bounds.append((start, d + 1))
            start, size = d + 1, 0
    manifest = dict(format_version=FORMAT_VERSION, key="arrays", sites=names, token_sites=list(token_activations),
                    model=dict(name=model_name, fingerprint="arrays", family="arrays",
                               n_layers=max_layer + 1, hidden_size=int(pooled[names[0]].shape[1])),
                    corpus=dict(fingerprint=corpus.fingerprint, n_docs=n, label_names=corpus.label_names,
                                source="arrays"),
                    settings=dict(sites=names, token_sites=list(token_activations), pool="given"),
                    plan=dict(n_shards=len(bounds), n_batches=0, truncated=0, n_tokens=int(lengths.sum())),
                    complete=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_corpus(folder, corpus)
    for i, (a, b) in enumerate(bounds):
        tensors = {"doc_index": np.arange(a, b, dtype=np.int64), "n_tokens": lengths[a:b].copy()}
        tensors.update({name: arr[a:b] for name, arr in pooled.items()})
        if token_activations:
            t0, t1 = int(offsets[a]), int(offsets[b])
            tensors["token_ids"] = token_ids[t0:t1]
            tensors.update({"tokens." + name: arr[t0:t1] for name, arr in token_activations.items()})
        write_shard(folder / shard_name(i), tensors, {"shard": str(i)})
    atomic_write_json(folder / MANIFEST, manifest)
    return Scan.open(folder)
