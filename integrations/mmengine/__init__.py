"""The alpha vision tower in mmengine's MODELS registry."""
