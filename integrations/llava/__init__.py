"""LLaVA-1.5 with an Alpha-CLIP vision tower (transformers-native and the original LLaVA code)."""
