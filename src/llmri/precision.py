"""Precision: which dtype each use computes in, and the one switch that applies it.

The functions take an llmri Model (anything with ``precision``, ``dtype``, ``device`` and
``adapter``); this module imports nothing from ``model``, which imports it.

``dtype="auto"`` loads float32 weights and computes in bfloat16 (``torch.autocast``, float32
weights: "bf16-mixed") only for the uses the fidelity table (README, *Precision*;
``benchmarks/bf16_fidelity.py``) says hold, on hardware with native bfloat16. Every heavy forward
in llmri runs inside :func:`computing`, so this module is the one place precision is decided.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING

from .errors import LlmriError

if TYPE_CHECKING:
    import torch

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}
MIXED = "bf16-mixed"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", MIXED)

# Where bf16-mixed (float32 weights, bfloat16 matrix products) holds against float32, measured
# by benchmarks/bf16_fidelity.py with tolerances set before measuring (README, "Precision").
# dtype="auto" computes these uses in bf16-mixed on hardware with native bfloat16, and every
# other use in float32. A use missing here has not been measured, so it stays float32.
AUTO_BF16 = {
    "scan-encoder": True,    # every scan row holds (grid cells differ <= 4.2 %, NRAG Jaccard >= 0.93)
    "scan-decoder": False,   # SmolLM2: up to 15 % of region-grid cells move (tolerance 5 %)
    "sae-train": True,       # held-out EV/CE score/L0 move 0.0002/0.0012/0.08 % (tol 0.01/0.02/5 %); step 0.56-0.63x
    "sae-activations": True, # SAE trained on bf16-mixed activations: held-out EV/CE score/L0 move 0.0006/0.0006/0.15 %
    "sae-eval": True,        # one SAE evaluated both ways: EV/CE score/L0 move 0.0002/0.0004/0.11 % (same tolerances)
    "lesion": True,          # effects Spearman 0.993 (SmolLM2), 1.000 (MiniLM), max diff 0.014 (tol. 0.95, 0.05); 0.51x
    # with the float32 unembedding (computing() keeps it) 12 of 16 greedy outputs equal float32's and
    # plain generation holds (0.7x), but steering effects measured through it move 0.063 (tol. 0.05)
    "generate": False,
    "lm": False,             # a pmi simulation score moves 0.083 (tolerance 0.05); Spearman 0.998
    "attribute": False,      # nodes hold (Spearman >= 0.979) but top-k ablation drops move <= 0.32 nats (tol. 0.1)
    "patch": False,          # holds with the float32 unembedding (Spearman 0.957) but runs no faster (1.01x)
}


def check_dtype(dtype, what: str = "dtype") -> str:
    """``dtype`` as one of :data:`DTYPE_CHOICES` (aliases bf16, fp32, fp16 accepted), else a one-line error."""
    if dtype in (None, "auto"):
        return "auto"
    if dtype == MIXED:
        return MIXED
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise LlmriError(f"{what} {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return _DTYPES[dtype]



def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """The dtype the weights load in: float32 for ``auto`` and ``bf16-mixed`` (which compute in
    bfloat16 per use, see :func:`computing`), else the dtype named."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = check_dtype(dtype)
    return torch.float32 if name in ("auto", MIXED) else getattr(torch, name)


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports bf16,
    or a CPU with AMX-BF16 or AVX512-BF16 (read once from ``/proc/cpuinfo``, no benchmark).

    >>> native_bf16(torch.device("cpu"))                            # doctest: +SKIP
    True
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return False


def _use_key(model, use: str) -> str:
    return f"scan-{'decoder' if model.adapter.causal else 'encoder'}" if use == "scan" else use


def compute_dtype(model, use: str) -> torch.dtype | None:
    """The autocast dtype ``model`` computes ``use`` in (``"scan"``, ``"generate"``, ...), or
    None when it runs in its weights' own dtype. ``bf16-mixed`` always autocasts; ``auto``
    autocasts where :data:`AUTO_BF16` says bf16 holds and the hardware has native bfloat16."""
    import torch

    if model.precision == MIXED or (model.precision == "auto" and model.dtype == torch.float32
                                    and AUTO_BF16.get(_use_key(model, use)) and native_bf16(model.device)):
        return torch.bfloat16
    return None


def precision_used(model, use: str) -> str:
    """The name of the precision ``use`` runs in, as outputs record it: ``bf16-mixed``,
    ``float32``, ``bfloat16`` or ``float16``."""
    return MIXED if compute_dtype(model, use) is not None else str(model.dtype).replace("torch.", "")


@contextlib.contextmanager
def computing(model, use: str):
    """Run ``model``'s forward passes for ``use`` in its precision: under ``torch.autocast`` when
    :func:`compute_dtype` says bf16-mixed, as they are otherwise. The one place llmri switches
    precision; every heavy path (capture, generation, steering, patching, SAE evaluation,
    attribution, the local LM) runs its forwards inside it.

    >>> with computing(model, "generate"):                          # doctest: +SKIP
    ...     out = model.module.generate(**inputs)
    """
    dt = compute_dtype(model, use)
    if dt is None:
        yield
        return
    import torch

    with torch.autocast(model.device.type, dtype=dt), _float32_unembedding(model.module):
        yield


@contextlib.contextmanager
def _float32_unembedding(module):
    """bf16-mixed computes the unembedding (``lm_head``) in float32. Out of a bfloat16 product the
    logits keep 8 bits of mantissa (steps of 0.06-0.125 for logits of 10-20): greedy near-ties
    become exact ties and log-probability differences blur. Measured on SmolLM2
    (``benchmarks/bf16_decoder.py``, the ``mixed+f32-head`` side): greedy outputs identical to
    float32's rise from 7 to 12 of 16 and patching's Spearman from 0.946 to 0.957, for about a
    fifth of the model's products (49152 x 576 of 135M weights) left in float32. The module's own
    forward is wrapped for the block and restored on exit."""
    import torch

    get = getattr(module, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear):
        yield
        return
    plain = head.__dict__.get("forward")        # an instance-level forward (an outer block's) is kept

    def forward(x):
        with torch.autocast(x.device.type, enabled=False):
            return head.__class__.forward(head, x.float()) if plain is None else plain(x.float())

    head.forward = forward
    try:
        yield
    finally:
        if plain is None:
            del head.forward
        else:
            head.forward = plain
