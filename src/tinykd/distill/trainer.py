"""The one training loop: every model tinykd trains (teacher, scratch student, distilled student) runs here.

Per-term loss logging, validation each epoch, best and last checkpoints (safetensors + JSON of
optimizer, scheduler and RNG state), exact resume, deterministic shuffling, and a NaN guard.
Every scheme drives this loop: the teacher may be a TeacherSource (a cache, several teachers) and the
batches may come from a BatchSource (data-free distillation); see sources.py.

Under torchrun (several processes, ``tinykd.distributed``) the DistillModule is wrapped in DistributedDataParallel
once; every rank cuts the same global batch of ``batch_size`` samples and trains on its slice of it (samples rank,
rank + N, ...), so N processes take the steps one process takes. Rank 0 alone writes checkpoints; an error on one
rank stops every rank with its message.
"""
from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from .. import distributed as dist
from .. import tracking
from ..data.spec import Split
from ..errors import CheckpointError, TrainingError
from ..inference import module_device
from ..io import load_tensors, load_weights, read_json, save_tensors, write_json
from ..measure.latency import torch_threads
from ..threads import resolve_threads
from ..recipe import MixupConfig, TrainConfig
from ..tasks import Classification, Task
from ..types import Batch, Outputs
from .callbacks import DEAD_PROBE, Callback, apply_max_norm, default_callbacks  # noqa: F401 (re-exported)
from .capture import FeatureCapture, forward_with_features
from .losses.base import LossTerm, SetupContext
from .module import DistillModule
from .sources import BatchSource, TeacherSource, as_teacher_source


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    out_dir: Path
    best_score: float = float("nan")  # the task's selection metric at the best epoch (val accuracy, val loss)


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``train.device`` setting: "auto" is the current CUDA GPU when torch sees one, else the
    CPU; "cuda" and "cuda:N" must name a GPU torch sees. Under torchrun "auto" and "cuda" are ``cuda:LOCAL_RANK``,
    one GPU per process."""
    given = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise TrainingError(f"train.device is {name!r} but torch sees no CUDA GPU (torch {torch.__version__})",
                            "set train.device to 'auto' or 'cpu', or install a CUDA build of torch on a GPU machine")
    count = torch.cuda.device_count()
    if dist.active() and device.index is None:
        device = torch.device("cuda", dist.local_rank())
        if device.index >= count:
            raise TrainingError(f"train.device is {given!r}: process {device.index} of this machine takes "
                                f"cuda:{device.index}, but torch sees {count} CUDA GPU(s)",
                                f"start at most {count} processes per machine (torchrun --nproc_per_node {count})")
    elif dist.active() and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise TrainingError(f"train.device is {given!r}: every process of this machine would train on that one GPU",
                            "set train.device to 'auto' or 'cuda': each process then takes cuda:LOCAL_RANK")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise TrainingError(f"train.device is {name!r} but torch sees {count} CUDA GPU(s): cuda:0..cuda:{count - 1}",
                            "set train.device to one of them, or to 'cuda'")
    return torch.device("cuda", index)


def describe_device(device: torch.device) -> str:
    """'cpu', or a GPU with its name: 'cuda:0 (NVIDIA H200)'."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of an optimizer's state as ``{prefix}.{param index}.{name}`` for safetensors."""
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        out.update({f"{prefix}.{idx}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


def optimizer_json(opt: torch.optim.Optimizer) -> dict:
    """The rest of an optimizer's state (param groups, non-tensor values) for the JSON checkpoint."""
    state = opt.state_dict()
    scalars = {str(i): {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)} for i, s in state["state"].items()}
    return {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, saved: dict) -> None:
    """Restore what ``optimizer_tensors`` and ``optimizer_json`` saved."""
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            idx, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in saved["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``s``: linear warm-up, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0
    return factor


def check_processes(terms: list[tuple[float, LossTerm]]) -> None:
    """A TrainingError, under several processes, for loss terms that keep state per training sample (a memory bank,
    last epoch's predictions): each rank would update only the rows of its own slices."""
    kept = [t.name for _, t in terms if getattr(t, "per_sample_state", False)]
    if kept and dist.active():
        raise TrainingError(f"loss term(s) {', '.join(sorted(set(kept)))} keep state per training sample, which "
                            f"{dist.world_size()} processes would each update only for their own slices",
                            "run this recipe in one process (without torchrun or --nproc)")


class Trainer:
    """Trains ``model`` on a weighted sum of loss terms, optionally with a frozen ``teacher``.

    ``teacher`` is a module run live on each batch, or any TeacherSource (a cache of its outputs, an ensemble).
    ``batches``, a BatchSource, replaces the train split as the maker of training batches (data-free).
    ``task`` (default: Classification) cuts batches from splits, adapts model outputs and scores validation;
    ``callbacks`` (default: ``default_callbacks(cfg)``) add shift, max-norm, the non-finite guard, the dead-unit probe.
    The student and the terms' helpers (regressors, embeddings, discriminators, online peers) are one
    ``DistillModule``, ``self.module``: every trainable parameter the optimizer sees.
    """

    def __init__(self, model: nn.Module, terms: list[tuple[float, LossTerm]], cfg: TrainConfig, *,
                 out_dir: Path, label: str, seed: int = 0, teacher: nn.Module | TeacherSource | None = None,
                 console: Console | None = None, progress: bool = True,
                 transfer: torch.Tensor | None = None, mixup: MixupConfig | None = None,
                 batches: BatchSource | None = None, task: Task | None = None,
                 callbacks: list[Callback] | None = None):
        self.model, self.terms, self.cfg = model, terms, cfg
        self.task = task or Classification()
        self.callbacks = default_callbacks(cfg) if callbacks is None else list(callbacks)
        self.val_size = 0
        self.transfer, self.mixup, self.batches = transfer, mixup, batches
        self.out_dir, self.label, self.seed = Path(out_dir), label, seed
        self.teacher = teacher
        self.teacher_source = as_teacher_source(teacher)
        self.console = console or Console(quiet=not progress)
        self.progress = progress
        needs_teacher = [t.name for _, t in terms if t.needs_teacher]
        if needs_teacher and teacher is None:
            raise TrainingError(f"loss terms {needs_teacher} need a teacher but none was given",
                                "pass a teacher, or use only terms that need none (e.g. ce)")
        if (transfer is not None or mixup is not None) and not needs_teacher:
            raise TrainingError("unlabelled transfer data or mixup needs a loss term that learns from the teacher",
                                "add a teacher-based term such as kd to distill.losses")
        if batches is not None and (transfer is not None or mixup is not None):
            raise TrainingError("a batch source (data-free distillation) makes every training batch itself, "
                                "so transfer data and mixup do not apply", "drop the transfer set and mixup")
        if batches is not None:
            batches.bind(model)
        self.module = DistillModule(model, [t for _, t in terms])
        self.helpers = self.module.helpers
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps_per_epoch = 0
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.history: list[dict] = []
        self.best = (0, -1.0)  # (epoch, val accuracy)
        self.best_score = -math.inf  # the task's selection metric, signed so that larger is better
        self.device = torch.device("cpu")
        self.wrapped: nn.Module | None = None  # while training: ``module``, in DDP under several processes

    # ----- checkpoints -------------------------------------------------------------------------
    def _rng_states(self) -> list[dict[str, torch.Tensor]]:
        """The RNG state of every rank (one in one process): a checkpoint keeps them all, so each rank resumes exactly
        (ranks whose slices differ in size draw different amounts of random numbers)."""
        state = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return dist.all_gather(state)

    def _tensors(self, rngs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"helpers.{k}": v for k, v in self.helpers.state_dict().items()})
        out.update(optimizer_tensors(self.optimizer, "optim"))
        if self.batches is not None:
            out.update({f"source.{k}": v for k, v in self.batches.state_dict().items()})
            for name, opt in self.batches.optimizers().items():
                out.update(optimizer_tensors(opt, f"source_optim.{name}"))
        out.update(rngs[0])
        for r, state in enumerate(rngs[1:], 1):
            out.update({f"rank{r}.{k}": v for k, v in state.items()})
        return out

    def _save(self, epoch: int, finished: bool, rngs: list[dict[str, torch.Tensor]]) -> None:
        save_tensors(self.out_dir / "last.safetensors", self._tensors(rngs))
        state = {
            "label": self.label, "epoch": epoch, "finished": finished, "best_epoch": self.best[0],
            "best_val_accuracy": self.best[1], "best_score": self.best_score, "optimizer": optimizer_json(self.optimizer),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng_python": list(random.getstate()[1]), "history": self.history,
        }
        if self.batches is not None:
            state["source_optimizers"] = {name: optimizer_json(opt) for name, opt in self.batches.optimizers().items()}
        write_json(self.out_dir / "last.json", state)

    def _save_best(self) -> None:
        save_tensors(self.out_dir / "best.safetensors", {k: v for k, v in self.model.state_dict().items()})

    def _restore(self, state: dict) -> int:
        path = self.out_dir / "last.safetensors"
        tensors = load_tensors(path)
        load_weights(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source=str(path))
        load_weights(self.helpers, {k[8:]: v for k, v in tensors.items() if k.startswith("helpers.")},
                     source=f"{path} (the loss terms' helpers)")
        if "rng.torch" not in tensors:
            raise self._bad_checkpoint(f"'{path}' holds no RNG state (rng.torch)")
        try:
            load_optimizer(self.optimizer, tensors, "optim", state["optimizer"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise self._bad_checkpoint(f"the optimizer state in '{path}' and last.json does not fit ({exc})") from None
        if self.batches is not None:
            self.batches.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("source.")})
            for name, opt in self.batches.optimizers().items():
                load_optimizer(opt, tensors, f"source_optim.{name}", state["source_optimizers"][name])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        own = f"rank{dist.rank()}."  # this rank's state; rank 0's when saved by fewer processes
        prefix = own if own + "rng.torch" in tensors else ""
        torch.set_rng_state(tensors[prefix + "rng.torch"])
        if self.device.type == "cuda" and prefix + "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors[prefix + "rng.cuda"], self.device)
        random.setstate((3, tuple(state["rng_python"]), None))
        self._restore_best(state)
        self._apply_changed_lr()
        return int(state["epoch"])

    def _apply_changed_lr(self) -> None:
        """A run resumed with a new ``train.lr`` (pipeline.RESUME_KEYS) continues its schedule from the new base rate;
        an unchanged one restores the saved rates untouched, so plain resume stays bit-exact."""
        sched = self.scheduler
        if sched is None or all(b == self.cfg.lr for b in sched.base_lrs):
            return
        sched.base_lrs = [self.cfg.lr] * len(sched.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, sched.lr_lambdas):
            group["initial_lr"] = self.cfg.lr
            group["lr"] = self.cfg.lr * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.console.print(f"[yellow]{self.label}: learning rate changed on resume to {self.cfg.lr:g}[/]")

    def _bad_checkpoint(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.label}: cannot resume: {what}",
                               f"delete the folder {self.out_dir} to train this stage afresh (other stages are kept)")

    def _saved_state(self, path: Path) -> dict:
        """last.json, checked to hold what resume reads."""
        state = read_json(path)
        if not isinstance(state, dict):
            raise self._bad_checkpoint(f"'{path}' holds a {type(state).__name__}, not a training state")
        need = ("epoch", "finished", "best_epoch", "best_val_accuracy", "history")
        need += () if state.get("finished") is True else ("optimizer", "scheduler", "rng_python")
        missing = [k for k in need if k not in state]
        if missing:
            raise self._bad_checkpoint(f"'{path}' lacks {', '.join(missing)}")
        if not isinstance(state["history"], list) or not isinstance(state["epoch"], int):
            raise self._bad_checkpoint(f"'{path}' has a malformed history or epoch")
        if not state["finished"] and not 0 <= state["epoch"] <= self.cfg.epochs:
            raise self._bad_checkpoint(f"'{path}' is at epoch {state['epoch']}, outside 0..{self.cfg.epochs}")
        return state

    def load_best(self) -> None:
        path = self.out_dir / "best.safetensors"
        load_weights(self.model, load_tensors(path), source=str(path))

    # ----- training ----------------------------------------------------------------------------
    def fit(self, train: Split | None, val: Split) -> TrainResult:
        """Train for the configured epochs (resuming from ``out_dir/last.*`` if present); loads the best weights.

        ``train`` may be None when a batch source makes the batches. Training runs on ``train.device``; the model,
        the teacher and the helpers are back on the model's original device when this returns (or raises)."""
        cfg = self.cfg
        if train is None:
            if self.batches is None:
                raise TrainingError(f"{self.label}: no training data",
                                    "pass a train split, or a batch source (batches=)")
            train = val.take(torch.arange(0))
        check_processes(self.terms)
        if not dist.is_main():
            self.console = Console(quiet=True)  # rank 0 prints the progress
        for cb in self.callbacks:
            cb.on_fit_start(self, train)
        if self.mixup is not None and train.mask is not None:
            raise TrainingError(f"{self.label}: mixup blends dense inputs, and these are token ids",
                                "remove distill.mixup for text data")
        if self.transfer is not None:
            # Transfer inputs follow the labelled ones; label -1 marks them as unlabelled, indices stay unique.
            extra = self.transfer if isinstance(self.transfer, Split) else Split(
                self.transfer, torch.full((len(self.transfer),), -1, dtype=train.y.dtype))
            train = train.cat(Split(extra.x, torch.full((len(extra),), -1, dtype=train.y.dtype), extra.mask))
        if self.teacher_source is not None:
            # A source may write what it prepares (a cache): rank 0 prepares first, the other ranks then read it.
            dist.from_main(self.teacher_source.prepare, train, self.console)
            with dist.together():
                if not dist.is_main():
                    self.teacher_source.prepare(train, self.console)
        self.device = resolve_device(cfg.device)
        home = module_device(self.model)
        if self.device.type == "cuda":
            self.console.print(f"[dim]{self.label}: training on {describe_device(self.device)}[/]")
        self._place(self.device)
        try:
            with torch_threads(resolve_threads(cfg.threads)):
                return self._fit(train, val)
        finally:
            self._place(home)  # the caller gets its models back where they were

    def _place(self, device: torch.device) -> None:
        """Move the model, the loss terms' helpers, the teacher and the batch source to ``device``."""
        self.model.to(device)
        self.helpers.to(device)
        if self.teacher_source is not None:
            self.teacher_source.to(device)
        if self.batches is not None:
            self.batches.to(device)

    def _fit(self, train: Split, val: Split) -> TrainResult:
        cfg = self.cfg
        self.val_size = len(val)  # every rank's, though rank 0 alone validates
        self._setup_terms(train)
        self.helpers.to(self.device)  # helpers built by the terms' setup
        self.optimizer = make_optimizer(list(self.module.parameters()), cfg)
        self.steps_per_epoch = (self.batches.steps_per_epoch if self.batches is not None
                                else math.ceil(len(train) / cfg.batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        start = 0
        state_path = self.out_dir / "last.json"
        if state_path.is_file():
            state = self._saved_state(state_path)
            if state.get("finished"):
                self._restore_best(state)
                self.load_best()
                self.console.print(f"[dim]{self.label}: already trained ({len(self.history)} epochs), reusing checkpoint[/]")
                return self._result()
            start = self._restore(state)
            self.console.print(f"[yellow]{self.label}: resuming after epoch {start}/{cfg.epochs}[/]")
        else:
            torch.manual_seed(self.seed)
            random.seed(self.seed)

        s_paths = sorted({p for _, t in self.terms for p in t.student_paths})
        t_paths = sorted({p for _, t in self.terms for p in t.teacher_paths})
        self.wrapped = dist.wrap(self.module, self.device)  # DDP under several processes, the module itself in one
        try:
            with ExitStack() as stack:
                s_run = stack.enter_context(FeatureCapture(self.model, s_paths, role="student"))
                t_run = stack.enter_context(self.teacher_source.open(t_paths)) if self.teacher_source else None
                for epoch in range(start + 1, cfg.epochs + 1):
                    row = self._epoch(epoch, train, s_run, t_run)
                    row.update(dist.from_main(self._validate, val))  # rank 0 validates, every rank gets the scores
                    self._end_epoch(epoch, train, row, len(val))
        finally:
            self.wrapped = None  # the DDP wrapper's gradient hooks go with it
        if not (self.out_dir / "best.safetensors").is_file():
            raise CheckpointError(f"{self.label}: no best checkpoint in {self.out_dir}", "delete the folder and rerun")
        self.load_best()
        return self._result()

    def _end_epoch(self, epoch: int, train: Split, row: dict, val_size: int) -> None:
        """The callbacks (the guard first: nothing non-finite is ever saved), the best epoch, the checkpoints (rank 0
        writes them) and the epoch's line."""
        rngs = self._rng_states()
        with dist.together():
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, train, row)
            self.history.append(row)
            score = self._signed_score(row)
            if val_size == 0 or score > self.best_score:
                self.best = (epoch, row["val_accuracy"] if val_size else float("nan"))
                self.best_score = score if val_size else math.inf
                if dist.is_main():
                    self._save_best()
            if dist.is_main():
                self._save(epoch, finished=epoch == self.cfg.epochs, rngs=rngs)
        self._log(row)
        tracking.log_epoch(self.label, row)  # MLflow / TensorBoard, when the run tracks (rank 0's trainer alone)
        dead = row.get("dead_units")
        if dead:
            self.console.print(f"[yellow]{self.label}: {dead}[/]")

    def _signed_score(self, row: dict) -> float:
        """The task's selection metric of an epoch's row (``Task.selection``), negated when smaller is better, so
        the best epoch is always the largest value (NaN never wins)."""
        key, mode = self.task.selection
        value = row.get(key, float("nan"))
        if value != value:
            return -math.inf
        return value if mode == "max" else -value

    def _restore_best(self, state: dict) -> None:
        self.history = state["history"]
        self.best = (state["best_epoch"], state["best_val_accuracy"])
        best_rows = [r for r in self.history if r.get("epoch") == self.best[0]]
        self.best_score = state.get("best_score", self._signed_score(best_rows[0]) if best_rows else -math.inf)

    def _result(self) -> TrainResult:
        key, mode = self.task.selection
        score = self.best_score if mode == "max" else -self.best_score
        return TrainResult(self.history, *self.best, self.out_dir, best_score=score)

    def _setup_terms(self, train: Split) -> None:
        """Let each term build its helpers from example outputs, with the same seed every time (so resume
        rebuilds identical helpers before their weights are restored)."""
        torch.manual_seed(self.seed + 17)
        if self.batches is not None:
            batch = self.batches.example(8)
        else:
            batch = self.task.collate(train, torch.arange(min(len(train), 8))).to(self.device)
        source = self.teacher_source
        if source is not None:
            source.module.eval()
        self.model.eval()  # no BatchNorm statistics are updated by the example pass
        for _, term in self.terms:
            with torch.no_grad():
                s_out = forward_with_features(self.model, batch, term.student_paths, role="student")
                t_out = source.outputs(batch, term.teacher_paths) if source is not None else None
            # the classes are the model's logits (a split or a batch source may not show every label)
            term.setup(SetupContext(self.model, source.module if source else None, s_out, t_out, batch,
                                    len(train), s_out.logits.shape[1]))

    def _epoch(self, epoch: int, train: Split, s_run: FeatureCapture, t_run: Callable[[Batch], Outputs] | None) -> dict:
        cfg = self.cfg
        self.model.train()
        self.helpers.train()
        if self.teacher_source is not None:
            self.teacher_source.module.eval()
        if self.batches is not None:
            self.batches.train()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = self.task.epoch_order(train, g, cfg.batch_size)
        for _, term in self.terms:
            term.start_epoch(epoch, cfg.epochs)
        sums: dict[str, float] = {}
        seen = 0
        t0 = time.perf_counter()
        with self._bar(f"{self.label} epoch {epoch}/{cfg.epochs}", self.steps_per_epoch) as (bar, task):
            for step in range(self.steps_per_epoch):
                with dist.together():  # an error on one rank (a NaN loss) stops every rank, before the backward
                    batch, n, share = self._batch(epoch, step, train, order, g)
                    # Through the wrapper, so that DDP sees every parameter the step uses (student and helpers).
                    loss, parts = self.wrapped(run=lambda: self._forward(batch, s_run, t_run, epoch, step))
                self.optimizer.zero_grad(set_to_none=True)
                (loss * share).backward()  # DDP averages over ranks: the mean over the whole global batch
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(list(self.module.parameters()), cfg.grad_clip)
                self.optimizer.step()
                for cb in self.callbacks:
                    cb.on_step_end(self)
                self.scheduler.step()
                seen += n
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                bar.update(task, advance=1, description=f"{self.label} epoch {epoch}/{cfg.epochs} loss {parts['train_loss']:.4f}")
        sums = dist.sum_over_ranks({**sums, "": float(seen)})  # the epoch's means over every rank's samples
        seen = sums.pop("")
        row = {"model": self.label, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({k: v / seen for k, v in sums.items()})
        row["seconds"] = time.perf_counter() - t0
        return row

    def _batch(self, epoch: int, step: int, train: Split, order: torch.Tensor, g: torch.Generator
               ) -> tuple[Batch, int, float]:
        """This rank's part of the step's batch, on the device; how many of the global batch's samples (mixed ones
        aside) it holds, for the epoch's means; and the factor of its loss that turns DDP's mean over ranks into the
        mean over the global batch. Every rank cuts, shifts and mixes the same global batch of ``batch_size`` (its
        random numbers drawn alike) and keeps samples rank, rank + N, ...; in one process, all of it."""
        if self.batches is not None:
            batch = self.batches.next_batch(epoch, step)
        else:
            idx = order[step * self.cfg.batch_size:(step + 1) * self.cfg.batch_size]
            batch = self.task.collate(train, idx)
            for cb in self.callbacks:
                batch = cb.on_batch(self, batch)
        unmixed = len(batch)
        if self.mixup is not None:
            batch = self._mix(batch, g)
        world = dist.world_size()
        if world > 1:
            total = len(batch)
            mine = torch.arange(dist.rank(), total, world)
            share = len(mine) * world / total
            n = int((mine < unmixed).sum())
            # A global batch smaller than the world (a last, short one): this rank steps on one sample, weighted 0.
            batch = batch.take(mine if len(mine) else torch.arange(1))
            return batch.to(self.device), n, share
        return batch.to(self.device), unmixed, 1.0  # batches are cut, shifted and mixed on the CPU, as without a GPU

    def _forward(self, batch: Batch, s_run: FeatureCapture, t_run: Callable[[Batch], Outputs] | None, epoch: int,
                 step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The student's and the teacher's outputs on ``batch`` and the weighted loss with its logged parts."""
        student = s_run.batch(batch)
        teacher = None
        if t_run is not None:
            with torch.no_grad():
                # Shifted inputs change every epoch: the teacher sees the same view, never a cached one.
                fresh_views = any(cb.changes_inputs for cb in self.callbacks)
                teacher = t_run(batch if not fresh_views else
                                Batch(batch.inputs, batch.y, torch.full_like(batch.index, -1),
                                      batch.mask)).to(self.device)
        loss, parts = self._loss(student, teacher, batch, epoch, step)
        if self.batches is not None:
            parts.update({f"source/{k}": float(v) for k, v in self.batches.parts.items()})
        return loss, parts

    def _mix(self, batch: Batch, g: torch.Generator) -> Batch:
        """Append mixed inputs λ·x_i + (1 − λ)·x_j (λ ~ Beta(α, α)) with no label (-1) and no index (-1)."""
        n = len(batch.y)
        k = max(1, round(self.mixup.ratio * n))
        a = torch.randint(n, (k,), generator=g)
        b = torch.randint(n, (k,), generator=g)
        # λ uses the global RNG, whose state the checkpoints save, so resume stays exact.
        lam = torch.distributions.Beta(self.mixup.alpha, self.mixup.alpha).sample((k,))
        lam = lam.view(k, *([1] * (batch.x.dim() - 1)))
        mixed = lam * batch.x[a] + (1 - lam) * batch.x[b]
        none = torch.full((k,), -1, dtype=batch.y.dtype)
        return Batch(torch.cat([batch.x, mixed]), torch.cat([batch.y, none]), torch.cat([batch.index, none]))

    def _loss(self, student: Outputs, teacher: Outputs | None, batch: Batch, epoch: int, step: int):
        total = student.logits.new_zeros(())
        parts: dict[str, float] = {}
        # A term that marks itself exclusive (FitNets stage 1) trains alone; the others log 0 meanwhile.
        active = [(w, t) for w, t in self.terms if getattr(t, "exclusive", False)] or self.terms
        for weight, term in self.terms:
            if all(term is not t for _, t in active):
                parts[f"loss/{term.name}"] = 0.0
                continue
            value = term(student, teacher, batch)
            if not torch.isfinite(value):
                raise self.diverged(f"loss term '{term.name}' became {value.item()} at epoch {epoch}, step {step + 1}",
                                     epoch, teacher, batch)
            total = total + weight * value
            parts[f"loss/{term.name}"] = float(value.detach())
            for k, v in term.parts.items():
                parts[f"loss/{term.name}.{k}"] = float(v)
        if not torch.isfinite(total):
            raise self.diverged(f"the weighted loss became {total.item()} at epoch {epoch}, step {step + 1} "
                                 "(a term's weight is too large)", epoch, teacher, batch)
        parts["train_loss"] = float(total.detach())
        return total, parts

    def diverged(self, what: str, epoch: int, teacher: Outputs | None = None, batch: Batch | None = None):
        """The NaN guard's error: what diverged, the checkpoint that is left, and the likeliest cause."""
        last = self.out_dir / "last.safetensors"
        if epoch > 1 and last.is_file():
            kept = f"the last good checkpoint is {last} (epoch {epoch - 1})"
        else:
            kept = "no checkpoint of it was saved (it diverged in its first epoch)"
        if batch is not None and not bool(torch.isfinite(batch.x).all()):
            fix = "the training inputs hold NaN/inf: clean the data files"
        elif teacher is not None and not bool(torch.isfinite(teacher.logits).all()):
            fix = ("the teacher's outputs are NaN/inf, not the student's: check the teacher's checkpoint or its "
                   "training (teacher.checkpoint, teacher.train.lr)")
        else:
            fix = (f"lower the learning rate (train.lr is {self.cfg.lr:g}), set train.grad_clip (e.g. 1.0), or lower "
                   "the loss terms' weights or temperatures")
        return TrainingError(f"{self.label}: {what}; {kept}", fix)

    def _validate(self, val: Split) -> dict:
        self.val_size = len(val)
        scores = self.task.evaluate(self.model, val)
        return {f"val_{k}": v for k, v in scores.items()}

    def _bar(self, description: str, total: int):
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True,
                            disable=not (self.progress and self.console.is_terminal))
        return _BarContext(progress, description, total)

    def _log(self, row: dict) -> None:
        terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss/"))
        acc = row["val_accuracy"]
        val = f"val acc {100 * acc:.2f}%" if acc == acc else "no validation split"
        self.console.print(f"{self.label:>16} epoch {row['epoch']:>3}/{self.cfg.epochs}  loss {row['train_loss']:.4f}  "
                           f"({terms})  {val}  {row['seconds']:.1f}s")


class _BarContext:
    def __init__(self, progress: Progress, description: str, total: int):
        self.progress, self.description, self.total = progress, description, total

    def __enter__(self):
        self.progress.start()
        return self.progress, self.progress.add_task(self.description, total=self.total)

    def __exit__(self, *exc):
        self.progress.stop()
