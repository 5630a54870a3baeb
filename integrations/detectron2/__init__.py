"""Detectron2 / Detic integration (imports detectron2)."""
