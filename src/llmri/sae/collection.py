"""SAE collections: the one way to find and load several SAEs (a folder of SAE folders, a list or
a dict of SAEs), used by circuits, the report and the command line.

An SAE folder is one holding ``cfg.json`` (SAELens' or sparsify's layout, see :mod:`llmri.sae.model`);
a collection folder holds SAE folders one level down, e.g. what ``llmri sae train --sites`` writes;
a circuit-tracer transcoder set (``config.yaml`` and one file per layer, :mod:`llmri.sae.transcoders`)
is a collection of transcoders.
A *shipped set* is a collection that comes with llmri, named after its model
(``load_saes("default-decoder")``): its ``index.json`` lists every file with its SHA-256, checked
before anything loads.

>>> saes = load_saes("runs/saes")                        # doctest: +SKIP
>>> [s.site for s in saes]
['resid.2', 'resid.5']
>>> load_sae("default-decoder/resid.16").site            # doctest: +SKIP
'resid.16'
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..disk import read_json_object
from ..errors import LlmriError
from .model import CFG_FILE, SAE
from .transcoders import is_transcoder_set, load_transcoders

# Feature sets that ship with llmri: model name -> folder (SAE folders + index.json).
SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "data" / "features"
INDEX_FILE = "index.json"


def shipped_sets() -> list[str]:
    """The model names a feature set ships for."""
    if not SHIPPED_ROOT.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_ROOT.iterdir() if (p / INDEX_FILE).is_file())


def file_hashes(folder) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but the index, by path relative to it (``/``-separated)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != INDEX_FILE}


def shipped_folder(name: str, what: str = "saes") -> Path:
    """The folder of the feature set shipped for model ``name``, after checking every file against
    the hashes of its ``index.json``; a one-line error when none ships or a file differs."""
    folder = SHIPPED_ROOT / name
    if name not in shipped_sets():
        have = ", ".join(shipped_sets()) or "none"
        raise LlmriError(f"{what}: no feature set ships for {name!r} and no such folder exists "
                         f"(shipped sets: {have}); give an SAE folder or a folder of them")
    index = read_json_object(folder / INDEX_FILE)
    want, got = index.get("files", {}), file_hashes(folder)
    bad = sorted(f for f in set(want) | set(got) if want.get(f) != got.get(f))
    if bad:
        raise LlmriError(f"{what}: the shipped feature set {name!r} is damaged ({folder / bad[0]} "
                         f"{'is missing' if bad[0] not in got else 'differs from its hash in ' + INDEX_FILE}); "
                         "reinstall llmri")
    return folder


def is_sae_folder(path) -> bool:
    """True when ``path`` is a folder holding an SAE's ``cfg.json``."""
    return (Path(path) / CFG_FILE).is_file()


def sae_folders(root) -> list[Path]:
    """The SAE folders directly under ``root``, sorted by name; none when ``root`` is absent. Hidden
    folders (a write in progress or killed, :func:`llmri.store.whole_folder`) are never among them."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_sae_folder(p))


def sae_folder(spec, what: str = "sae") -> Path:
    """The folder of one SAE: ``spec`` itself when it exists, else ``MODEL/SITE`` of a shipped set
    (``default-decoder/resid.16``), checked against the set's hashes. One-line errors name ``what``."""
    path = Path(spec)
    if not path.exists() and len(path.parts) == 1 and str(spec) in shipped_sets():
        sites = ", ".join(p.name for p in sae_folders(shipped_folder(str(spec), what)))
        raise LlmriError(f"{what} {spec}: a feature set, not one SAE; name one as {spec}/SITE (sites: {sites})")
    if path.exists() or str(spec).startswith(".") or len(path.parts) != 2 or path.parts[0] not in shipped_sets():
        return path                                   # SAE.load says what is wrong with a missing or bad folder
    name, site = path.parts
    folder = shipped_folder(name, what) / site
    if not is_sae_folder(folder):
        have = ", ".join(p.name for p in sae_folders(folder.parent))
        raise LlmriError(f"{what} {spec}: the feature set shipped for {name!r} has no SAE at {site!r} (it has {have})")
    return folder


def sae_folders_of(specs, what: str = "--sae") -> list[Path]:
    """SAE folders for options that take several: each an SAE folder, a shipped ``MODEL/SITE``, or
    a shipped set's name (all its SAEs); a one-line error for one that is none of these."""
    out = []
    for spec in specs:
        if not Path(spec).exists() and str(spec) in shipped_sets():
            out += sae_folders(shipped_folder(str(spec), what))
            continue
        folder = sae_folder(spec, what)
        if not is_sae_folder(folder):
            raise LlmriError(f"{what} {spec}: not an SAE folder (no {CFG_FILE})")
        out.append(folder)
    return out


def is_shipped(folder) -> bool:
    """True when ``folder`` lies inside a feature set shipped with llmri (read-only: its files are hashed)."""
    return SHIPPED_ROOT.resolve() in Path(folder).resolve().parents


def shipped_metrics(folder) -> dict | None:
    """The held-out figures a shipped SAE's set records for it (``set.json``), or None."""
    folder = Path(folder)
    card = folder.parent / "set.json"
    if not card.is_file():
        return None
    return read_json_object(card).get("evaluation", {}).get("sites", {}).get(folder.name, {}).get("held_out")


def load_sae(spec, what: str = "sae") -> SAE:
    """One SAE from its folder or a shipped ``MODEL/SITE`` (:func:`sae_folder`)."""
    return SAE.load(sae_folder(spec, what))


def load_saes(saes, what: str = "saes") -> list[SAE]:
    """SAEs from an SAE, a list or dict of them, an SAE folder, or a folder of SAE folders, in the
    order given (folders by name). ``what`` names the argument in errors."""
    if isinstance(saes, (str, Path)):
        if not str(saes).strip():
            raise LlmriError(f"{what}: {str(saes)!r} names no folder; give an SAE folder or a folder of them")
        root = Path(saes)
        if not root.exists() and len(root.parts) == 1 and not str(saes).startswith("."):
            root = shipped_folder(str(saes), what)        # a bare name: the set shipped for that model
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


def saes_by_site(saes) -> dict[str, SAE]:
    """``{site: SAE}`` of a collection (anything :func:`load_saes` takes): a shipped set by model
    name, a folder of SAE folders, one SAE folder, or SAEs. The public ``llmri.load_saes``.

    >>> saes = llmri.load_saes("default-decoder")               # doctest: +SKIP
    >>> sorted(saes)[:2]
    ['resid.12', 'resid.16']
    """
    out: dict[str, SAE] = {}
    for sae in load_saes(saes):
        if sae.site in out:
            raise LlmriError(f"saes: two SAEs read {sae.site}; give one per site")
        out[sae.site] = sae
    return out
