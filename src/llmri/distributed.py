"""Ray execution of capture, lesion maps and explanations, writing exactly what the local path writes.

The work is the local work cut into pieces: capture runs :func:`llmri.capture.plan_scan` once,
:func:`~llmri.capture.capture_shards` for each shard on whichever worker is free, and
:func:`~llmri.capture.finish_scan` at the end, so a distributed Scan is byte-identical to a
local one. Each worker is a Ray actor that loads the model once. A shard is written atomically
by the worker that captures it; a worker that dies or raises loses only its shard, which Ray
retries (``retries`` times) and a rerun of the same call finishes. Explanations send each unit's
backend calls (explain, then score) to actors that each hold a copy of the explainer's backend;
every call goes through the same on-disk call cache, so the table is the local one and a rerun
pays for nothing twice. Ray is imported only here,
and only when one of these functions is called: ``import llmri`` never imports it.

The model reaches the workers as a name or folder (each worker calls ``load_model``) or as a
function that returns an llmri Model (sent with Ray's own serializer, as any Ray task
argument); the Scan format itself never pickles anything.

>>> import llmri                                                        # doctest: +SKIP
>>> s = llmri.scan("org/model", "corpus/", "/shared/scan", engine="ray", workers=8,
...                resources={"GPU": 1})
"""

from __future__ import annotations

import contextlib
import os
import sys
from numbers import Number
from pathlib import Path

from .errors import LlmriError

CLUSTERS = ("auto", "local")


# ---------------------------------------------------------------- checks and connection
def check_options(workers, resources=None, retries: int = 2, address: str | None = None) -> dict:
    """Validate the Ray options before Ray or a model starts; the actor options for ``resources``.

    ``resources`` maps ``CPU``, ``GPU`` or a custom Ray resource to the amount each worker needs.
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
    opts = {"num_cpus": resources.pop("CPU", 1)}
    if "GPU" in resources:
        opts["num_gpus"] = resources.pop("GPU")
    if resources:
        opts["resources"] = resources
    return opts


def _check_model(model):
    from .model import Model

    if isinstance(model, Model) or not (isinstance(model, (str, os.PathLike)) or callable(model)):
        raise LlmriError("model: on Ray give the model's name or folder, or a function that returns an "
                         "llmri Model, so that each worker loads its own copy (got "
                         f"{type(model).__name__})")
    return str(model) if isinstance(model, os.PathLike) else model


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


def _get(ray, refs):
    """``ray.get`` that re-raises an LlmriError from a worker as itself (one line, no Ray wrapper)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        _reraise(e)
        raise


class _Worker:
    """One copy of the model on one worker; Ray runs it as an actor."""

    def __init__(self, model, device: str, dtype: str):
        from .model import as_model

        self.error = None
        try:
            self.model = as_model(model() if callable(model) else model, device=device, dtype=dtype)
        except LlmriError as e:  # reported by the first call, as a one-line error on the driver
            self.error = e

    def _model(self):
        if self.error is not None:
            raise self.error
        return self.model

    def plan_scan(self, corpus, out: str, options: dict):
        from .capture import plan_scan

        return plan_scan(self._model(), corpus, Path(out), **options)

    def capture(self, plan, shard: int) -> int:
        from .capture import capture_shards

        capture_shards(self._model(), plan, [shard], progress=False)
        return shard

    def lesion_jobs(self, layers, heads: bool, mlps: bool) -> list[tuple]:
        from .interventions import lesion_jobs

        return lesion_jobs(self._model(), layers, heads, mlps)

    def lesions(self, corpus, jobs: list[tuple], options: dict, part: int):
        from .interventions import lesion_values
        from .store import Scan

        options = dict(options)
        scan = options.pop("scan")
        return part, lesion_values(self._model(), corpus, jobs, scan=Scan.open(scan) if scan else None,
                                   baseline=part == 0, progress=False, **options)


def _start(ray, model, device, dtype, workers: int, opts: dict, retries: int) -> list:
    actor = ray.remote(max_restarts=retries, max_task_retries=retries)(_Worker)
    return [actor.options(**opts).remote(model, device, dtype) for _ in range(workers)]


def _each(ray, actors, calls, done=None):
    """Run ``calls`` (functions ``actor -> ObjectRef``) on whichever actor is free (Ray's ActorPool).

    Returns the results in completion order and the errors of the calls that failed after Ray's
    retries; one failure does not stop the others. ``done(result)`` is called as each finishes.
    """
    from ray.util import ActorPool

    pool = ActorPool(actors)
    for call in calls:
        pool.submit(lambda actor, c: c(actor), call)
    results, errors = [], []
    while pool.has_next():
        try:
            results.append(pool.get_next_unordered())
        except ray.exceptions.RayError as e:
            errors.append(e)
            continue
        if done is not None:
            done(results[-1])
    return results, errors


