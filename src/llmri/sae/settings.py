"""The settings of SAE training, each checked once here, before any data is read or a model loads.

:class:`TrainSettings` holds what both ways of training share (architecture, width, batch,
optimiser, outliers, seed, precision); :class:`StreamSettings` adds what training from a model
and a corpus needs (the token budget, the shuffling buffer, forward batches, checkpoints).
``train_sae`` builds one from its keyword arguments and ``llmri sae train`` builds the same one
from its flags (``flags=True`` names them in the errors), so both refuse the same bad input with
the same one-line message.

>>> StreamSettings(tokens=0)                                       # doctest: +SKIP
LlmriError: tokens must be a positive integer, got 0
"""

from __future__ import annotations

import numbers
from dataclasses import InitVar, asdict, dataclass

from ..errors import LlmriError
from ..precision import MIXED, check_dtype
from .model import ARCHS

B_DEC_INITS = ("geometric_median", "mean", "zeros")
TRAINING_DTYPES = (None, "auto", "float32", "fp32", MIXED, "bfloat16", "bf16")
# The command-line flag of each setting whose flag is not its name with dashes.
FLAGS = {"n_latents": "--latents", "l1_coefficient": "--l1", "l0_coefficient": "--l0"}
# Fewer optimiser steps than max(MIN_STEPS, n_latents / 4) get a warning (see too_few_steps).
MIN_STEPS = 200
# Tokens held by the shuffling buffer of streamed training (StreamSettings.buffer_tokens).
BUFFER_TOKENS = 2**16


def check_training_dtype(dtype, what: str = "dtype") -> str:
    """``dtype`` as :func:`llmri.precision.check_dtype` names it, when SAE training takes it."""
    name = check_dtype(dtype, what) if dtype in TRAINING_DTYPES else None
    if name is None:
        raise LlmriError(f"{what} {dtype!r} is not one of auto, float32, bf16-mixed (SAE training keeps float32 "
                         "weights; bfloat16 means bf16-mixed here)")
    return name


def _positive_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


