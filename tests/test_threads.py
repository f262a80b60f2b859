"""Thread settings: the cores a process may use and the training default derived from them."""
import os

import pytest
import torch

from tinykd.recipe import TrainConfig
from tinykd.threads import AUTO_MAX, available_cores, resolve_threads


def test_available_cores_follow_the_affinity_mask_and_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert available_cores() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert available_cores() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # never more than the mask allows
    assert available_cores() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert available_cores() == 6


def test_auto_is_the_available_cores_up_to_a_cap(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert resolve_threads("auto") == AUTO_MAX
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert resolve_threads("auto") == 1
    assert resolve_threads(3) == 3


@pytest.mark.parametrize("bad", [0, -1, 5000, "many"])
def test_train_threads_must_be_auto_or_a_positive_count(bad):
    with pytest.raises(ValueError):
        TrainConfig(threads=bad)


def test_the_trainer_runs_on_the_configured_threads_and_restores_them(tmp_path):
    from rich.console import Console

    from tinykd.data.spec import Split
    from tinykd.distill.losses import build_loss
    from tinykd.distill.trainer import Trainer

    seen = []
    model = torch.nn.Linear(4, 2)
    original = model.forward

    def forward(x):
        seen.append(torch.get_num_threads())
        return original(x)
    model.forward = forward
    before = torch.get_num_threads()
    x = torch.randn(32, 4)
    Trainer(model, [(1.0, build_loss("ce", {}))], TrainConfig(epochs=1, batch_size=16, threads=1), out_dir=tmp_path,
            label="m", console=Console(quiet=True)).fit(Split(x, (x[:, 0] > 0).long()), Split(x[:8], (x[:8, 0] > 0).long()))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
