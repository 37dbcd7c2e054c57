"""What several commands share: the click option groups (scan, Ray, report) and the parsers of
comma-separated values, all raising :class:`llmri.LlmriError` with the flag's name.

Nothing heavy is imported here: ``llmri --help`` loads this module.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LlmriError
from ..sites import POOLS


def _ints(value: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise LlmriError(f"{flag} {value!r}: expected comma-separated integers, e.g. 0,3,-1") from None


def _floats(value: str, flag: str) -> list[float]:
    try:
        out = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise LlmriError(f"{flag} {value!r}: expected comma-separated numbers, e.g. -8,-4,0,4,8") from None
    if not out:
        raise LlmriError(f"{flag}: give at least one number")
    return out


def _specs(value: str) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def _apply(options, f):
    for opt in reversed(options):
        f = opt(f)
    return f


def _check_dtype(ctx, param, value):
    from ..precision import check_dtype

    return check_dtype(value, "--dtype")


_DTYPE_OPTION = click.option(
    "--dtype", default="auto", show_default=True, callback=_check_dtype,
    help="auto (bfloat16 matrix products with float32 weights where the README's fidelity table says "
         "they hold and the hardware has native bf16, float32 elsewhere), float32 (exact), bf16-mixed, "
         "bfloat16 (bf16 weights), float16.")


def _dtype_option(f):
    return _DTYPE_OPTION(f)


def _scan_option_list(sites: str, token_sites: str):
    return [
    click.option("--model", "model_name", default="default", show_default=True,
                 help="Hugging Face id, local folder or .gguf file; 'default' is the embedded all-MiniLM-L6-v2, "
                      "'default-decoder' the embedded SmolLM2-135M-Instruct."),
    click.option("--pool", type=click.Choice(["auto", *POOLS]),
                 default="auto", show_default=True,
                 help="How token vectors become one vector per document; auto is mean for encoders and "
                      "mean-nosink (leaving out the attention-sink first token) for decoders."),
    click.option("--sites", default=sites, show_default=True,
                 help="Comma-separated sites: resid, mlp, attn_out, mlp_out, attn (per-head attention "
                      "statistics), or one layer: mlp.3."),
    click.option("--token-sites", default=token_sites, show_default=True,
                 help="Sites to keep for every token, e.g. resid.6."),
    click.option("--layers", default=None, help="Comma-separated layers (negative from the end)."),
    click.option("--batch-tokens", type=int, default=8192, show_default=True,
                 help="Padded tokens per batch."),
    click.option("--max-length", type=int, default=None, help="Truncate documents (default: model limit)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
    _DTYPE_OPTION,
    click.option("--download", is_flag=True, help="Allow fetching the model from the Hugging Face hub."),
    click.option("--overwrite", is_flag=True, help="Replace a different scan already in --out."),
    ]


def _scan_options(f=None, sites="resid", token_sites=""):
    def wrap(f):
        return _apply(_scan_option_list(sites, token_sites), f)
    return wrap(f) if f is not None else wrap


_RAY_OPTIONS = [
    click.option("--ray", "ray_mode", type=click.Choice(["auto", "local"]), default=None,
                 help="Run on Ray (pip install 'llmri[ray]'): auto joins the cluster running on this machine "
                      "(ray start --head), local starts one here. Without it Ray is never imported."),
    click.option("--workers", type=int, default=None, help="Ray workers, each holding one copy of the model [2]."),
    click.option("--gpus-per-worker", type=float, default=None, help="GPUs each Ray worker needs [0]."),
]


def _ray_options(f):
    return _apply(_RAY_OPTIONS, f)


def _check_ray(ray_mode, workers, gpus_per_worker):
    """The :class:`llmri.Engine` of the Ray options, checked before Ray or a model starts; None without --ray."""
    import importlib.util

    if ray_mode is None:
        if workers is not None or gpus_per_worker is not None:
            raise LlmriError("--workers and --gpus-per-worker need --ray auto or --ray local")
        return None
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise LlmriError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    workers = 2 if workers is None else workers
    resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
    from ..engine import Engine

    engine = Engine("ray", workers=workers, resources=resources, address=ray_mode)
    if importlib.util.find_spec("ray") is None:
        raise LlmriError("--ray: Ray is not installed; pip install 'llmri[ray]'")
    return engine


def _model_loader(model_name, device, download, dtype="auto"):
    """What each Ray worker calls to load its copy of the model (a picklable partial)."""
    from functools import partial

    from ..model import load_model

    return partial(load_model, model_name, device=device, dtype=dtype, download=download)


_REPORT_OPTIONS = [
    click.option("--reducer", type=click.Choice(["pca", "svd", "umap"]), default="pca", show_default=True,
                 help="How each layer is mapped to a low-dimensional space."),
    click.option("--components", type=int, default=2, show_default=True,
                 help="Map dimensions: 2 gives grid regions, more gives the Spearman (N-d) NRAG."),
    click.option("--grid", type=int, default=10, show_default=True, help="Grid cells per axis."),
    click.option("--categories", default=None, help="Comma-separated categories to show (default: all)."),
    click.option("--permutations", type=int, default=200, show_default=True,
                 help="Label permutations for the category comparison p-values."),
    click.option("--preset", type=click.Choice(["llm-mri"]), default=None,
                 help="Regions and metrics as LLM-MRI 0.2.1 builds them (standardised layers, pandas.cut "
                      "bins, sample estimators); scan with --pool first to match it fully."),
    click.option("--seed", type=int, default=0, show_default=True),
]


def _report_options(f):
    return _apply(_REPORT_OPTIONS, f)


def _check_out(out, advice: str) -> Path:
    """``out`` as a Path, refused when it exists and is not a folder (told before a model loads)."""
    from ..store import check_out_folder

    return check_out_folder(out, advice)


def _check_explanations(explanations, hint: str) -> None:
    """Each --explanations folder holds an explain run (``explanations.csv``)."""
    for e in explanations:
        if not (Path(e) / "explanations.csv").is_file():
            raise LlmriError(f"--explanations {e}: no explanations.csv there; run llmri explain{hint} with --out {e}")


def _default_out(folder, suffix: str):
    """``FOLDER-suffix`` beside ``folder``: where a command writes when --out is not given."""
    return Path(folder).resolve().parent / f"{Path(folder).resolve().name}-{suffix}"
