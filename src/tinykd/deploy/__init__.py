"""Exporters to edge runtimes."""
