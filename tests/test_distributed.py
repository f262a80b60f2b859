"""Many processes (torchrun, gloo on the CPU): two ranks take the steps one process takes on the same global batch,
an error on one rank stops both with its message, and ``tinykd run --nproc 2`` completes a run that rank 0 writes."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from tinykd import distributed as dist
from tinykd.io import load_tensors

WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch
    from torch import nn

    from tinykd import distributed as dist
    from tinykd.data.spec import Split
    from tinykd.distill.losses import build_loss
    from tinykd.distill.trainer import Trainer
    from tinykd.errors import TrainingError
    from tinykd.recipe import TrainConfig

    out, batch_size, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    dist.init()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(250, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    train, val = Split(x[:200], y[:200]), Split(x[200:], y[200:])

    def mlp(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    teacher = mlp(1).eval()
    trainer = Trainer(mlp(0), [(0.5, build_loss("ce", {})), (0.5, build_loss("kd", {"temperature": 2.0}))],
                      TrainConfig(epochs=2, batch_size=batch_size, optimizer="sgd", lr=0.1, device="cpu"),
                      out_dir=out, label="s", teacher=teacher, progress=False)
    if mode == "stop":  # every rank stops after epoch 1, as a crash would, its checkpoint written
        log = trainer._log

        def stop(row):
            log(row)
            if row["epoch"] == 1:
                raise SystemExit(3)
        trainer._log = stop
    if mode == "fail":
        loss = trainer._loss

        def failing(student, teacher, batch, epoch, step):
            if dist.rank() == 1 and step == 2:
                raise TrainingError("a loss that fails on one rank", "nothing to fix: the test asks for it")
            return loss(student, teacher, batch, epoch, step)
        trainer._loss = failing
    try:
        trainer.fit(train, val)
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        same = all(torch.equal(flat, other) for other in dist.all_gather(flat))
        if dist.is_main():
            (out / "ranks_equal.txt").write_text(str(same))
    finally:
        dist.shutdown()
''')


def _torchrun(tmp_path, nproc, *args):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
           *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_one_process_is_the_identity():
    assert not dist.active() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    assert dist.from_main(lambda a: a + 1, 1) == 2
    assert dist.all_gather({"a": 1}) == [{"a": 1}]
    assert dist.sum_over_ranks({"a": 1.5}) == {"a": 1.5}
    module = torch.nn.Linear(2, 2)
    assert dist.wrap(module, torch.device("cpu")) is module
    with pytest.raises(ValueError), dist.together():
        raise ValueError("raised as is")


@pytest.mark.parametrize("batch_size", [32, 33])  # 33: slices of 17 and 16, and a last global batch of 2
def test_two_ranks_take_the_steps_of_one_process(tmp_path, batch_size):
    one = _torchrun(tmp_path, 1, tmp_path / "one", batch_size, "ok")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(tmp_path, 2, tmp_path / "two", batch_size, "ok")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_tensors(tmp_path / "one" / "last.safetensors"), load_tensors(tmp_path / "two" / "last.safetensors")
    weights = [k for k in a if k.startswith("model.")]
    assert weights
    for k in weights:  # the same gradient: the mean over the global batch, summed in another order
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert (tmp_path / "two" / "ranks_equal.txt").read_text() == "True"  # every rank holds the same parameters
    assert "rank1.rng.torch" in b and "rank1.rng.torch" not in a  # each rank's RNG state, for an exact resume
    ha = json.loads((tmp_path / "one" / "last.json").read_text())["history"]
    hb = json.loads((tmp_path / "two" / "last.json").read_text())["history"]
    for ra, rb in zip(ha, hb, strict=True):  # the epoch's means over every rank's samples
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_accuracy"] == rb["val_accuracy"]


def test_a_run_interrupted_under_torchrun_resumes_exactly(tmp_path):
    full = _torchrun(tmp_path, 2, tmp_path / "full", 32, "ok")
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = _torchrun(tmp_path, 2, tmp_path / "part", 32, "stop")
    assert stopped.returncode != 0 and json.loads((tmp_path / "part" / "last.json").read_text())["epoch"] == 1
    resumed = _torchrun(tmp_path, 2, tmp_path / "part", 32, "ok")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_tensors(tmp_path / "full" / "last.safetensors"), load_tensors(tmp_path / "part" / "last.safetensors")
    for k in (k for k in a if k.startswith("model.")):
        assert torch.equal(a[k], b[k]), k  # bit-exact: the same processes, each resumed with its own RNG state


def test_an_error_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    res = _torchrun(tmp_path, 2, tmp_path / "run", 32, "fail")
    assert res.returncode != 0
    assert "a loss that fails on one rank" in res.stderr
    assert "rank 1 of 2 failed" in res.stderr  # what rank 0 raised: the failing rank's error, naming it
    assert not (tmp_path / "run" / "last.safetensors").exists()  # failed in epoch 1: no checkpoint was written


def test_tinykd_run_nproc_2_completes_a_run_written_once(tmp_path):
    recipe = {
        "name": "ddp",
        "output_dir": str(tmp_path / "runs"),
        "data": {"name": "digits"},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [32]}, "train": {"epochs": 2, "batch_size": 64}},
        "student": {"model": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 2, "batch_size": 64}},
        "distill": {"losses": [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]},
        "quantize": {"calibration_samples": 64},
        "measure": {"warmup": 1, "repeats": 5, "batch_sizes": [1]},
        "report": {"enabled": False},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    tinykd = os.path.join(os.path.dirname(sys.executable), "tinykd")
    res = subprocess.run([tinykd, "run", str(path), "--nproc", "2"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # one folder, claimed before the start
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["variants"]  # rank 0 exported and measured
    assert res.stdout.count("run directory:") == 1  # rank 0 alone printed the summary
    assert "on 2 processes" in res.stdout