@dataclass(frozen=True)
class TrainSettings:
    """What training from a Scan and from a model share (see :func:`llmri.train_sae`)."""

    n_latents: int = 4096
    k: int = 32
    arch: str = "batchtopk"
    batch_size: int = 4096
    lr: float | None = None
    l1_coefficient: float = 5.0
    l0_coefficient: float = 0.05
    bandwidth: float = 0.05
    b_dec_init: str = "geometric_median"
    normalize: bool = True
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_tokens: int | None = None
    skip_first: bool | None = None
    skip_outliers: float | None = 10.0
    shuffle: bool = True
    seed: int = 0
    dtype: str = "auto"
    flags: InitVar[bool] = False

    def __post_init__(self, flags: bool) -> None:
        object.__setattr__(self, "_flags", flags)
        if self.arch not in ARCHS:
            raise LlmriError(f"{self.arg('arch')} {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.b_dec_init not in B_DEC_INITS:
            raise LlmriError(f"b_dec_init {self.b_dec_init!r} is not one of {', '.join(B_DEC_INITS)}")
        for name in ("n_latents", "batch_size"):
            self.need_positive_int(name)
        for name in ("aux_k", "dead_tokens"):
            if getattr(self, name) is not None:
                self.need_positive_int(name)
        if self.arch in ("topk", "batchtopk") and (not _positive_int(self.k) or self.k > self.n_latents):
            raise LlmriError(f"{self.arg('k')} must be an integer in 1..{self.n_latents} ({self.arg('n_latents')}), "
                             f"got {self.k!r}")
        if self.lr is not None and not (isinstance(self.lr, numbers.Real) and 0 < self.lr < float("inf")):
            raise LlmriError(f"{self.arg('lr')} must be a positive finite number, got {self.lr!r}")
        if self.skip_outliers is not None and not (isinstance(self.skip_outliers, numbers.Real)
                                                   and self.skip_outliers > 1):
            raise LlmriError(f"{self.arg('skip_outliers')} must be a number above 1 (times the median token norm) "
                             f"or None, got {self.skip_outliers!r}")
        if not isinstance(self.seed, numbers.Integral):
            raise LlmriError(f"{self.arg('seed')} must be an integer, got {self.seed!r}")
        check_training_dtype(self.dtype, self.arg("dtype"))

    def arg(self, name: str) -> str:
        """``name`` as the user gave it: the keyword, or with ``flags`` the command-line flag."""
        return FLAGS.get(name, "--" + name.replace("_", "-")) if self._flags else name

    def need_positive_int(self, name: str) -> None:
        v = getattr(self, name)
        if not _positive_int(v):
            raise LlmriError(f"{self.arg(name)} must be a positive integer, got {v!r}")

    def values(self) -> dict:
        """The settings as a plain dict (what a checkpoint compares)."""
        return asdict(self)


@dataclass(frozen=True)
class StreamSettings(TrainSettings):
    """Training from a model and a corpus: ``tokens``, the budget of training tokens (the primary
    knob: ``ceil(tokens / batch_size)`` optimiser steps, the corpus read again when it holds fewer);
    ``buffer_tokens``, the shuffling buffer; ``batch_tokens`` and ``max_length``, the forward
    batches (as :func:`llmri.scan`'s); ``checkpoint_every``, seconds between checkpoints."""

    tokens: int = 2**22
    buffer_tokens: int = BUFFER_TOKENS
    batch_tokens: int = 8192
    max_length: int | None = None
    checkpoint_every: float = 300.0

    def __post_init__(self, flags: bool) -> None:
        super().__post_init__(flags)
        for name in ("tokens", "batch_tokens"):
            self.need_positive_int(name)
        if self.max_length is not None:
            self.need_positive_int("max_length")
        if not (isinstance(self.buffer_tokens, numbers.Integral) and self.buffer_tokens >= 0):
            raise LlmriError(f"{self.arg('buffer_tokens')} must be an integer >= 0, got {self.buffer_tokens!r}")
        if not (isinstance(self.checkpoint_every, numbers.Real) and self.checkpoint_every >= 0):
            raise LlmriError(f"{self.arg('checkpoint_every')} must be a number of seconds >= 0, "
                             f"got {self.checkpoint_every!r}")
        if self.tokens < self.batch_size:
            raise LlmriError(f"{self.arg('tokens')} {self.tokens} is smaller than one batch "
                             f"({self.arg('batch_size')} {self.batch_size}): give at least {self.batch_size}")

    def values(self) -> dict:
        """The settings that decide the result (how often checkpoints are written does not)."""
        out = super().values()
        out.pop("checkpoint_every")
        return out


def site_pairs(site, target_site) -> tuple[list[str], list[str]]:
    """``(sites, targets)``: one target per site, the site itself for an SAE (``target_site`` None)."""
    sites = [site] if isinstance(site, str) else list(site)
    if not sites:
        raise LlmriError("site: give at least one token site, e.g. resid.6")
    if target_site is None:
        targets = [None] * len(sites)
    else:
        targets = [target_site] if isinstance(target_site, str) else list(target_site)
    if len(targets) != len(sites):
        raise LlmriError(f"target_site: give one target per site ({len(sites)}), got {len(targets)}")
    if len(set(sites)) != len(sites):
        raise LlmriError(f"site: a site is named twice in {sites}")
    return sites, [t or s for s, t in zip(sites, targets)]


def too_few_steps(steps: int, tokens: int, settings: TrainSettings) -> str | None:
    """A one-line warning when ``steps`` optimiser steps over ``tokens`` tokens are too few for the
    width asked, else None. The rule of thumb: at least ``max(MIN_STEPS, n_latents / 4)`` steps
    (200, and 1,024 for 4,096 latents). Adam moves each weight by about the learning rate per step,
    so an encoder needs hundreds of steps to leave its initialisation, and a wider SAE more, since
    each of its latents fires on fewer tokens of a batch; with 9 steps a 2,048-latent BatchTopK SAE
    of SmolLM2's resid.15 explained 0.26 of the variance of held-out text (issue 20)."""
    need = max(MIN_STEPS, settings.n_latents // 4)
    if steps >= need:
        return None
    return (f"{steps} optimiser steps ({tokens:,} tokens at batch {settings.batch_size}) are few for "
            f"{settings.n_latents} latents: an SAE this wide wants at least {need} "
            f"(about {need * settings.batch_size:,} tokens); expect a poor reconstruction")