def _why(e: Exception) -> str:
    """The last line of a worker's error: the exception itself, without Ray's traceback."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"


def _reraise(e: Exception) -> None:
    """A worker's LlmriError (bad input, not bad luck) is raised as itself."""
    if isinstance(getattr(e, "cause", None), LlmriError):
        raise LlmriError(str(e.cause)) from None


# ---------------------------------------------------------------- capture
def scan(model, corpus, out, workers: int = 2, resources: dict | None = None, address: str | None = None,
         retries: int = 2, sites=("resid",), pool: str = "auto", layers=None, max_length: int | None = None,
         batch_tokens: int | None = None, token_sites=(), shard_tokens: int | None = None,
         device: str = "auto", dtype: str = "auto", overwrite: bool = False, progress: bool | None = None,
         request: str | None = None):
    """:func:`llmri.scan` on Ray: ``workers`` actors, each needing ``resources`` (e.g. ``{"GPU": 1}``).

    The plan (tokens, batches, shards) is made once, by the first worker, which holds the model
    anyway (so the driver never loads the weights); the driver hands it to every worker through
    Ray's object store and writes the final manifest. ``out`` must be a folder that the driver
    and every worker see at the same path (a local disk for a one-machine cluster, or a shared
    POSIX filesystem). A shard that still fails after ``retries`` retries leaves the Scan
    incomplete with a one-line error; rerunning the same call captures only the missing shards.

    >>> s = llmri.distributed.scan("default", llmri.demo_corpus(), "runs/demo", workers=2)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from .capture import DEFAULT_BATCH_TOKENS, check_scan_args, finish_scan
    from .store import Scan, complete_shards

    batch_tokens = DEFAULT_BATCH_TOKENS if batch_tokens is None else batch_tokens
    corpus, out = check_scan_args(corpus, out, pool, batch_tokens)
    out = out.resolve()
    model = _check_model(model)
    opts = check_options(workers, resources, retries, address)
    ray = connect(address)
    actors = _start(ray, model, device, dtype, workers, opts, retries)
    try:
        options = dict(sites=sites, pool=pool, layers=layers, max_length=max_length, batch_tokens=batch_tokens,
                       token_sites=token_sites, shard_tokens=shard_tokens, overwrite=overwrite, clean=True,
                       request=request)
        plan = _get(ray, actors[0].plan_scan.remote(corpus, str(out), options))
        if plan.cached:
            return Scan.open(out)  # answered from the cache
        ref = ray.put(plan)
        calls = [lambda a, s=s: a.capture.options(retry_exceptions=True).remote(ref, s) for s in plan.todo]
        bar = tqdm(total=len(calls), unit="shard", desc=f"scanning on {workers} workers",
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        with bar:
            if len(calls) < workers:
                bar.write(f"note: {len(calls)} shard(s) to capture for {workers} workers; a smaller shard_tokens "
                          "(--shard-tokens) spreads the work", file=sys.stderr)
            _, errors = _each(ray, actors, calls, lambda shard: bar.update(1))
        result = finish_scan(plan)
    finally:
        for a in actors:
            ray.kill(a)
    if result is None:
        if errors:
            _reraise(errors[0])
        done = len(complete_shards(out, len(plan.shards)))
        raise LlmriError(f"{out}: {len(errors)} shard(s) failed after {retries} retries "
                         f"({_why(errors[0]) if errors else 'shards missing'}); {done}/{len(plan.shards)} "
                         "shards are complete: rerun the same command to capture the rest")
    return result


# ---------------------------------------------------------------- lesion maps
def lesion_map(model, corpus, measure="auto", mode: str = "zero", scan=None, layers=None, heads: bool = True,
               mlps: bool = True, batch_tokens: int = 8192, seed: int = 0, workers: int = 2,
               resources: dict | None = None, address: str | None = None, retries: int = 2,
               device: str = "auto", dtype: str = "auto", progress: bool | None = None):
    """:func:`llmri.lesion_map` on Ray: the lesions are dealt out to ``workers`` actors (every
    ``workers``-th lesion to the same actor) and the table is put back in order; it is the same
    table as the local one.

    >>> df = llmri.distributed.lesion_map("default-decoder", corpus, workers=4)    # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from .interventions import MODES, _as_corpus, lesion_table

    if mode not in MODES:
        raise LlmriError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not callable(measure) and measure not in ("auto", "loss", "representation", "probe"):
        raise LlmriError(f"measure {measure!r} is not one of auto, loss, representation, probe, or a function")
    corpus = _as_corpus(corpus)
    scan_dir = None if scan is None else str(Path(getattr(scan, "folder", scan)).resolve())
    model = _check_model(model)
    opts = check_options(workers, resources, retries, address)
    ray = connect(address)
    actors = _start(ray, model, device, dtype, workers, opts, retries)
    try:
        jobs = _get(ray, actors[0].lesion_jobs.remote(layers, heads, mlps))
        parts = [list(range(len(jobs)))[i::workers] for i in range(workers)]
        parts = [p for k, p in enumerate(parts) if p or k == 0]  # part 0 also measures the baseline
        options = dict(measure=measure, mode=mode, scan=scan_dir, batch_tokens=batch_tokens, seed=seed)

        def call(k):
            return lambda a: a.lesions.options(retry_exceptions=True).remote(
                corpus, [jobs[j] for j in parts[k]], options, k)

        bar = tqdm(total=len(jobs), unit="lesion", desc=f"lesions on {workers} workers",
                   disable=None if progress is None else not progress, dynamic_ncols=True)
        with bar:
            results, errors = _each(ray, actors, [call(k) for k in range(len(parts))],
                                    lambda r: bar.update(len(parts[r[0]])))
    finally:
        for a in actors:
            ray.kill(a)
    if errors:
        _reraise(errors[0])
        raise LlmriError(f"lesion map: {len(errors)} of {len(parts)} parts failed after "
                         f"{retries} retries ({_why(errors[0])}); rerun the same command")
    values = [0.0] * len(jobs)
    for k, (name, base, vals) in results:
        for j, v in zip(parts[k], vals):
            values[j] = v
        if k == 0:
            baseline = base
    return lesion_table(jobs, values, name, baseline, mode)


