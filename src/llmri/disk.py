"""Files and folders written whole: every file through a temporary name and an atomic rename
(:func:`atomic_write_bytes`, ``_text``, ``_json``, :func:`write_shard`), a folder of files that
belong together through :func:`whole_folder` (a hidden sibling that replaces the folder by one
rename once every file is there), a full disk as one line naming the file and the space needed
(:class:`DiskFull`), JSON without NaN (:func:`json_safe`), safetensors read with a one-line error
(:func:`read_safetensors`). :mod:`llmri.store` holds the Scan over these and exports them again.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from .errors import LlmriError


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _file_mode()


def check_out_folder(out, advice: str | None = "choose another output folder") -> Path:
    """``out`` as a Path, refused in one line when it exists and is not a folder: every writer of a
    folder checks it this way before it writes (or a model loads)."""
    if not str(out).strip():
        raise LlmriError(f"output folder {str(out)!r}: give a folder name")
    if Path(out).exists() and not Path(out).is_dir():
        raise LlmriError(f"{out}: exists and is not a folder" + (f"; {advice}" if advice else ""))
    return Path(out)


def size_text(n: int) -> str:
    """``n`` bytes as people read it: ``664 bytes``, ``4.9 KiB``, ``1.1 MiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(p).free
            return None
    return None


class DiskFull(LlmriError):
    """The disk (or the quota) ran out while llmri wrote ``path``; ``need`` is the bytes that
    write needed, where known. Whatever was being written is removed, never left half-written."""

    def __init__(self, path, need: int | None = None, more: str = ""):
        self.path, self.need = Path(path), need
        free = _free_bytes(self.path.parent)
        parts = ([f"{size_text(need)} needed"] if need is not None else []) + \
            ([f"{size_text(free)} free"] if free is not None else [])
        super().__init__(f"{path}: no space left on device" + (f" ({', '.join(parts)})" if parts else "")
                         + (f"; {more}" if more else ""))


