"""Data preparation: RGBA region-text shards from grounding and classification data."""
