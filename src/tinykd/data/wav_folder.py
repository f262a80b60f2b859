"""The ``wav_folder`` reader: FSDD-style ``{label}_{speaker}_{index}.wav`` clips turned into log-mel features."""
from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np

from tinykd.data.audio import LogMelFrontEnd, log_mel_batch
from tinykd.data.labels import encode_labels
from tinykd.data.registry import RawData, register_dataset
from tinykd.data.spec import InputSpec
from tinykd.errors import DataError

NAME_PATTERN = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>.+)_(?P<index>\d+)$")
OFFICIAL_TEST_INDICES = range(5)  # FSDD README: recordings 0-4 of each speaker and digit are the test set
SPLITS = ("official", "random")


def read_wav(file: Path) -> tuple[np.ndarray, int]:
    """Samples of a 16-bit PCM wav as float32 in [-1, 1) (channels averaged) and its sample rate."""
    try:
        with wave.open(str(file), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as err:
        raise DataError(f"unreadable wav file ({err or type(err).__name__})",
                        "replace the file with a 16-bit PCM wav, or delete it", where=str(file)) from None
    if width != 2:
        raise DataError(f"{8 * width}-bit samples; only 16-bit PCM is supported",
                        "convert it, e.g. `sox in.wav -b 16 out.wav`", where=str(file))
    samples = np.frombuffer(frames, dtype="<i2")
    samples = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
    return samples.mean(axis=1, dtype=np.float32) / 32768, rate


def resample(wave_: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave_`` resampled from ``rate`` to ``target`` Hz by linear interpolation (unchanged when equal)."""
    if rate == target:
        return wave_
    times = np.arange(round(len(wave_) * target / rate)) * (rate / target)
    return np.interp(times, np.arange(len(wave_)), wave_).astype(np.float32)


def _parse_names(files: list[Path]) -> list[dict[str, str]]:
    """Label, speaker and index of each file name; a name that does not fit the pattern is an error."""
    parts = []
    for file in files:
        match = NAME_PATTERN.match(file.stem)
        if match is None:
            raise DataError("file name does not follow {label}_{speaker}_{index}.wav (e.g. 7_jackson_32.wav)",
                            "rename the file or move it out of the folder", where=str(file))
        parts.append(match.groupdict())
    return parts


@register_dataset("wav_folder", needs_path=True,
                  description="a folder of {label}_{speaker}_{index}.wav clips (e.g. FSDD) as log-mel features")
def wav_folder(path: Path, *, split: str = "official", sample_rate: int = 8000, clip_seconds: float = 1.0,
               win_ms: float = 32.0, hop_ms: float = 16.0, n_mels: int = 40) -> RawData:
    """Read every wav in the folder, resample to ``sample_rate`` and compute log-mel features (see audio.py).

    ``split="official"`` uses FSDD's rule (index 0-4 is test, 5+ train); ``"random"`` leaves the
    test split to the common stratified splitter.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' for wav_folder", f"use one of {', '.join(SPLITS)}")
    front_end = LogMelFrontEnd(sample_rate, clip_seconds, win_ms, hop_ms, n_mels)  # validates the numbers
    if not path.is_dir():
        raise DataError("expected a folder of .wav files", "point 'path' at the recordings folder",
                        where=str(path))
    files = sorted(path.glob("*.wav"))
    if not files:
        raise DataError("no .wav files in this folder", "point 'path' at the folder that holds the recordings",
                        where=str(path))
    parts = _parse_names(files)
    waves, resampled = [], 0
    for file in files:
        samples, rate = read_wav(file)
        waves.append(resample(samples, rate, sample_rate))
        resampled += rate != sample_rate
    features = log_mel_batch(waves, front_end)[:, None]
    (labels,), names = encode_labels([p["label"] for p in parts])
    spec = InputSpec(features.shape[1:], len(names), "audio", names)
    info = {"files": [str(path)], "num_files": len(files), "resampled_files": resampled,
            "speakers": sorted({p["speaker"] for p in parts}), "split_rule": split,
            "front_end": front_end.to_dict()}
    if split == "random":
        return RawData(features, labels, spec, info=info, sources={"train": f"the .wav files of {path.name}/"})
    test = np.array([int(p["index"]) in OFFICIAL_TEST_INDICES for p in parts])
    sources = {"train": f"recordings 5 and up of each speaker and label in {path.name}/ (split: official)",
               "test": f"recordings 0-4 of each speaker and label in {path.name}/ (split: official)"}
    return RawData(features[~test], labels[~test], spec, x_test=features[test], y_test=labels[test], info=info,
                   sources=sources)

