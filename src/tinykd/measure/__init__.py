"""Measurements: accuracy and agreement, parameters, MACs, bytes, latency."""
from .accuracy import agreement, classification_metrics, confusion_matrix, macro_f1
from .cost import count_macs, count_params, file_bytes, weight_bytes
from .latency import interleaved_latency, ort_latency, ort_timers, time_calls, torch_latency, torch_timers

__all__ = ["agreement", "classification_metrics", "confusion_matrix", "macro_f1", "count_macs", "count_params",
           "file_bytes", "weight_bytes", "interleaved_latency", "ort_latency", "ort_timers", "time_calls", "torch_latency",
           "torch_timers"]