# ---------------------------------------------------------------- explanations
class _Explainer:
    """One copy of an :class:`~llmri.explain.Explainer` on one worker (a ``LocalLM`` loads its
    model on the first call, once); Ray runs it as an actor."""

    def __init__(self, explainer):
        self.explainer = explainer

    def run(self, job):
        from .explain.explainer import run_job

        return run_job(self.explainer, job)

    def stats(self) -> tuple[dict, str]:
        be = self.explainer.backend
        return dict(be.stats), be.model_name


class _ExplainPool:
    """``pool(jobs, done)``: the results of :func:`llmri.explain.explainer.run_job` in job order;
    ``pool.stats()``: the call statistics summed over the workers, and the model's name."""

    def __init__(self, ray, actors, retries: int):
        self.ray, self.actors, self.retries = ray, actors, retries

    def __call__(self, jobs, done):
        jobs = list(jobs)
        calls = [lambda a, j=j: a.run.options(retry_exceptions=True).remote(j) for j in jobs]
        results, errors = _each(self.ray, self.actors, calls, lambda r: done(1))
        if errors:
            _reraise(errors[0])
            raise LlmriError(f"explain: {len(errors)} of {len(jobs)} units failed after {self.retries} retries "
                             f"({_why(errors[0])}); rerun the same command: the calls already made are cached")
        order = {j[1]: i for i, j in enumerate(jobs)}           # one job per unit in each round
        return sorted(results, key=lambda r: order[r[0]])

    def stats(self) -> tuple[dict, str]:
        got = _get(self.ray, [a.stats.remote() for a in self.actors])
        total = {k: sum(s[k] for s, _ in got) for k in got[0][0]}
        return total, got[0][1]


def _check_backend(backend) -> None:
    from .explain.backends import LocalLM
    from .model import Model

    if isinstance(backend, LocalLM) and isinstance(backend._spec, Model):
        raise LlmriError("backend: on Ray give LocalLM the model's name or folder (e.g. LocalLM('default-decoder')), "
                         "so that each worker loads its own copy (got a loaded Model)")


@contextlib.contextmanager
def explainers(explainer, workers: int = 2, resources: dict | None = None, address: str | None = None,
               retries: int = 2):
    """``workers`` Ray actors, each holding a copy of ``explainer`` (its backend rebuilt on the
    worker: a ``LocalLM`` loads its model there, an ``OpenAICompatible`` reads its API key from
    the worker's environment). Yields a pool that maps explain jobs over them (Ray's ActorPool,
    whichever actor is free); the actors are killed on exit. Every call goes through the
    backend's on-disk cache (``cache_dir``, made absolute on the driver), which must be a folder
    the driver and the workers see at the same path. Used by ``llmri.explain(..., engine="ray")``.

    >>> res = llmri.explain(scan, "mlp.10", "top:50", ex, engine="ray", workers=4, out="/shared/explain")  # doctest: +SKIP
    """
    opts = check_options(workers, resources, retries, address)
    _check_backend(explainer.backend)
    ray = connect(address)
    actor = ray.remote(max_restarts=retries, max_task_retries=retries)(_Explainer)
    actors = [actor.options(**opts).remote(explainer) for _ in range(workers)]
    try:
        yield _ExplainPool(ray, actors, retries)
    finally:
        for a in actors:
            ray.kill(a)
