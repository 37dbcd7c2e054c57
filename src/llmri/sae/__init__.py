"""Sparse-autoencoder features: the SAE object and its formats, training, evaluation, analysis, clamping."""

from .model import ARCHS, SAE
from .evaluate import evaluate_sae
from .train import train_sae

__all__ = ["ARCHS", "SAE", "evaluate_sae", "train_sae"]
