"""Microcontroller board profiles and the check that a model fits one (flash for the model, SRAM for the arena).

Flash must hold the model file plus the inference runtime's code; SRAM must hold the peak live activations
(``tinykd.measure.memory.peak_activation_memory``) plus the runtime's own RAM. 1 KB = 1024 bytes, as in the
vendors' datasheets.

Runtime allowance (TensorFlow Lite Micro), an assumption the caller can override:

- flash, ``TFLM_FLASH_BYTES`` = 64 KB. The TFLM README states the core runtime "fits in 16 KB on an Arm
  Cortex M3"; each registered kernel adds code (conv, depthwise conv, fully connected, pooling, softmax,
  reshape, quantize with CMSIS-NN: a few KB each, 20-50 KB for a typical CNN resolver), so 64 KB covers the
  interpreter, an op resolver for these models, and the flatbuffer schema helpers.
- SRAM, ``TFLM_SRAM_BYTES`` = 16 KB. Besides activations the arena holds persistent interpreter data:
  tensor structs, quantization parameters, node/registration tables (TFLM's RecordingMicroAllocator log
  for its keyword benchmark model shows 3.4 KB of tensor structs and 1.7 KB of quantization data, before
  node tables), plus kernel scratch buffers
  (CMSIS-NN im2col), 16-byte alignment padding and the interpreter's stack.

The rest of the firmware (sensor drivers, buffers, an RTOS, a BLE stack) needs memory too: pass larger
allowances when you know them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ..errors import TinyKDError, unknown_name

KB = 1024
MB = 1024 * KB

TFLM_FLASH_BYTES = 64 * KB
TFLM_SRAM_BYTES = 16 * KB


@dataclass(frozen=True)
class Board:
    """A microcontroller target: memory sizes usable by a model, clock and core.

    ``sram_bytes`` is the largest block a tensor arena can use (one contiguous region), which can be less
    than the chip's total SRAM; ``notes`` says where each figure comes from. ``energy`` overrides the
    per-operation constants of ``tinykd.measure.energy`` (keys ``mac_pj``, ``weight_pj_per_byte``,
    ``activation_pj_per_byte``).
    """

    name: str
    flash_bytes: int
    sram_bytes: int
    clock_mhz: float
    core: str
    energy: Mapping[str, float] | None = None
    notes: str = field(default="", compare=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["energy"] = dict(self.energy) if self.energy else None
        return d


BOARDS: dict[str, Board] = {b.name: b for b in [
    Board("nano33ble", 1 * MB, 256 * KB, 64, "Cortex-M4F",
          notes="Arduino Nano 33 BLE Sense, nRF52840: 1 MB flash, 256 KB SRAM"),
    Board("stm32f746", 1 * MB, 320 * KB, 216, "Cortex-M7",
          notes="STM32F746: 1 MB flash; 320 KB SRAM = DTCM 64 + SRAM1 240 + SRAM2 16, one contiguous range"),
    Board("stm32h743", 2 * MB, 512 * KB, 480, "Cortex-M7",
          notes="STM32H743: 2 MB flash; 1 MB SRAM in total but split across buses (DTCM 128, AXI 512, "
                "SRAM1-3 288, SRAM4 64 KB); the arena must be contiguous, so the 512 KB AXI SRAM is usable"),
    Board("esp32", 4 * MB, 320 * KB, 240, "Xtensa LX6",
          notes="ESP32 (WROOM-32 module): 4 MB external flash; 520 KB SRAM of which 192 KB is instruction "
                "RAM, leaving 328 KB data RAM, less the IDF's own use: 320 KB; the largest free heap block "
                "is often smaller"),
    Board("pico", 2 * MB, 264 * KB, 133, "Cortex-M0+",
          notes="Raspberry Pi Pico, RP2040: 2 MB external QSPI flash; 264 KB SRAM (4 x 64 KB striped + "
                "2 x 4 KB, contiguous addresses); no FPU, so deploy int8"),
]}
_ALIASES = {"arduino_nano_33_ble_sense": "nano33ble", "nano33": "nano33ble", "rp2040": "pico",
            "raspberry_pi_pico": "pico"}
_FIELDS = {"name", "flash_bytes", "sram_bytes", "flash_kb", "sram_kb", "clock_mhz", "core", "energy", "notes"}


def get_board(board: str | Mapping | Board) -> Board:
    """A Board by name (see ``BOARDS``), from a dict of its fields, or passed through."""
    if isinstance(board, Board):
        return board
    if isinstance(board, Mapping):
        return board_from_dict(board)
    key = str(board).lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in BOARDS:
        raise unknown_name("board", str(board), BOARDS)
    return BOARDS[key]


def board_from_dict(d: Mapping) -> Board:
    """A user-defined board, e.g. ``{"name": "myboard", "flash_kb": 512, "sram_kb": 128}``.

    Sizes are given as ``flash_bytes``/``sram_bytes`` or ``flash_kb``/``sram_kb``; ``clock_mhz``, ``core``,
    ``energy`` and ``notes`` are optional.
    """
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise TinyKDError(f"unknown board field(s) {', '.join(unknown)}", f"valid fields: {', '.join(sorted(_FIELDS))}")
    if "name" not in d:
        raise TinyKDError("a board needs a 'name'", "add name: myboard")
    sizes = {}
    for what in ("flash", "sram"):
        if f"{what}_bytes" in d:
            sizes[what] = d[f"{what}_bytes"]
        elif f"{what}_kb" in d:
            sizes[what] = d[f"{what}_kb"] * KB if _is_number(d[f"{what}_kb"]) else d[f"{what}_kb"]
        else:
            raise TinyKDError(f"board '{d['name']}' has no {what} size", f"add {what}_kb: <size in KB>")
        if not _is_number(sizes[what]) or sizes[what] <= 0:
            raise TinyKDError(f"board '{d['name']}': {what} size must be a positive number, got {sizes[what]!r}",
                              f"set {what}_kb to the usable {what} in KB, e.g. 256")
    energy = d.get("energy")
    if energy is not None and not isinstance(energy, Mapping):
        raise TinyKDError(f"board '{d['name']}': energy must be a mapping of constants, got {energy!r}",
                          "e.g. energy: {mac_pj: 0.3, weight_pj_per_byte: 12.5}")
    return Board(name=str(d["name"]), flash_bytes=int(sizes["flash"]), sram_bytes=int(sizes["sram"]),
                 clock_mhz=float(d.get("clock_mhz", 0.0)), core=str(d.get("core", "unknown")),
                 energy=dict(energy) if energy else None, notes=str(d.get("notes", "user-defined")))


@dataclass(frozen=True)
class Fit:
    """Whether a model fits a board; margins are free bytes left (negative: bytes over)."""

    board: str
    model_bytes: int
    peak_sram_bytes: int
    flash_needed: int
    sram_needed: int
    flash_available: int
    sram_available: int
    runtime_flash_bytes: int
    runtime_sram_bytes: int

    @property
    def flash_margin(self) -> int:
        return self.flash_available - self.flash_needed

    @property
    def sram_margin(self) -> int:
        return self.sram_available - self.sram_needed

    @property
    def fits_flash(self) -> bool:
        return self.flash_margin >= 0

    @property
    def fits_sram(self) -> bool:
        return self.sram_margin >= 0

    @property
    def fits(self) -> bool:
        return self.fits_flash and self.fits_sram

    def summary(self) -> str:
        """One line, e.g. ``nano33ble: fits (flash 120.0/1024.0 KB, SRAM 40.0/256.0 KB)``."""
        verdict = "fits" if self.fits else "does not fit"
        return (f"{self.board}: {verdict} (flash {_kb(self.flash_needed)}/{_kb(self.flash_available)} KB, "
                f"SRAM {_kb(self.sram_needed)}/{_kb(self.sram_available)} KB)")

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(flash_margin=self.flash_margin, sram_margin=self.sram_margin, fits_flash=self.fits_flash,
                 fits_sram=self.fits_sram, fits=self.fits)
        return d


def fit_check(model_bytes: int, peak_sram_bytes: int, board: str | Mapping | Board, *,
              runtime_flash_bytes: int = TFLM_FLASH_BYTES, runtime_sram_bytes: int = TFLM_SRAM_BYTES) -> Fit:
    """Does a model file of ``model_bytes`` with ``peak_sram_bytes`` of live activations fit ``board``?

    Flash needed = model + runtime code; SRAM needed = peak activations + runtime RAM (module docstring).
    """
    b = get_board(board)
    for what, v in (("model_bytes", model_bytes), ("peak_sram_bytes", peak_sram_bytes),
                    ("runtime_flash_bytes", runtime_flash_bytes), ("runtime_sram_bytes", runtime_sram_bytes)):
        if v < 0:
            raise TinyKDError(f"{what} must be ≥ 0, got {v}", "pass a byte count")
    return Fit(board=b.name, model_bytes=int(model_bytes), peak_sram_bytes=int(peak_sram_bytes),
               flash_needed=int(model_bytes + runtime_flash_bytes),
               sram_needed=int(peak_sram_bytes + runtime_sram_bytes),
               flash_available=b.flash_bytes, sram_available=b.sram_bytes,
               runtime_flash_bytes=int(runtime_flash_bytes), runtime_sram_bytes=int(runtime_sram_bytes))


def require_fit(model_bytes: int, peak_sram_bytes: int, board: str | Mapping | Board, *,
                runtime_flash_bytes: int = TFLM_FLASH_BYTES, runtime_sram_bytes: int = TFLM_SRAM_BYTES) -> Fit:
    """``fit_check`` that raises a TinyKDError with the numbers and a fix when the model does not fit."""
    fit = fit_check(model_bytes, peak_sram_bytes, board, runtime_flash_bytes=runtime_flash_bytes,
                    runtime_sram_bytes=runtime_sram_bytes)
    if fit.fits:
        return fit
    problems, fixes = [], []
    if not fit.fits_flash:
        problems.append(f"flash needs {_kb(fit.flash_needed)} KB (model {_kb(model_bytes)} + runtime "
                        f"{_kb(runtime_flash_bytes)}) of {_kb(fit.flash_available)} KB, "
                        f"over by {_kb(-fit.flash_margin)} KB")
        fixes.append("shrink the weights: int8 quantization (4x smaller than fp32), pruning, low-rank "
                     "factorization, or a smaller student (fewer widths / hidden units)")
    if not fit.fits_sram:
        problems.append(f"SRAM needs {_kb(fit.sram_needed)} KB (peak activations {_kb(peak_sram_bytes)} + "
                        f"runtime {_kb(runtime_sram_bytes)}) of {_kb(fit.sram_available)} KB, "
                        f"over by {_kb(-fit.sram_margin)} KB")
        fixes.append("shrink the activations: int8 activations, a smaller input resolution, fewer channels in "
                     "the early layers, or an earlier downsampling stride")
    others = [b.name for b in BOARDS.values() if b.name != fit.board and fit_check(
        model_bytes, peak_sram_bytes, b, runtime_flash_bytes=runtime_flash_bytes,
        runtime_sram_bytes=runtime_sram_bytes).fits]
    if others:
        fixes.append(f"or target a board it fits: {', '.join(others)}")
    raise TinyKDError(f"the model does not fit {fit.board}: " + "; ".join(problems), "; ".join(fixes))


def _kb(n: int) -> str:
    return f"{n / KB:.1f}"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
