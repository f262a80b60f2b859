"""Energy estimates: a per-operation model for one inference, and CodeCarbon for training runs.

Inference model (an estimate, not a measurement)::

    energy = MACs x (multiply + add energy at the data type)
           + weight bytes read x memory energy per byte
           + (activation bytes read + written) x memory energy per byte

Constants are from M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
Fig. 1.1.9 (45 nm, 0.9 V):

=====================  ======================================================
integer add            8-bit 0.03 pJ, 32-bit 0.1 pJ
integer multiply       8-bit 0.2 pJ, 32-bit 3.1 pJ
float add              16-bit 0.4 pJ, 32-bit 0.9 pJ
float multiply         16-bit 1.1 pJ, 32-bit 3.7 pJ
cache read, 64-bit     8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ
DRAM read, 64-bit      1.3-2.6 nJ
=====================  ======================================================

The memory figures are per 64-bit access, so per byte they are 1.25 / 2.5 / 12.5 pJ and 162.5-325 pJ
(Han et al., NeurIPS 2015, quote the same table per 32-bit word: SRAM 5 pJ, DRAM 640 pJ).

Assumptions: an int8 MAC is an 8-bit multiply into a 32-bit accumulator (how TFLM / CMSIS-NN and every
int8 kernel accumulate), so 0.2 + 0.1 pJ; fp16 and fp32 MACs use the add and multiply of that width.
Weights and activations are read from a memory of the size of an MCU's (hundreds of KB of SRAM / flash),
for which the nearest published point is the 1 MB array: 12.5 pJ per byte. Each weight byte is read once
per inference and each activation is written once and read once per consumer (perfect on-chip reuse);
real kernels re-read, so this is a lower bound. A board profile's ``energy`` mapping overrides any constant.
The 45 nm figures overstate a modern MCU's compute energy and omit leakage, clocking and instruction
overhead; use the numbers to compare models, not to predict battery life.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TinyKDError, unknown_name

SOURCE = "Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm, 0.9 V)"

# pJ per operation
ADD_PJ = {"int8": 0.03, "int32": 0.1, "fp16": 0.4, "fp32": 0.9}
MULT_PJ = {"int8": 0.2, "int32": 3.1, "fp16": 1.1, "fp32": 3.7}
# pJ per byte: the published per-64-bit-access energy / 8
MEMORY_PJ_PER_BYTE = {"sram_8kb": 10 / 8, "sram_32kb": 20 / 8, "sram_1mb": 100 / 8,
                      "dram_low": 1300 / 8, "dram_high": 2600 / 8}
# the adder that accumulates each MAC's product, per data type
ACCUMULATOR = {"int8": "int32", "int32": "int32", "fp16": "fp16", "fp32": "fp32"}
DEFAULT_MEMORY = "sram_1mb"
OVERRIDES = ("mac_pj", "weight_pj_per_byte", "activation_pj_per_byte")


def mac_energy_pj(dtype: str) -> float:
    """pJ of one multiply-accumulate at ``dtype`` (int8 accumulates in 32 bits)."""
    if dtype not in MULT_PJ:
        raise unknown_name("data type", dtype, MULT_PJ)
    return MULT_PJ[dtype] + ADD_PJ[ACCUMULATOR[dtype]]


def inference_energy(macs: int, *, weight_bytes: int, activation_read_bytes: int, activation_write_bytes: int,
                     dtype: str = "int8", memory: str = DEFAULT_MEMORY, board=None,
                     overrides: Mapping[str, float] | None = None) -> dict:
    """Estimated energy of one inference with a breakdown, in pJ and µJ.

    ``memory`` is the level weights and activations are read from (a key of ``MEMORY_PJ_PER_BYTE``);
    ``board`` (a ``tinykd.deploy.mcu.Board``) and then ``overrides`` replace any of ``mac_pj``,
    ``weight_pj_per_byte``, ``activation_pj_per_byte``.
    """
    if memory not in MEMORY_PJ_PER_BYTE:
        raise unknown_name("memory level", memory, MEMORY_PJ_PER_BYTE)
    for what, v in (("macs", macs), ("weight_bytes", weight_bytes), ("activation_read_bytes", activation_read_bytes),
                    ("activation_write_bytes", activation_write_bytes)):
        if v < 0:
            raise TinyKDError(f"{what} must be ≥ 0, got {v}", "pass counts from count_macs / activation_traffic")
    constants = {"mac_pj": mac_energy_pj(dtype), "weight_pj_per_byte": MEMORY_PJ_PER_BYTE[memory],
                 "activation_pj_per_byte": MEMORY_PJ_PER_BYTE[memory]}
    source = SOURCE
    for given, where in ((getattr(board, "energy", None), f"board {getattr(board, 'name', '')}"),
                         (overrides, "overrides")):
        if given:
            unknown = sorted(set(given) - set(OVERRIDES))
            if unknown:
                raise TinyKDError(f"unknown energy constant(s) {', '.join(unknown)} in {where}",
                                  f"valid constants: {', '.join(OVERRIDES)}")
            constants.update({k: float(v) for k, v in given.items()})
            source += f"; {', '.join(sorted(given))} from {where}"
    compute = macs * constants["mac_pj"]
    weights = weight_bytes * constants["weight_pj_per_byte"]
    activations = (activation_read_bytes + activation_write_bytes) * constants["activation_pj_per_byte"]
    total = compute + weights + activations
    return {"label": "estimate", "source": source, "dtype": dtype, "memory": memory,
            "board": getattr(board, "name", None), "constants": constants, "macs": int(macs),
            "weight_bytes": int(weight_bytes), "activation_read_bytes": int(activation_read_bytes),
            "activation_write_bytes": int(activation_write_bytes), "compute_pj": compute, "weight_pj": weights,
            "activation_pj": activations, "total_pj": total, "total_uj": total * 1e-6}


def onnx_inference_energy(onnx_path: str | Path, macs: int, *, dtype: str = "int8", memory: str = DEFAULT_MEMORY,
                          board=None, overrides: Mapping[str, float] | None = None) -> dict:
    """``inference_energy`` with byte counts read from an exported ONNX graph (batch 1).

    Float tensors (activations and weights) are counted at the width of ``dtype`` (1 byte for int8, so an
    fp32 graph is costed as its int8 deployment); tensors already stored as integers keep their size.
    """
    import onnx

    from .memory import activation_traffic

    if dtype not in MULT_PJ:
        raise unknown_name("data type", dtype, MULT_PJ)
    width = {"int8": 1, "fp16": 2, "fp32": 4, "int32": 4}[dtype]
    traffic = activation_traffic(onnx_path, activation_bytes=width)
    proto = onnx.load(str(onnx_path))
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    weight_bytes = sum(int(np.prod(i.dims, dtype=np.int64)) * (
        width if i.data_type in floats else onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize)
        for i in proto.graph.initializer)
    return inference_energy(macs, weight_bytes=weight_bytes, activation_read_bytes=traffic["activation_read_bytes"],
                            activation_write_bytes=traffic["activation_write_bytes"], dtype=dtype, memory=memory,
                            board=board, overrides=overrides)


@dataclass
class TrainingEmissions:
    """Filled in when a ``track_training`` block exits: energy in kWh, emissions in kg CO2-eq."""

    label: str
    out_dir: Path
    energy_kwh: float = float("nan")
    emissions_kg: float = float("nan")
    duration_s: float = float("nan")
    method: str = ""
    estimate: bool = True

    def as_dict(self) -> dict:
        return {"label": self.label, "energy_kwh": self.energy_kwh, "emissions_kg_co2eq": self.emissions_kg,
                "duration_s": self.duration_s, "method": self.method,
                "estimate": self.estimate, "source": "CodeCarbon (offline)", "out_dir": str(self.out_dir)}


@contextlib.contextmanager
def track_training(label: str, out_dir: str | Path, country_iso_code: str = "USA", *,
                   tracking_mode: str = "process", measure_power_secs: float = 15) -> Iterator[TrainingEmissions]:
    """Track the energy and CO2 of the block with CodeCarbon's OfflineEmissionsTracker (no network).

    Writes ``emissions.csv`` into ``out_dir``. Where the CPU exposes no power counters (no Intel RAPL, as in
    VMs and containers) CodeCarbon estimates power from the CPU's TDP and load, so the numbers are labelled
    estimates; ``method`` records what CodeCarbon used. ``tracking_mode="process"`` attributes only this
    process's CPU share on a shared machine.
    """
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        raise TinyKDError("training emissions tracking needs CodeCarbon, which is not installed",
                          "pip install 'tinykd[energy]'") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = TrainingEmissions(label=label, out_dir=out_dir)
    with _quiet_codecarbon():  # for the whole block: its scheduler logs every measurement at INFO
        tracker = OfflineEmissionsTracker(project_name=label, output_dir=str(out_dir),
                                          country_iso_code=country_iso_code, tracking_mode=tracking_mode,
                                          measure_power_secs=measure_power_secs, log_level="error",
                                          allow_multiple_runs=True)
        tracker.start()
        try:
            yield result
        finally:
            emissions = tracker.stop()
            data = getattr(tracker, "final_emissions_data", None)
            result.emissions_kg = float(emissions or 0.0)
            if data is not None:
                result.energy_kwh = float(data.energy_consumed)
                result.duration_s = float(data.duration)
            cpu = [h for h in getattr(tracker, "_hardware", []) if type(h).__name__ == "CPU"]
            mode = getattr(cpu[0], "_mode", "") if cpu else ""
            result.method = mode or "unknown"
            result.estimate = mode not in ("intel_rapl", "windows_emi", "intel_power_gadget")


@contextlib.contextmanager
def _quiet_codecarbon():
    """CodeCarbon logs its set-up and every measurement at INFO, whatever ``log_level`` says; keep that out of
    the console (a filter on its logger and handlers drops records below ERROR while the block runs)."""
    logger = logging.getLogger("codecarbon")
    level = logger.level

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR
    logger.setLevel(logging.ERROR)
    logger.addFilter(drop)
    handlers = list(logger.handlers)
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        for h in handlers:
            h.removeFilter(drop)
        logger.setLevel(level)
