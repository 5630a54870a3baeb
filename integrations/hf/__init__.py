"""Hugging Face transformers integration (AlphaCLIP* classes, processors, Auto* registration)."""
