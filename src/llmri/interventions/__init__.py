"""Interventions: ablate, patch and steer sites through the one hook mechanism in ``sites``.

Every intervention is a context manager; inside it any call of ``model.module`` runs modified,
and every hook is removed on exit, even after an exception. One module per job:
:mod:`~llmri.interventions.ablate` (removing components), :mod:`~llmri.interventions.measures`
(one number from a pass of the corpus), :mod:`~llmri.interventions.lesion` (lesion maps),
:mod:`~llmri.interventions.patch` (activation patching), :mod:`~llmri.interventions.steer`
(steering). The functions ``ablate``, ``patch`` and ``steer`` keep their names here; their
modules are reached as ``llmri.interventions.ablate`` etc. only through ``import ... from``.

>>> with llmri.ablate(model, {"mlp.3": [12, 40]}):                       # doctest: +SKIP
...     out = model.module(**inputs)
"""

from __future__ import annotations

import sys
import types

from . import lesion as _lesion
from .ablate import MODES, ablate, head_dim
from .lesion import lesion_jobs, lesion_map, lesion_table, lesion_values
from .measures import MEASURES, make_measure
from .patch import PatchResult, default_metric, patch, patching, run_with_cache
from .steer import STEER_KINDS, STEER_MODES, steer, steering_vector

__all__ = ["MEASURES", "MODES", "PatchResult", "REPLAY_BYTES", "STEER_KINDS", "STEER_MODES", "ablate",
           "default_metric", "head_dim", "lesion_jobs", "lesion_map", "lesion_table", "lesion_values",
           "make_measure", "patch", "patching", "run_with_cache", "steer", "steering_vector"]


class _Interventions(types.ModuleType):
    """``llmri.interventions.REPLAY_BYTES`` reads and sets the budget where lesion maps read it
    (:mod:`llmri.interventions.lesion`), so ``llmri.interventions.REPLAY_BYTES = 0`` still
    switches the replay off."""

    @property
    def REPLAY_BYTES(self) -> int:  # noqa: N802 (a module constant)
        return _lesion.REPLAY_BYTES

    @REPLAY_BYTES.setter
    def REPLAY_BYTES(self, value: int) -> None:  # noqa: N802
        _lesion.REPLAY_BYTES = value


sys.modules[__name__].__class__ = _Interventions
