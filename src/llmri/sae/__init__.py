"""Sparse-autoencoder features: the SAE object and its formats, training, evaluation, analysis, clamping."""

from .model import ARCHS, SAE
from .train import train_sae

__all__ = ["ARCHS", "SAE", "train_sae"]
