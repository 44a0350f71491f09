"""Reading and preparing day files: discovery and validation (days), gating, normalization, windows."""
