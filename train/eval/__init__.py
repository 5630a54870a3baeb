"""Evaluation: ImageNet-S, referring expressions, region search."""
