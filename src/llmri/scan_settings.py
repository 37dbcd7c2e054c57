"""What a scan captures, checked before a model loads, and the scan request cache.

:class:`ScanSettings` holds the settings of :func:`llmri.scan` and checks each one in its
constructor, so the command line and Python refuse the same bad input with the same message,
in milliseconds. The request cache answers a repeated scan from disk without loading the model:
a request is the model's files, the corpus and the settings as given, and a finished Scan
records the request that made it. This module imports no torch (the command line checks and
answers from the cache with it alone).

>>> settings = ScanSettings(sites=("resid", "mlp"), layers=[0, -1])         # doctest: +SKIP
>>> request = scan_request("default", corpus, settings)
>>> cached_scan("runs/demo", request) or llmri.scan("default", corpus, "runs/demo",
...                                                 settings=settings, request=request)
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from dataclasses import InitVar, asdict, dataclass
from pathlib import Path
from typing import Sequence

from .errors import LlmriError
from .model import config_n_layers, files_fingerprint, model_folder
from .precision import check_dtype
from .sites import POOLS, expand_sites, parse_site
from .store import Scan, check_out_folder, complete_shards, read_manifest

DEFAULT_BATCH_TOKENS = 8192
STORE_DTYPES = ("float32", "bfloat16")   # how activations are kept on disk; bfloat16 halves a scan


def _specs(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return list(value)


@dataclass(frozen=True)
class ScanSettings:
    """The settings of a scan, each checked here (see :func:`llmri.scan` for their meaning).

    ``sites``/``token_sites`` are site specs (``"resid"``, ``"mlp.3"``), as a sequence or one
    comma-separated string; ``layers`` is a list of layers (negative from the end) or such a
    string. ``flags=True`` names the arguments as command-line flags in the errors
    (``--batch-tokens 0: must be a positive integer``).

    >>> ScanSettings(sites="resid,mlp", batch_tokens=0)                   # doctest: +SKIP
    LlmriError: batch_tokens must be a positive integer, got 0
    """

    sites: str | Sequence[str] = ("resid",)
    token_sites: str | Sequence[str] = ()
    pool: str = "auto"
    layers: str | Sequence[int] | None = None
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_length: int | None = None
    shard_tokens: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    store_dtype: str = "float32"
    flags: InitVar[bool] = False

    def __post_init__(self, flags: bool) -> None:
        def arg(name: str) -> str:
            return "--" + name.replace("_", "-") if flags else name

        for name in ("sites", "token_sites"):
            v = getattr(self, name)
            if isinstance(v, str) and not _specs(v) and (v or name == "sites"):
                raise LlmriError(f"{arg(name)} {v!r}: no site given, e.g. resid,mlp.3")
        for spec in self.site_specs + self.token_site_specs:
            parse_site(spec.strip())
        if any(parse_site(s.strip())[0] == "attn" for s in self.token_site_specs):
            raise LlmriError("token_sites: attention is stored as per-head statistics; "
                             "pass attn in sites, not token_sites")
        if self.pool not in POOLS + ("auto",):
            raise LlmriError(f"{arg('pool')} {self.pool!r} is not one of auto, {', '.join(POOLS)}")
        if isinstance(self.layers, str):
            try:
                object.__setattr__(self, "layers", [int(x) for x in self.layers.split(",") if x.strip()])
            except ValueError:
                raise LlmriError(f"{arg('layers')} {self.layers!r}: expected comma-separated integers, "
                                 "e.g. 0,3,-1") from None
        elif self.layers is not None:
            try:
                object.__setattr__(self, "layers", [operator.index(x) for x in self.layers])
            except TypeError:
                raise LlmriError(f"{arg('layers')} {self.layers!r}: expected a list of integers, "
                                 "e.g. [0, 3, -1]") from None
        if self.layers is not None and not self.layers:
            raise LlmriError(f"{arg('layers')}: no layer given, e.g. 0,3,-1")
        for name in ("batch_tokens", "max_length", "shard_tokens"):
            v = getattr(self, name)
            if (v is not None or name == "batch_tokens") and (not isinstance(v, int) or v < 1):
                raise LlmriError(f"{arg(name)} {v}: must be a positive integer" if flags
                                 else f"{name} must be a positive integer, got {v!r}")
        if self.dtype is None or isinstance(self.dtype, str):
            check_dtype(self.dtype, arg("dtype"))
        if self.store_dtype not in STORE_DTYPES:
            raise LlmriError(f"{arg('store_dtype')} {self.store_dtype!r} is not one of {', '.join(STORE_DTYPES)}")

    @property
    def site_specs(self) -> list[str]:
        return _specs(self.sites)

    @property
    def token_site_specs(self) -> list[str]:
        return _specs(self.token_sites)

    def expand(self, n_layers: int) -> tuple[list[str], list[str]]:
        """The pooled and the token-level site names for a model of ``n_layers`` blocks."""
        return (expand_sites(self.site_specs, n_layers, self.layers),
                expand_sites(self.token_site_specs, n_layers, self.layers))

    def model_files(self, model) -> Path | None:
        """The folder of ``model`` (a name or folder) on disk, after checking the layers against its
        ``config.json``; None when it is not on disk (it must be downloaded)."""
        folder = model_folder(str(model))
        n_layers = config_n_layers(folder) if folder is not None else None
        if n_layers is not None:  # layer ranges, from config.json
            self.expand(n_layers)
        return folder


def out_folder(out) -> Path:
    """The output folder of a scan, checked: a local or shared POSIX folder, absent or a folder."""
    if "://" in str(out):
        raise LlmriError(f"{out}: object-store URLs are not supported; write to a local or shared POSIX folder "
                         "(shards are made whole by an atomic rename, which object stores lack)")
    return check_out_folder(out)


def scan_request(model, corpus, settings: ScanSettings) -> str | None:
    """The request key of scanning ``corpus`` with ``model`` (a name or folder) and ``settings``:
    the model's files, the corpus and the settings as given. None when the model is not a name
    or folder on disk (a loaded Model, or one still to download). Stored in the manifest, it
    lets :func:`cached_scan` answer the same request without loading the model."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    folder = settings.model_files(model)
    if folder is None:
        return None
    options = asdict(settings)
    if options["store_dtype"] == "float32":     # the default leaves the keys of earlier requests as they were
        del options["store_dtype"]
    key = dict(model=files_fingerprint(folder), corpus=corpus.fingerprint, options=options)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_scan(out, request: str | None) -> Scan | None:
    """The finished scan in ``out`` made by the same ``request``, else None (no model needed)."""
    old = read_manifest(out) if request is not None and Path(out).is_dir() else None
    if old is None or old.get("request") != request:
        return None
    if len(complete_shards(out, old["plan"]["n_shards"])) < old["plan"]["n_shards"]:
        return None
    done = Scan.open(out)
    done.origin = "cached"
    return done


def check_same_scan(out, corpus, settings: ScanSettings) -> None:
    """Refuse, before the model loads, an ``out`` that holds a scan of another corpus or pool
    (the model and the other settings are compared once it has loaded)."""
    old = read_manifest(out) if Path(out).is_dir() else None
    pool = settings.pool
    diffs = [] if old is None else (
        (["corpus"] if old.get("corpus", {}).get("fingerprint") != corpus.fingerprint else [])
        + ([f"pool {old['settings'].get('pool')} -> {pool}"]
           if pool != "auto" and old.get("settings", {}).get("pool") != pool else []))
    if diffs:
        raise LlmriError(f"{out}: holds a different scan ({', '.join(diffs)}); "
                         "choose another output folder or pass --overwrite")
