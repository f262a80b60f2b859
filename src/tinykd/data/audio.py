"""Log-mel front end for audio classification, in plain numpy/torch (no torchaudio).

For clips sampled at ``sample_rate`` Hz, with the parameters of ``LogMelFrontEnd``:

1. Fit each clip to ``clip_seconds`` (``clip_samples = round(clip_seconds * sample_rate)``): a longer
   clip keeps its centre part, a shorter one is padded with zeros at the end.
2. Short-time Fourier transform (``torch.stft``, ``center=False``): a periodic Hann window of
   ``win_ms`` ms (``win_length = round(win_ms * sample_rate / 1000)`` samples) every ``hop_ms`` ms
   (``hop_length`` likewise); ``n_fft`` is ``win_length`` rounded up to a power of two (the window is
   zero-padded on both sides to ``n_fft``). There is no edge padding, so
   ``frames = 1 + (clip_samples - n_fft) // hop_length``.
3. Power spectrum ``|STFT|^2`` (``n_fft // 2 + 1`` bins, unscaled).
4. ``n_mels`` triangular filters of peak 1 on the HTK mel scale (``mel = 2595 * log10(1 + hz / 700)``):
   ``n_mels + 2`` edges equally spaced in mel from ``f_min`` (20 Hz) to ``f_max`` (``sample_rate / 2``);
   filter ``i`` rises from edge ``i`` to 1 at edge ``i + 1`` (its centre) and falls to 0 at edge ``i + 2``.
5. ``log(mel + 1e-6)``.

Output: ``(n_mels, frames)`` per clip. At 8 kHz with the defaults: win_length = n_fft = 256, hop 128,
129 FFT bins, 61 frames, so FSDD clips become (40, 61).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tinykd.errors import DataError

LOG_EPS = 1e-6
_EXAMPLES = {"sample_rate": 8000, "clip_seconds": 1.0, "win_ms": 32, "hop_ms": 16, "n_mels": 40}
_CHUNK = 512  # clips per torch.stft call, to bound memory on large folders


@dataclass(frozen=True)
class LogMelFrontEnd:
    """Front-end parameters; derived sizes (samples, n_fft, frames) are properties."""

    sample_rate: int
    clip_seconds: float = 1.0
    win_ms: float = 32.0
    hop_ms: float = 16.0
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float | None = None  # None: sample_rate / 2

    def __post_init__(self) -> None:
        for name, example in _EXAMPLES.items():
            value = getattr(self, name)
            whole = name in ("sample_rate", "n_mels")
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
                kind = "integer" if whole else "number"
                raise DataError(f"front-end option {name} must be a positive {kind}, got {value!r}",
                                f"set {name} to e.g. {example}")
        if not 0 <= self.f_min < self.top_hz <= self.sample_rate / 2:
            raise DataError(f"mel range {self.f_min}..{self.top_hz} Hz must lie in 0..{self.sample_rate / 2} Hz",
                            "lower f_min or f_max")
        if self.clip_samples < self.n_fft:
            raise DataError(f"clip_seconds={self.clip_seconds} gives {self.clip_samples} samples, fewer than "
                            f"one {self.n_fft}-point FFT frame", "raise clip_seconds or lower win_ms")

    @property
    def top_hz(self) -> float:
        """Upper edge of the mel filterbank in Hz."""
        return float(self.f_max) if self.f_max is not None else self.sample_rate / 2

    @property
    def clip_samples(self) -> int:
        """Samples per clip after padding/cropping."""
        return round(self.clip_seconds * self.sample_rate)

    @property
    def win_length(self) -> int:
        """Hann window length in samples."""
        return max(1, round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        """Samples between frame starts."""
        return max(1, round(self.hop_ms * self.sample_rate / 1000))

    @property
    def n_fft(self) -> int:
        """FFT size: the window length rounded up to a power of two."""
        return 1 << (self.win_length - 1).bit_length()

    @property
    def frames(self) -> int:
        """Frames per clip."""
        return 1 + (self.clip_samples - self.n_fft) // self.hop_length

    def to_dict(self) -> dict:
        """All parameters plus derived sizes, for provenance in ``bundle.info``."""
        derived = ("top_hz", "clip_samples", "win_length", "hop_length", "n_fft", "frames")
        return {**asdict(self), **{k: getattr(self, k) for k in derived}, "window": "hann (periodic)",
                "mel_scale": "htk", "log": f"log(mel + {LOG_EPS})"}


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel value of a frequency in Hz."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz of an HTK mel value."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular filters of peak 1, shape (n_mels, n_fft // 2 + 1), with edges equally spaced in HTK mel."""
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def fit_clips(waves: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Clips as one float32 (N, length) array: centre-cropped when longer, zero-padded at the end when shorter."""
    out = np.zeros((len(waves), length), dtype=np.float32)
    for row, wave in zip(out, waves):
        start = max(0, (len(wave) - length) // 2)
        piece = wave[start:start + length]
        row[:len(piece)] = piece
    return out


def log_mel_batch(waves: Sequence[np.ndarray], front_end: LogMelFrontEnd) -> np.ndarray:
    """Log-mel features (N, n_mels, frames) of 1-D clips, computed in chunks with ``torch.stft``."""
    fe = front_end
    clips = torch.from_numpy(fit_clips(waves, fe.clip_samples))
    window = torch.hann_window(fe.win_length, periodic=True)
    bank = torch.from_numpy(mel_filterbank(fe.n_mels, fe.n_fft, fe.sample_rate, fe.f_min, fe.top_hz))
    out = torch.empty(len(waves), fe.n_mels, fe.frames)
    for start in range(0, len(waves), _CHUNK):
        spec = torch.stft(clips[start:start + _CHUNK], fe.n_fft, fe.hop_length, fe.win_length, window,
                          center=False, return_complex=True)
        out[start:start + _CHUNK] = torch.log(bank @ spec.abs().square() + LOG_EPS)
    return out.numpy()


def log_mel(wave: np.ndarray, sample_rate: int, **front_end: float) -> np.ndarray:
    """Log-mel features (n_mels, frames) of one 1-D clip; ``front_end`` overrides LogMelFrontEnd's defaults."""
    clip = np.asarray(wave, dtype=np.float32).reshape(-1)
    return log_mel_batch([clip], LogMelFrontEnd(sample_rate, **front_end))[0]
