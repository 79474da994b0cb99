"""Elastic, fault-tolerant PyTorch training compiled from a recipe."""

__version__ = "0.1.0"
