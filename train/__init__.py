"""alphaclip_train: RGBA region-text data, the Alpha-CLIP training loop, and data preparation."""
