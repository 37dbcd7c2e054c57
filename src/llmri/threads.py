"""The one thread policy: torch computes on one pool sized to the physical cores this process may use.

Torch starts with one thread per physical core of the whole machine, whatever the container's CPU
quota or the process's affinity mask allow; in a 2-CPU container on a 64-core host that is 32
threads time-sharing 2 CPUs, and a small model's many short parallel regions then wait on each
other. :func:`usable_cores` counts what the process may really use, :func:`configure_threads`
sizes torch's pool to it once, before llmri's first heavy work, and turns the tokenizers' own
Rust pool off (it would compete with torch's). A choice the user made (``OMP_NUM_THREADS``,
``MKL_NUM_THREADS``, ``torch.set_num_threads``, ``TOKENIZERS_PARALLELISM``) is left as it is.

>>> import llmri.threads                                              # doctest: +SKIP
>>> llmri.threads.usable_cores()
2
>>> llmri.threads.configure_threads()       # torch.get_num_threads() is now 2
2
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from .errors import LlmriError

_state: dict = {}     # "done": the policy has run in this process; "set": the count it gave torch


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpu_list(text: str | None) -> set[int] | None:
    """``"0-3,8,10-11"`` (the kernel's CPU list format) as a set of CPU numbers; None if unreadable.

    >>> sorted(parse_cpu_list("0-2,5"))
    [0, 1, 2, 5]
    """
    if text is None:
        return None
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        return None
    return cpus or None


def _env_threads(environ, name: str) -> int | None:
    """A positive thread count from ``name`` (``"4"``; the first level of ``"4,2"``), else None."""
    value = (environ.get(name) or "").split(",")[0].strip()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def _cpus_allowed(affinity, root: Path) -> set[int]:
    """The CPUs this process may run on: ``affinity`` when given, else the affinity mask, else the
    online CPUs, else ``os.cpu_count()`` of them."""
    if affinity is not None:
        return set(affinity)
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):        # not on Linux
        pass
    online = parse_cpu_list(_read(root / "sys/devices/system/cpu/online"))
    return online or set(range(os.cpu_count() or 1))


def _core_of(cpu: int, root: Path):
    """One key per physical core: the CPUs sharing it (SMT siblings), else (package, core id),
    else the CPU itself (its topology unreadable: counted as a core of its own)."""
    topo = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
    for name in ("core_cpus_list", "thread_siblings_list"):
        siblings = parse_cpu_list(_read(topo / name))
        if siblings:
            return frozenset(siblings)
    core = _read(topo / "core_id")
    if core is not None:
        return ("core", _read(topo / "physical_package_id"), core)
    return ("cpu", cpu)


def physical_cores(cpus, root="/") -> int:
    """How many physical cores the CPU numbers ``cpus`` cover (SMT siblings count once), read from
    ``root``/sys/devices/system/cpu/cpu*/topology."""
    root = Path(root)
    return len({_core_of(c, root) for c in cpus})


def _cgroup_paths(root: Path) -> tuple[list[Path], list[Path]]:
    """The folders whose CPU limits apply to this process: its cgroup and every ancestor, for
    cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``), from ``/proc/self/cgroup``. In a
    container the process's path may not exist under the mount; the mount's root then holds the
    container's limit, so the walk up ends there."""
    fs = root / "sys/fs/cgroup"
    v2, v1 = [], []
    text = _read(root / "proc/self/cgroup") or ""
    mounts_v1 = [fs / "cpu,cpuacct", fs / "cpu", fs / "cpuacct,cpu"]
    own_v2, own_v1 = "/", "/"
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own_v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            own_v1 = parts[2]

    def up(base: Path, rel: str) -> list[Path]:
        rel_parts = [p for p in rel.split("/") if p]
        return [base.joinpath(*rel_parts[:i]) for i in range(len(rel_parts), -1, -1)]

    v2 = up(fs, own_v2)
    for m in mounts_v1:
        v1 += up(m, own_v1)
    return v2, v1


def cgroup_cpu_limit(root="/") -> float | None:
    """The CPU time this process's cgroups allow, in CPUs (quota / period; the smallest over the
    cgroup and its ancestors, v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``);
    None when there is no limit or nothing is readable."""
    v2, v1 = _cgroup_paths(Path(root))
    limits = []
    for d in v2:
        fields = (_read(d / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                quota, period = float(fields[0]), float(fields[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    for d in v1:
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        try:
            q, p = float(quota), float(period)
        except (TypeError, ValueError):
            continue
        if q > 0 and p > 0:                     # -1: no quota
            limits.append(q / p)
    return min(limits) if limits else None


def usable_cores(root="/", environ=None, affinity=None) -> int:
    """The number of physical cores this process may use, at least 1.

    ``OMP_NUM_THREADS``, when set to a positive count, wins. Otherwise: the physical cores among
    the CPUs of the affinity mask (SMT siblings count once), capped by the cgroup CPU quota
    (rounded down, at least 1). A source that cannot be read is left out. ``root``, ``environ``
    and ``affinity`` (a set of CPU numbers) replace ``/``, ``os.environ`` and the process's
    affinity mask, for tests.

    >>> usable_cores()                                                   # doctest: +SKIP
    2
    """
    environ = os.environ if environ is None else environ
    omp = _env_threads(environ, "OMP_NUM_THREADS")
    if omp is not None:
        return omp
    root = Path(root)
    n = physical_cores(_cpus_allowed(affinity, root), root)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        n = min(n, max(1, math.floor(limit + 1e-9)))
    return max(1, n)


def split_cores(cores: int, workers: int) -> int:
    """Threads for each of ``workers`` processes sharing ``cores``: ``max(1, cores // workers)``.

    >>> split_cores(16, 3)
    5
    """
    return max(1, int(cores) // max(1, int(workers)))


def _torch_start_counts() -> set[int]:
    """The thread counts torch may have chosen at start-up by itself: the machine's physical cores
    (its usual choice), or all its logical CPUs (its fallback). Any other count was set by someone."""
    root = Path("/")
    online = parse_cpu_list(_read(root / "sys/devices/system/cpu/online")) or set(range(os.cpu_count() or 1))
    return {physical_cores(online, root), os.cpu_count() or 1}


def configure_threads(n: int | None = None) -> int:
    """Apply the thread policy once; returns torch's thread count afterwards.

    ``n``: exactly this many torch threads (a Ray worker's share of the cores): set now if torch
    is imported, else through ``OMP_NUM_THREADS`` when it starts (torch is not imported for it).
    Without ``n``, torch gets :func:`usable_cores` threads, unless ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` is set (torch obeyed it at start-up) or torch's count is no longer its
    start-up default (the user called ``torch.set_num_threads``); either way later calls change
    nothing, so it is cheap to call before every heavy path. ``TOKENIZERS_PARALLELISM`` becomes
    ``false`` unless it is set.

    >>> configure_threads()                                              # doctest: +SKIP
    2
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LlmriError(f"configure_threads: n must be a positive integer, got {n!r}")
        _state.update(done=True, set=n)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(n)
        else:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                if name == "OMP_NUM_THREADS" or name in os.environ:
                    os.environ[name] = str(n)
        return n
    import torch

    if _state.get("done"):
        return torch.get_num_threads()
    _state["done"] = True
    current = torch.get_num_threads()
    if any(_env_threads(os.environ, v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")) \
            or current not in _torch_start_counts():
        return current
    want = usable_cores()
    if want != current:
        torch.set_num_threads(want)
        _state["set"] = want
    return want
