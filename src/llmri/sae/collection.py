"""SAE collections: the one way to find and load several SAEs (a folder of SAE folders, a list or
a dict of SAEs), used by circuits, the report and the command line.

An SAE folder is one holding ``cfg.json`` (SAELens' or sparsify's layout, see :mod:`llmri.sae.model`);
a collection folder holds SAE folders one level down, e.g. what ``llmri sae train --sites`` writes;
a circuit-tracer transcoder set (``config.yaml`` and one file per layer, :mod:`llmri.sae.transcoders`)
is a collection of transcoders.

>>> saes = load_saes("runs/saes")                        # doctest: +SKIP
>>> [s.site for s in saes]
['resid.2', 'resid.5']
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LlmriError
from .model import CFG_FILE, SAE
from .transcoders import is_transcoder_set, load_transcoders


def is_sae_folder(path) -> bool:
    """True when ``path`` is a folder holding an SAE's ``cfg.json``."""
    return (Path(path) / CFG_FILE).is_file()


def sae_folders(root) -> list[Path]:
    """The SAE folders directly under ``root``, sorted by name; none when ``root`` is absent."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_sae_folder(p))


def load_saes(saes, what: str = "saes") -> list[SAE]:
    """SAEs from an SAE, a list or dict of them, an SAE folder, or a folder of SAE folders, in the
    order given (folders by name). ``what`` names the argument in errors."""
    if isinstance(saes, (str, Path)):
        root = Path(saes)
        if is_transcoder_set(root):  # circuit-tracer's config.yaml + layer_L.safetensors
            return load_transcoders(root)
        if not root.is_dir():
            raise LlmriError(f"{what}: {root}: no such folder")
        if is_sae_folder(root):
            return [SAE.load(root)]
        subs = sae_folders(root)
        if not subs:
            raise LlmriError(f"{what}: {root}: no SAE folders in it (folders with {CFG_FILE})")
        return [SAE.load(p) for p in subs]
    if isinstance(saes, SAE):
        return [saes]
    if isinstance(saes, dict):
        saes = list(saes.values())
    elif not isinstance(saes, (list, tuple)):
        raise LlmriError(f"{what}: expected an SAE, a list or dict of SAEs, or a folder, got {type(saes).__name__}")
    for i, sae in enumerate(saes):
        if not isinstance(sae, SAE):
            raise LlmriError(f"{what}[{i}]: expected an llmri.SAE (SAE.load(folder)), got {type(sae).__name__}")
    return list(saes)
