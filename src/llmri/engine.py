"""Where work runs: an :class:`Engine` maps jobs over workers, in this process or on Ray.

An analysis that can scale out cuts its work into independent jobs and hands them to the
engine it was given; it never asks where they run. ``engine.map(job, jobs, state)`` calls
``job(value, item)`` for every item, where ``value`` is what ``state()`` built once per worker
(a model, an explainer), and returns the results in job order. Locally the one worker is this
process; on Ray each worker is an actor (:mod:`llmri.distributed`), and the same job functions
write the same bytes. ``import llmri`` never imports Ray: only an ``Engine("ray")`` that is
given work does.

>>> import functools, llmri                                          # doctest: +SKIP
>>> engine = llmri.Engine("ray", workers=4, resources={"GPU": 1})
>>> scan = llmri.scan("org/model", corpus, "/shared/scan", engine=engine)
>>> lengths = engine.map(lambda model, text: len(model.tokenizer(text)["input_ids"]), texts,
...                      state=functools.partial(llmri.load_model, "org/model"))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import LlmriError

ENGINES = ("local", "ray")


class JobsFailed(LlmriError):
    """Jobs that still failed on the workers after their retries (Ray only: locally a job's
    exception is raised as it is). ``failed`` of ``total`` jobs failed; ``why`` is the first
    failure's last line; ``refused`` is its message when it was an LlmriError (bad input, not
    bad luck), which is then also the message of this error."""

    def __init__(self, failed: int, total: int, retries: int, why: str, refused: str | None = None):
        self.failed, self.total, self.retries, self.why, self.refused = failed, total, retries, why, refused
        super().__init__(refused or f"{failed} of {total} jobs failed after {retries} retries ({why})")

    def reword(self, message: str) -> LlmriError:
        """The error an analysis raises: the worker's own one-line error when its input was
        refused, else ``message`` (which says what failed in the analysis's terms)."""
        return LlmriError(self.refused or message)


class Constant:
    """A state factory that returns ``value`` itself (on a Ray worker: its own copy of it).

    >>> engine.map(run_job, jobs, state=Constant(explainer))             # doctest: +SKIP
    """

    def __init__(self, value):
        self.value = value

    def __call__(self):
        return self.value


class ModelLoader:
    """A picklable state factory of an llmri Model: ``model`` is a name, a folder, a loaded
    Model (local engine only) or a function returning one; ``device``/``dtype`` apply when it
    is loaded here.

    >>> engine.map(job, items, state=ModelLoader("default", dtype="float32"))  # doctest: +SKIP
    """

    def __init__(self, model, device="auto", dtype="auto"):
        self.model, self.device, self.dtype = model, device, dtype

    def __call__(self):
        from .model import as_model
        from .threads import configure_threads

        configure_threads()      # torch's pool sized before the first heavy work (a no-op once set)
        model = self.model
        if callable(model) and not hasattr(model, "forward"):  # a function returning a Model (not a torch module)
            model = model()
        return as_model(model, device=self.device, dtype=self.dtype)


class _Here:
    """The local worker: the state built once, jobs run in this process in order (``threads`` at
    a time when the state is thread-safe, e.g. an HTTP client); a job's exception is raised as it is."""

    def __init__(self, state):
        self.state, self.built, self.value = state, False, None

    def _value(self):
        if not self.built:
            self.value = self.state() if self.state is not None else None
            self.built = True
        return self.value

    def map(self, job, jobs: list, done, threads: int) -> tuple[dict, list]:
        value = self._value()
        results: dict = {}
        if threads <= 1 or len(jobs) <= 1:
            for i, item in enumerate(jobs):
                results[i] = job(value, item)
                if done is not None:
                    done(i)
            return results, []
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            for i, r in enumerate(pool.map(lambda item: job(value, item), jobs)):
                results[i] = r
                if done is not None:
                    done(i)
        return results, []

    def each(self, job) -> list:
        return [job(self._value())]

    def close(self) -> None:
        self.value = None


class Engine:
    """Where jobs run: ``Engine("local")`` in this process, ``Engine("ray", workers=N,
    resources={"GPU": 1}, address="auto", retries=2)`` on ``N`` Ray actors, each needing
    ``resources`` (``CPU``, ``GPU`` or a custom Ray resource; without ``CPU``, workers on a
    one-machine cluster split its cores, ``max(1, cores // N)`` each, and run that many torch
    threads), on the cluster at ``address``
    (``"auto"``: the one running on this machine; ``"local"``: a new one here; None: Ray's
    choice), with a job whose worker raises or dies retried ``retries`` times (a dead worker is
    restarted). The options are checked here, before Ray or a model starts.

    Workers and their state live for one :meth:`map` call, or for a ``with engine:`` block
    (several calls share them: a scan plans, then captures, on the same workers).

    >>> engine = Engine("ray", workers=2)                                 # doctest: +SKIP
    >>> with engine:
    ...     n_layers = engine.map(lambda m, _: m.n_layers, [None], state=ModelLoader("default"))[0]
    ...     sizes = engine.map(lambda m, L: m.n_layers - L, range(n_layers), state=...)
    """

    def __init__(self, kind: str = "local", workers: int = 1, resources: dict | None = None,
                 address: str | None = None, retries: int = 2):
        from .distributed import check_options  # the Ray options' own checks; Ray itself is not imported

        if kind not in ENGINES:
            raise LlmriError(f"engine {kind!r} is not one of {', '.join(ENGINES)}")
        if kind == "local" and (workers != 1 or resources):
            raise LlmriError("workers and resources apply to engine='ray'; pass engine='ray' (pip install 'llmri[ray]')")
        self._actor_options = check_options(workers, resources, retries, address)
        self.kind, self.workers, self.address, self.retries = kind, workers, address, retries
        self.resources = dict(resources) if resources else None
        self._depth = 0
        self._pools: list = []          # (state factory, its workers) while held

    def __repr__(self) -> str:
        return (f"Engine({self.kind!r}, workers={self.workers}, resources={self.resources}, "
                f"address={self.address!r}, retries={self.retries})")

    @property
    def remote(self) -> bool:
        """Whether jobs run in other processes (Ray), so their arguments travel and their bars are unseen."""
        return self.kind == "ray"

    # ---------------------------------------------------------------- the verb
    def map(self, job: Callable, jobs, state: Callable | None = None, done: Callable[[int], None] | None = None,
            threads: int = 1) -> list:
        """``[job(value, item) for item in jobs]``, run where this engine says; ``value`` is
        ``state()`` built once per worker (None without ``state``). ``job`` and ``state`` must
        be picklable for Ray (module-level functions, ``functools.partial``, :class:`ModelLoader`,
        :class:`Constant`). ``done(i)`` is called as job ``i``'s result arrives (progress bars).
        ``threads``: how many jobs may share one state value at once (a thread-safe client);
        the local worker runs that many threads, a Ray worker one job at a time.

        Locally a job's exception is raised as it is. On Ray every job is tried (whichever worker
        is free takes the next one); jobs that still fail after the retries raise
        :class:`JobsFailed` once the others are done, and a worker's LlmriError (bad input) is
        never retried.
        """
        jobs = list(jobs)
        if not jobs:
            return []
        with self:
            results, errors = self._pool(state).map(job, jobs, done, threads)
        if errors:
            from .distributed import refused, why

            raise JobsFailed(len(errors), len(jobs), self.retries, why(errors[0]), refused(errors[0]))
        return [results[i] for i in range(len(jobs))]

    def each(self, job: Callable, state: Callable | None = None) -> list:
        """``job(value)`` once on every worker holding ``state``: what each worker's copy
        accumulated (call statistics), one result per worker (locally: one)."""
        with self:
            return self._pool(state).each(job)

    def __enter__(self) -> Engine:
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            pools, self._pools = self._pools, []
            for _, pool in pools:
                pool.close()

    def _pool(self, state):
        for s, pool in self._pools:
            if s is state:
                return pool
        if self.remote:
            from .distributed import Workers

            pool = Workers(state, self.workers, self._actor_options, self.retries, self.address)
        else:
            pool = _Here(state)
        self._pools.append((state, pool))
        return pool

    # ---------------------------------------------------------------- what analyses ask of it
    def chunks(self, items) -> list[list]:
        """``items`` cut into jobs: all in one job locally (one pass, one progress bar), one job
        per item on Ray (whichever worker is free takes the next; a failure costs one item)."""
        items = list(items)
        return [[x] for x in items] if self.remote else [items]

    def progress(self, progress: bool | None) -> tuple[bool | None, bool | None]:
        """``(driver, jobs)``: where a progress bar is drawn. Locally the job draws its own (this
        process's stderr); on Ray the driver draws one that counts finished jobs, and the
        workers' bars are off."""
        return (progress, False) if self.remote else (False, progress)

    def label(self, what: str) -> str:
        """A progress bar's description: ``what``, and on Ray ``on N workers``."""
        return f"{what} on {self.workers} workers" if self.remote else what

    def path(self, p) -> Path:
        """A path as jobs must see it: absolute on Ray (a worker's working folder may differ),
        as given locally."""
        return Path(p).resolve() if self.remote else Path(p)

    def model_state(self, model, device="auto", dtype="auto") -> ModelLoader:
        """The state of jobs that need the model: each worker loads its own copy. On Ray
        ``model`` must be a name, a folder or a function returning an llmri Model (not a loaded
        Model: every worker needs its own); locally a loaded Model is used as it is."""
        if self.remote:
            from .model import Model

            if isinstance(model, Model) or not (isinstance(model, (str, os.PathLike)) or callable(model)):
                raise LlmriError("model: on Ray give the model's name or folder, or a function that returns an "
                                 "llmri Model, so that each worker loads its own copy (got "
                                 f"{type(model).__name__})")
            model = str(model) if isinstance(model, os.PathLike) else model
        return ModelLoader(model, device, dtype)


def as_engine(engine="local", workers: int = 1, resources: dict | None = None, address: str | None = None,
              retries: int | None = None) -> Engine:
    """An :class:`Engine` from an entry point's arguments: an Engine as it is, or the keyword
    style ``engine="ray", workers=2, resources={"GPU": 1}, address=..., retries=...``.

    >>> as_engine("ray", workers=2)                                       # doctest: +SKIP
    Engine('ray', workers=2, resources=None, address=None, retries=2)
    """
    if isinstance(engine, Engine):
        if workers != 1 or resources or address is not None or retries is not None:
            raise LlmriError("engine: an Engine carries its own workers, resources, address and retries; "
                             "give them to Engine(...), not beside it")
        return engine
    if not isinstance(engine, str):
        raise LlmriError(f"engine: expected 'local', 'ray' or an llmri.Engine, got {type(engine).__name__}")
    return Engine(engine, workers, resources, address, 2 if retries is None else retries)
