"""Flax NNX modules: encoders per modality, the matching (DAM / IM) head, the multimodal model."""

from pmrl_jax.models.encoders import AudioEncoder, MLPEncoder, TextTransformerEncoder, ViTEncoder
from pmrl_jax.models.matching import MatchingHead, matching_loss, sample_hard_negatives
from pmrl_jax.models.multimodal import ENCODER_KINDS, MultimodalModel, Temperature, build_encoder

__all__ = [
    "AudioEncoder", "ENCODER_KINDS", "MLPEncoder", "MatchingHead", "MultimodalModel", "Temperature",
    "TextTransformerEncoder", "ViTEncoder", "build_encoder", "matching_loss", "sample_hard_negatives",
]
