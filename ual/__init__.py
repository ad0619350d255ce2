"""Uncertainty-Aware Learning (UAL, ACL 2024): per-sample label smoothing on TRL's SFTTrainer."""

from .console import quiet_library_noise

__version__ = "0.1.0"
quiet_library_noise()
