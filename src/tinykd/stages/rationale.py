"""Rationale distillation on the ``arithmetic`` data: distilling step-by-step (Hsieh et al. 2023) with a teacher
that learnt to write its reasoning.

1. The teacher (``teacher`` section) learns problems with their step-by-step rationales (``rationale: teacher``).
2. It writes a rationale for every training prompt, greedily; they are kept as JSON lines in
   ``run_dir/rationales.jsonl`` (kept wrong or right, as the paper keeps its teacher's), with its tokenizer.
3. Student (a), ``answer_only``, learns ``[answer]a+b=`` → ``#`` answer (``rationale: none``).
4. Student (b), ``multitask``, learns the answer task and ``[reason]a+b=`` → the teacher's rationale
   (``rationale: multitask``), each problem in both tasks; its batches hold twice as many sequences, so both students
   take the same optimizer steps over the same answers, and ``sequence_ce`` weighs the two tasks alike.
5. Exact match of the final answer on the held-out problems, by length: the teacher on its own prompts; both
   students on the answer task (the paper's inference: no rationale written); student (b) also on the rationale task
   (it writes a rationale, then the answer).

Both students are the recipe's ``student`` (same architecture and initial weights) trained with ``student.train``;
every model reads the teacher's tokenizer. Each step reuses what a previous call left in ``run_dir``.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from torch import nn

from ..data.arithmetic import ANSWER_TASK, MARK, RATIONALE_TASK, make_problems
from ..data.spec import DataBundle
from ..distill.losses import build_loss
from ..distill.trainer import Trainer
from ..errors import RecipeError
from ..measure.exact_match import ExactMatch, exact_match, final_answer, greedy_complete
from ..recipe import Recipe
from ..tasks import get_task
from .common import create
from .data import load_data
from .teacher import train_teacher

STUDENTS = ("answer_only", "multitask")


@dataclass
class RationaleResult:
    """The three models, their exact match on the held-out problems, and what each step cost."""

    teacher: nn.Module
    students: dict[str, nn.Module]  # "answer_only", "multitask"
    scores: dict[str, ExactMatch]  # "teacher", "answer_only", "multitask" (answer task), "multitask_reason"
    rationales: Path  # the teacher's rationales of the training prompts (JSON lines)
    rationale_accuracy: float  # share of those whose final answer is right
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # step → {"wall", "cpu"} seconds
    histories: dict[str, list[dict]] = field(default_factory=dict)


def with_options(recipe: Recipe, **options) -> Recipe:
    """``recipe`` with ``data.options`` updated."""
    data = recipe.data.model_copy(update={"options": {**recipe.data.options, **options}})
    return recipe.model_copy(update={"data": data})


def problem_options(recipe: Recipe) -> dict:
    """The generator's options of the recipe's ``arithmetic`` data (the defaults filled in)."""
    from ..data.registry import get_dataset

    opts = {**get_dataset("arithmetic").defaults(), **recipe.data.options}
    return {k: opts[k] for k in ("digits", "test_digits", "n_train", "n_test")} | {"seed": opts["dataset_seed"]}


@contextmanager
def timed(seconds: dict, step: str):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    seconds[step] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def write_rationales(teacher: nn.Module, bundle: DataBundle, prompts: list[str], answers: list[str], path: Path,
                     context: int) -> float:
    """The teacher's greedy response to each of ``prompts`` as JSON lines at ``path``; the share whose final answer
    is right."""
    responses = greedy_complete(teacher, bundle.tokenizer, prompts, max_new_tokens=context, context=context)
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(prompts, responses)),
                    encoding="utf-8")
    return sum(final_answer(r, MARK) == a for r, a in zip(responses, answers)) / max(1, len(prompts))


def train_student(recipe: Recipe, bundle: DataBundle, run_dir: Path, label: str, batch_size: int,
                  console: Console, progress: bool) -> tuple[nn.Module, list[dict]]:
    """A fresh recipe student (seed + 1: both students start alike) trained with ``sequence_ce`` in
    ``run_dir/label`` at ``batch_size``."""
    model = create(recipe.student.model, recipe.student.kwargs, bundle.spec, "student", recipe.seed + 1)
    cfg = recipe.student.train.model_copy(update={"batch_size": batch_size})
    terms = [(1.0, build_loss("sequence_ce", {"label_smoothing": cfg.label_smoothing}))]
    res = Trainer(model, terms, cfg, out_dir=Path(run_dir) / label, label=label, seed=recipe.seed, console=console,
                  progress=progress, task=get_task("causal_lm")).fit(bundle.train, bundle.val)
    return model.eval().requires_grad_(False), res.history


def rationale_distillation(recipe: Recipe, run_dir: Path, *, console: Console | None = None,
                           progress: bool = True) -> RationaleResult:
    """The teacher, its rationales and the two students of the module docstring, trained in ``run_dir`` and scored
    on the held-out problems."""
    if recipe.data.name != "arithmetic":
        raise RecipeError(f"rationale distillation runs on the arithmetic data, and data.name is "
                          f"'{recipe.data.name}'", "set data.name: arithmetic", where="data.name")
    console = console or Console(quiet=not progress)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, dict[str, float]] = {}
    t_recipe = with_options(recipe, rationale="teacher", rationales_path=None)
    bundle = load_data(t_recipe, console)
    context = bundle.spec.shape[0]
    with timed(seconds, "teacher"):
        teacher_res = train_teacher(t_recipe, bundle, run_dir, console=console, progress=progress)
    teacher = teacher_res.teacher
    tokenizer = bundle.tokenizer.save(run_dir / "tokenizer.json")

    train_problems, test_problems = make_problems(**problem_options(recipe))
    unique = list(dict.fromkeys(train_problems))
    path = run_dir / "rationales.jsonl"
    with timed(seconds, "rationales"):
        if path.is_file():
            given = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            right = sum(final_answer(g["response"], MARK) == p.answer for g, p in zip(given, unique))
            share = right / max(1, len(unique))
        else:
            share = write_rationales(teacher, bundle, [p.prompt for p in unique], [p.answer for p in unique], path,
                                     context)
    console.print(f"teacher's rationales: {len(unique):,} training prompts, final answer right in {100 * share:.2f}%")

    students, histories = {}, {"teacher": teacher_res.history}
    batch = recipe.student.train.batch_size
    for label, options, size in (("answer_only", {"rationale": "none"}, batch),
                                 ("multitask", {"rationale": "multitask", "rationales_path": str(path)}, 2 * batch)):
        s_recipe = with_options(recipe, **options)
        data = load_data(s_recipe, console, tokenizer_path=tokenizer)
        with timed(seconds, label):
            students[label], histories[label] = train_student(s_recipe, data, run_dir, label, size, console, progress)

    groups = [p.digits for p in test_problems]
    answers = [p.answer for p in test_problems]
    plain = [p.prompt for p in test_problems]
    score = lambda model, prefix: exact_match(model, bundle.tokenizer, [prefix + q for q in plain], answers,  # noqa: E731
                                              groups=groups, marker=MARK, max_new_tokens=context, context=context)
    with timed(seconds, "evaluation"):
        scores = {"teacher": score(teacher, ""), "answer_only": score(students["answer_only"], ANSWER_TASK),
                  "multitask": score(students["multitask"], ANSWER_TASK),
                  "multitask_reason": score(students["multitask"], RATIONALE_TASK)}
    for name, s in scores.items():
        per = ", ".join(f"{g} digits {100 * a:.1f}%" for g, (a, _) in sorted(s.by_group.items()))
        console.print(f"exact match {name}: {100 * s.accuracy:.2f}% ({per})")
    return RationaleResult(teacher, students, scores, path, share, seconds, histories)
