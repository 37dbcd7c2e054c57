"""Sparse-autoencoder features: the SAE object and its formats, training, evaluation, analysis, clamping."""

from .clamp import Clamp, clamp
from .collection import load_sae
from .collection import saes_by_site as load_saes
from .evaluate import evaluate_sae
from .features import (FeatureActivations, FeatureCard, feature_activations, feature_card, feature_map,
                       feature_neighbors)
from .model import ARCHS, SAE
from .train import train_sae

__all__ = ["ARCHS", "SAE", "Clamp", "FeatureActivations", "FeatureCard", "clamp", "evaluate_sae",
           "feature_activations", "feature_card", "feature_map", "feature_neighbors", "load_sae", "load_saes", "train_sae"]