def _full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename; a full disk is a
    :class:`DiskFull` naming ``path`` and the bytes needed, with nothing left behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if _full(e):
            raise DiskFull(path, len(data)) from None
        raise
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and _full(e):
            raise DiskFull(path, len(data)) from None
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj):
    """``obj`` with every NaN or infinite float (Python or numpy) replaced by None, and numpy
    scalars and arrays as plain Python: what JSON can hold (it has no NaN or Infinity)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path, obj) -> None:
    """``obj`` as JSON, atomically. NaN and infinity are refused in one line naming ``path``
    (JSON has neither; a caller whose values may be missing writes them through :func:`json_safe`)."""
    try:
        text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
    except ValueError:
        raise LlmriError(f"{path}: refusing to write NaN or infinity into JSON (a value was not a finite "
                         "number)") from None
    atomic_write_text(path, text + "\n")


def read_safetensors(path, framework: str = "numpy") -> dict:
    """Every tensor of a safetensors file; a damaged or truncated file is a one-line error naming it."""
    from safetensors import SafetensorError

    if framework == "pt":
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlmriError(f"{path}: not a readable safetensors file ({why}); it is damaged or incomplete") from None


# ------------------------------------------------------------------ whole folders
_WRITING = threading.local()   # this thread's folders being written: real target -> staging folder
_TAG = ".llmri-"


@contextlib.contextmanager
def whole_folder(out, drop=()):
    """Write the folder ``out`` whole or not at all: the block writes into a fresh hidden sibling
    folder (yielded); when it ends without error, every file of the existing ``out`` the block did
    not write (except those under the names in ``drop``, e.g. results of the old contents) is
    linked in beside the new ones, and the sibling takes ``out``'s place by one rename (an atomic
    exchange where the system has one). ``out`` is therefore the old folder or the new one, never
    a mix; on an error or a kill the sibling is discarded and ``out`` is as it was. A block inside
    another on the same folder writes into the outer one's sibling.

    >>> with whole_folder("runs/sae") as tmp:                           # doctest: +SKIP
    ...     write_shard(tmp / "sae_weights.safetensors", tensors)
    ...     atomic_write_json(tmp / "cfg.json", cfg)
    """
    out = check_out_folder(out, advice=None)
    target = Path(os.path.realpath(out))
    active = getattr(_WRITING, "folders", None)
    if active is None:
        active = _WRITING.folders = {}
    for tgt, staging in active.items():
        if target == tgt:
            yield staging
            return
        if target == staging or staging in target.parents:
            yield target
            return
    if os.path.ismount(target) or target in (Path(os.getcwd()), *Path(os.getcwd()).parents):
        what = "a mount point" if os.path.ismount(target) else "the current folder (or holds it)"
        raise LlmriError(f"{out}: is {what}; llmri writes a folder whole by renaming it into place, so "
                         "choose a folder inside it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{_TAG}{os.getpid()}-", suffix=".tmp",
                                        dir=target.parent))
    except OSError as e:
        if _full(e):
            raise DiskFull(target) from None
        raise
    active[target] = staging
    try:
        yield staging
        _carry_over(target, staging, drop)
        _swap_in(staging, target)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, DiskFull):     # named by its place in out, not in the staging folder
            where = out / e.path.relative_to(staging) if staging in e.path.parents else e.path
            raise DiskFull(where, e.need, more=f"{out} is as it was") from None
        if isinstance(e, OSError) and _full(e):
            raise DiskFull(out, more=f"{out} is as it was") from None
        raise
    finally:
        del active[target]


def _clean_stale(target: Path) -> None:
    """Remove the staging siblings of ``target`` left by killed writers (of dead processes); an
    old folder set aside by a killed fallback swap goes back in place when ``target`` is missing."""
    for p in target.parent.glob(glob.escape(f".{target.name}{_TAG}") + "*"):
        try:
            pid = int(p.name[len(target.name) + len(_TAG) + 1:].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        if p.suffix == ".old" and not target.exists():
            os.rename(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _carry_over(target: Path, staging: Path, drop) -> None:
    """Hard-link (or copy) into ``staging`` each file of ``target`` that the writer did not write,
    except those under ``drop``. llmri replaces files by rename, never in place, so a linked file
    is never changed through the other name."""
    if not target.is_dir():
        return
    drop = {Path(d).parts[0] for d in drop}
    for root, dirs, files in os.walk(target):
        rel = Path(root).relative_to(target)
        if rel.parts and (rel.parts[0] in drop):
            dirs[:] = []
            continue
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            if not rel.parts and name in drop:
                continue
            src, dst = Path(root) / name, staging / rel / name
            if os.path.lexists(dst):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                try:
                    os.link(src, dst)
                except OSError as e:
                    if _full(e):
                        raise
                    shutil.copy2(src, dst)


def _swap_in(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
    else:  # no atomic exchange here: set the old folder aside, rename, then remove it
        aside = target.parent / f".{target.name}{_TAG}{os.getpid()}-{staging.name[-12:-4]}.old"
        os.rename(target, aside)
        os.rename(staging, target)
        shutil.rmtree(aside, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_shard(path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, atomically. torch tensors may stand beside them
    (bfloat16 ones, which numpy cannot hold: a scan's ``store_dtype="bfloat16"``); the file is then
    written by safetensors' torch side, with the same layout."""
    if any(not isinstance(v, np.ndarray) for v in tensors.values()):
        import torch
        from safetensors.torch import save as pt_save

        data = pt_save({k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                            else v.contiguous()) for k, v in tensors.items()}, metadata=metadata)
    else:
        data = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def read_json_object(path) -> dict:
    """The JSON object in ``path``, refused in one line naming the file when it is not one."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LlmriError(f"{path}: not valid JSON") from None
    if not isinstance(obj, dict):
        raise LlmriError(f"{path}: expected a JSON object")
    return obj
