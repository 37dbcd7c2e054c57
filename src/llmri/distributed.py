"""A generic Ray executor: connect to a cluster, hold a state on each of N actors, map jobs over them.

This is what an ``Engine("ray")`` (:mod:`llmri.engine`) runs on; it knows nothing of scans,
lesions or explanations. Each worker is a Ray actor that builds its state once from a
picklable factory (for example a function that loads the model); a job is a picklable function
``job(state, item)``, sent once per map through Ray's object store, and whichever actor is free
takes the next item (Ray's ActorPool). A job whose actor raises or dies is retried ``retries``
times (a dead actor is restarted and rebuilds its state); an LlmriError raised by a job (bad
input, not bad luck) is never retried and comes back to the driver as itself, one line. Ray is
imported only here, and only when a pool starts: ``import llmri`` never imports it.

>>> workers = Workers(ModelLoader("default"), 2, {}, retries=2)   # doctest: +SKIP
>>> results, errors = workers.map(job, items)
>>> workers.close()
"""

from __future__ import annotations

import math
import os
from numbers import Number
from pathlib import Path

from .errors import LlmriError
from .threads import configure_threads, split_cores, usable_cores

CLUSTERS = ("auto", "local")


def check_options(workers, resources=None, retries: int = 2, address: str | None = None) -> dict:
    """Validate the Ray options before Ray or a model starts; the actor options for ``resources``.

    ``resources`` maps ``CPU``, ``GPU`` or a custom Ray resource to the amount each worker needs;
    without ``CPU`` the workers' share of the cores is decided once connected (:func:`worker_cpus`).
    :class:`llmri.Engine` checks its options with it.

    >>> check_options(2, {"GPU": 1, "CPU": 4})                            # doctest: +SKIP
    {'num_cpus': 4, 'num_gpus': 1}
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LlmriError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise LlmriError(f"retries must be an integer >= 0, got {retries!r}")
    if address is not None and not isinstance(address, str):
        raise LlmriError(f"address must be 'auto', 'local' or a Ray address like host:6379, got {address!r}")
    resources = dict(resources or {})
    for k, v in resources.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, Number) or v < 0:
            raise LlmriError(f"resources: {k!r}: {v!r} is not a resource name with an amount >= 0, "
                             "e.g. {'GPU': 1}")
    opts = {"num_cpus": resources.pop("CPU")} if "CPU" in resources else {}
    if "GPU" in resources:
        opts["num_gpus"] = resources.pop("GPU")
    if resources:
        opts["resources"] = resources
    return opts


def _ray():
    try:
        import ray
    except ImportError:
        raise LlmriError("Ray is not installed; pip install 'llmri[ray]'") from None
    return ray


def connect(address: str | None = None):
    """The ``ray`` module, connected: an existing connection is kept; ``"auto"`` joins the cluster
    running on this machine (``ray start --head``), ``"local"`` starts one here, None lets Ray choose
    (``RAY_ADDRESS``, else a new local cluster)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False)
    if address == "auto":
        try:
            ray.init(address="auto", **kw)
        except ConnectionError:
            raise LlmriError("--ray auto: no Ray cluster is running on this machine; start one with "
                             "`ray start --head` (and `ray start --address=HEAD:6379` on the other "
                             "machines), or use --ray local") from None
        return ray
    if address in (None, "local"):  # workers of a cluster started here import the same llmri as this process
        src = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        kw["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    try:
        ray.init(address=address, **kw)
    except ConnectionError as e:
        raise LlmriError(f"address {address}: cannot reach the Ray cluster ({str(e).splitlines()[0]})") from None
    return ray


def worker_cpus(ray, workers: int) -> int:
    """The CPUs each of ``workers`` actors reserves when the caller named none: on a cluster of
    one machine, its cores split between them (``max(1, cores // workers)``, the cores being this
    process's :func:`llmri.threads.usable_cores` when the machine is this one, capped by the
    cluster's CPUs); on several machines 1, as Ray's own default (pass ``resources={"CPU": n}``)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) != 1:
        return 1
    cpus = int(nodes[0].get("Resources", {}).get("CPU", 1))
    if nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address():
        cpus = min(cpus, usable_cores())
    return split_cores(cpus, workers)


class _Refused:
    """What an actor returns for a job that raised an LlmriError: its message (not retried)."""

    def __init__(self, message: str):
        self.message = message


class _Holder:
    """One worker: the state built once from its factory, on ``threads`` torch threads (its share
    of the cores); Ray runs it as an actor."""

    def __init__(self, factory, threads: int = 1):
        self.error, self.state = None, None
        configure_threads(threads)
        try:
            self.state = factory() if factory is not None else None
        except LlmriError as e:  # reported by the first job, as a one-line error on the driver
            self.error = e

    def run(self, job, i: int, item):
        try:
            if self.error is not None:
                raise self.error
            return i, job(self.state, item)
        except LlmriError as e:
            return i, _Refused(str(e))

    def each(self, job):
        if self.error is not None:
            raise self.error
        return job(self.state)


def why(e: Exception) -> str:
    """The last line of a worker's error: the exception itself, without Ray's traceback."""
    if isinstance(e, _Refused):
        return e.message
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"


def refused(e) -> str | None:
    """The message of a worker's LlmriError (bad input, not bad luck), else None."""
    if isinstance(e, _Refused):
        return e.message
    cause = getattr(e, "cause", None)
    return str(cause) if isinstance(cause, LlmriError) else None


class Workers:
    """``workers`` Ray actors, each with ``options`` (``num_cpus``, ``num_gpus``, ``resources``)
    and its own state from ``factory``, on the cluster at ``address`` (:func:`connect`)."""

    def __init__(self, factory, workers: int, options: dict, retries: int, address: str | None = None):
        self.ray = connect(address)
        options = dict(options)
        if "num_cpus" not in options:
            options["num_cpus"] = worker_cpus(self.ray, workers)
        threads = max(1, math.floor(options["num_cpus"]))   # as Ray's OMP_NUM_THREADS for the actor
        actor = self.ray.remote(max_restarts=retries, max_task_retries=retries)(_Holder)
        self.actors = [actor.options(**options).remote(factory, threads) for _ in range(workers)]

    def map(self, job, jobs: list, done=None, threads: int = 1) -> tuple[dict, list]:
        """Run ``job(state, item)`` for every item on whichever actor is free. Returns the results
        by job index and the failures in the order they came (a worker's LlmriError, or the Ray
        error of a job that still failed after the retries); one failure does not stop the
        others. ``done(i)`` is called as job ``i`` succeeds; ``threads`` is unused (an actor
        runs one job at a time)."""
        from ray.util import ActorPool

        ray = self.ray
        ref = ray.put(job)
        pool = ActorPool(self.actors)
        for i, item in enumerate(jobs):
            pool.submit(lambda a, v: a.run.options(retry_exceptions=True).remote(ref, *v), (i, item))
        results, errors = {}, []
        while pool.has_next():
            try:
                i, r = pool.get_next_unordered()
            except ray.exceptions.RayError as e:
                errors.append(e)
                continue
            if isinstance(r, _Refused):
                errors.append(r)
                continue
            results[i] = r
            if done is not None:
                done(i)
        return results, errors

    def each(self, job) -> list:
        """``job(state)`` on every actor; a worker's LlmriError is raised as itself."""
        try:
            return self.ray.get([a.each.remote(job) for a in self.actors])
        except self.ray.exceptions.RayTaskError as e:
            if refused(e) is not None:
                raise LlmriError(refused(e)) from None
            raise

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
