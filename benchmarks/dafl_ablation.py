"""DAFL settings, one at a time, on MNIST: LeNet-5 teacher → LeNet-5-half student (Chen et al. 2019), one seed.

The generator's trajectory does not depend on the student (G's loss reads the teacher only), so with one seed
the runs that change only student-side settings (learning rate, temperature, shifts, repeats) see the same
generator batches: paired comparisons. Test and validation accuracy every ``--every`` steps; the summary line
gives the step with the best validation accuracy.

    python benchmarks/dafl_ablation.py --name NAME [--lr-g 0.2] [--g-schedule cosine] [--jitter 2] ...

The teacher (10 epochs of Adam on the 54 000-image training split) is trained once per seed and kept in
``--teacher-dir``. Students here are trained by a plain loop (Adam, KL at T on the generated batch, as the
authors' code); the pipeline and benchmarks/schemes.py run the same DAFLBatches through the Trainer.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tinykd.data import load_dataset
from tinykd.distill.schemes.datafree import DAFLBatches, Generator
from tinykd.inference import predict_logits
from tinykd.models import create_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def accuracy(model: torch.nn.Module, split) -> float:
    model.eval()
    return float((predict_logits(model, split.x).argmax(1) == split.y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--base", type=int, default=32, help="generator width")
    ap.add_argument("--bn-eps", type=float, default=0.8, help="epsilon of the generator's hidden BatchNorms")
    ap.add_argument("--lr-g", type=float, default=0.2)
    ap.add_argument("--g-schedule", choices=["constant", "cosine"], default="cosine")
    ap.add_argument("--lr-s", type=float, default=2e-3)
    ap.add_argument("--s-schedule", choices=["constant", "cosine"], default="cosine")
    ap.add_argument("--s-repeat", type=int, default=1, help="student steps per generated batch")
    ap.add_argument("--jitter", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--info-entropy", type=float, default=5 / math.log(10))
    ap.add_argument("--activation", type=float, default=0.1)
    ap.add_argument("--adversarial", type=float, default=0.0, help="weight of DFAD's disagreement term in G's loss")
    ap.add_argument("--feature", default=None, help="teacher module of the activation loss (default: fc2's input)")
    ap.add_argument("--data", default=str(SHARED / "mnist"))
    ap.add_argument("--teacher-dir", default=str(Path(__file__).with_name("results") / ".dafl_teachers"))
    ap.add_argument("--out", default=None, help="JSON of the curve (default: results/dafl_ablation/NAME.json)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("idx", path=a.data, seed=0)
    shape = tuple(data.spec.shape)
    torch.manual_seed(a.seed)
    teacher = create_model("lenet5", num_classes=10, in_shape=shape)
    tpath = Path(a.teacher_dir) / f"lenet5_seed{a.seed}.safetensors"
    if tpath.is_file():
        teacher.load_state_dict(load_file(tpath))
    else:
        opt = torch.optim.Adam(teacher.parameters(), 2e-3)
        for _ in range(10):
            teacher.train()
            perm = torch.randperm(len(data.train))
            for i in range(0, len(perm), 128):
                idx = perm[i:i + 128]
                loss = F.cross_entropy(teacher(data.train.x[idx]), data.train.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        tpath.parent.mkdir(parents=True, exist_ok=True)
        save_file(teacher.state_dict(), tpath)
    teacher.eval()
    print(f"teacher test accuracy {accuracy(teacher, data.test):.4f}", flush=True)

    torch.manual_seed(a.seed)
    student = create_model("lenet5_half", num_classes=10, in_shape=shape)
    source = DAFLBatches(teacher, shape, steps_per_epoch=a.steps, batch_size=a.batch, lr=a.lr_g,
                         info_entropy=a.info_entropy, activation=a.activation, feature_path=a.feature,
                         generator=Generator(shape, 100, a.base, bn_eps=a.bn_eps), lr_schedule=a.g_schedule,
                         total_steps=a.steps, jitter=a.jitter, adversarial=a.adversarial)
    source.bind(student)
    opt_s = torch.optim.Adam(student.parameters(), a.lr_s)
    curve, best, t0 = [], (0.0, 0.0, 0), time.time()
    for step in range(a.steps):
        if a.s_schedule == "cosine":
            for group in opt_s.param_groups:
                group["lr"] = a.lr_s * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        batch = source.next_batch(1, step)
        with torch.no_grad():
            target = F.softmax(teacher(batch.x) / a.temperature, 1)
        student.train()
        for _ in range(a.s_repeat):
            loss = F.kl_div(F.log_softmax(student(batch.x) / a.temperature, 1), target,
                            reduction="batchmean") * a.temperature ** 2
            opt_s.zero_grad()
            loss.backward()
            opt_s.step()
        if (step + 1) % a.every == 0:
            val, test = accuracy(student, data.val), accuracy(student, data.test)
            with torch.no_grad():
                classes = torch.bincount(teacher(source.sample(1000)).argmax(1), minlength=10).tolist()
            best = max(best, (val, test, step + 1))
            curve.append({"step": step + 1, "val": val, "test": test, "kd": float(loss.detach()), **source.parts,
                          "classes": classes})
            print(f"{a.name} step {step + 1} val {val:.4f} test {test:.4f} kd {float(loss):.3f} "
                  f"one_hot {source.parts['one_hot']:.3f} info_entropy {source.parts['info_entropy']:.3f} "
                  f"activation {source.parts['activation']:.3f} classes {classes} {time.time() - t0:.0f}s", flush=True)
    print(f"{a.name}: best val {best[0]:.4f} at step {best[2]} (test {best[1]:.4f}); last test {curve[-1]['test']:.4f}")
    out = Path(a.out) if a.out else Path(__file__).with_name("results") / "dafl_ablation" / f"{a.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "best": best, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
