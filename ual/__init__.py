"""Uncertainty-Aware Learning (UAL, ACL 2024): per-sample label smoothing on TRL's SFTTrainer."""

__version__ = "0.1.0"
