"""Compression: quantization (and, later, pruning and low-rank)."""
