"""Everything a recipe can get wrong, checked before the run folder is made or anything trains."""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from ..compress.quantize import quantize_onnx_static
from ..data.spec import DataBundle
from ..deploy.onnx import export_onnx
from ..deploy.preprocess import raw_inputs, with_preprocessing
from ..distill.schemes import get_scheme
from ..errors import RecipeError, TinyKDError
from ..measure import file_bytes
from ..recipe import Recipe
from ..types import Batch
from .common import build_terms, create, fresh_student, load_checkpoint
from .data import check_source


def preflight(recipe: Recipe, bundle: DataBundle, *, teacher: nn.Module | None = None,
              student: nn.Module | None = None, console: Console | None = None) -> None:
    """Check everything a recipe can get wrong before the run folder is made or anything trains: every model
    builds (teacher, student, extra teachers, assistants, peers), every checkpoint loads (finite weights of the
    model's architecture), every loss term builds and its layer paths exist, the transfer set is a known dataset
    whose files exist, and the int8 student fits ``deploy.target_board``. The global RNG is left as it was."""
    spec, d = bundle.spec, recipe.distill
    console = console or Console(quiet=True)
    if spec.modality == "text":
        _check_text_recipe(recipe)
    with torch.random.fork_rng(devices=[]):
        t_model = teacher if teacher is not None else create(recipe.teacher.model, recipe.teacher.kwargs, spec,
                                                             "teacher", recipe.seed)
        if recipe.teacher.checkpoint:
            load_checkpoint(t_model, recipe.teacher.checkpoint, "teacher", recipe)
        s_model = fresh_student(recipe, spec, student)
        for where, cfg, loads in get_scheme(d.scheme).extra_models(d):
            model = create(cfg.model, cfg.kwargs, spec, where, recipe.seed)
            if loads and cfg.checkpoint:
                load_checkpoint(model, cfg.checkpoint, where, recipe)
        terms = build_terms(recipe)
        if recipe.student.init_layers is not None:  # DistilBERT's initialisation fits the teacher, before it trains
            from .distill import init_student
            init_student(recipe, s_model, t_model if get_scheme(d.scheme).teacher_in_loop else None)
        check_layer_paths(recipe, terms, s_model, t_model)
        check_term_setup(recipe, terms, s_model, t_model, bundle)
        if d.transfer is not None:
            t = d.transfer
            check_source(t.name, t.path, t.options, recipe, "distill.transfer")
        if recipe.deploy.target_board is not None:
            precheck_fit(recipe, s_model, bundle, console)


def check_layer_paths(recipe: Recipe, terms: list, student: nn.Module, teacher: nn.Module) -> None:
    """Every module path a loss term names exists in the model it reads, for the models the scheme lets preflight
    see (``Scheme.checked_paths``: an ensemble or a chain has its own paths, online peers are checked in training)."""
    from ..distill.capture import resolve_module

    models = {"student": student, "teacher": teacher}
    roles = get_scheme(recipe.distill.scheme).checked_paths
    for i, (_, term) in enumerate(terms):
        paths = {"student": term.student_paths, "teacher": term.teacher_paths}
        for role in roles:
            for path in paths[role]:
                try:
                    resolve_module(models[role], path, role=role)
                except TinyKDError as err:
                    raise RecipeError(err.what, err.fix, where=f"distill.losses[{i}]") from None


def check_term_setup(recipe: Recipe, terms: list, student: nn.Module, teacher: nn.Module, bundle: DataBundle) -> None:
    """Every loss term builds its helpers from example outputs of the (untrained) models, as the trainer will, in a
    scheme whose teacher is the one model (``Scheme.preflight_setup``): layer shapes that cannot be compared fail
    here, before anything trains."""
    from ..distill.capture import forward_with_features
    from ..distill.losses import feature, relation
    from ..distill.losses.base import SetupContext
    from ..distill.sources import as_teacher_source

    if not get_scheme(recipe.distill.scheme).preflight_setup or len(bundle.train) == 0:
        return
    idx = torch.arange(min(len(bundle.train), 8))
    batch = Batch(bundle.train.x[idx], bundle.train.y[idx], idx)
    source = as_teacher_source(teacher)
    modes = student.training, teacher.training
    student.eval(), teacher.eval()
    quiet = [(m.console, m.console.quiet) for m in (feature, relation)]  # the training run announces auto pairs
    for c, _ in quiet:
        c.quiet = True
    try:
        for i, (_, term) in enumerate(terms):
            try:
                with torch.no_grad():
                    s_out = forward_with_features(student, batch.x, term.student_paths, role="student")
                    t_out = source.outputs(batch, term.teacher_paths) if term.needs_teacher else None
                    term.setup(SetupContext(student, teacher, s_out, t_out, batch, len(bundle.train),
                                            bundle.spec.num_classes))
            except TinyKDError as err:
                raise RecipeError(err.what, err.fix, where=err.where or f"distill.losses[{i}]") from None
    finally:
        student.train(modes[0]), teacher.train(modes[1])
        for c, was in quiet:
            c.quiet = was


def precheck_fit(recipe: Recipe, student: nn.Module, bundle: DataBundle, console: Console) -> None:
    """Fail before any training when the int8 student cannot fit ``deploy.target_board``.

    The untrained student goes through the same export and int8 quantization as the trained one will (the
    file's size does not depend on the weights' values), and the peak SRAM comes from its graph at one byte per
    activation element, so the check uses the numbers the final fit table will show.
    """
    from ..deploy.mcu import get_board, require_fit
    from ..measure.memory import peak_activation_memory

    try:
        board = get_board(recipe.deploy.target_board)
    except TinyKDError as err:
        raise type(err)(err.what, err.fix, where="deploy.target_board") from None
    shape = tuple(bundle.spec.shape)
    with tempfile.TemporaryDirectory() as tmp:
        norm = bundle.info.get("normalize")
        fp32 = export_onnx(with_preprocessing(copy.deepcopy(student), norm), shape, Path(tmp) / "student.onnx",
                           opset=recipe.export.opset)
        q = recipe.quantize
        int8 = quantize_onnx_static(fp32, Path(tmp) / "student.int8.onnx", raw_inputs(bundle.train.x[:16], norm),
                                    per_channel=q.per_channel, activation_type=q.activation_type)
        flash = file_bytes(int8 if q.enabled else fp32)
        sram = peak_activation_memory(fp32, activation_bytes=1).peak_bytes
    try:
        fit = require_fit(flash, sram, board)
    except TinyKDError as err:
        raise TinyKDError(f"the int8 student ({recipe.student.model}) cannot fit {board.name}: {err.what}", err.fix,
                          where="deploy.target_board") from None
    console.print(f"microcontroller pre-check: {fit.summary()}")


def _check_text_recipe(recipe: Recipe) -> None:
    """Stages that take dense inputs only are recipe errors on token ids, named before anything trains."""
    c = recipe.compress
    for key in ("prune_teacher", "prune_student", "lowrank", "qat"):
        if getattr(c, key) is not None:
            raise RecipeError(f"compress.{key} works on models of dense inputs (images, signals, audio features); "
                              "this run's inputs are token ids", f"remove compress.{key}: text students get static "
                              "and dynamic int8 in ONNX Runtime", where=f"compress.{key}")
    if recipe.deploy.target_board is not None:
        raise RecipeError("deploy.target_board checks a TensorFlow Lite Micro model, and token-id models are exported "
                          "to ONNX Runtime only", "remove deploy.target_board", where="deploy.target_board")
    if recipe.distill.mixup is not None:
        raise RecipeError("distill.mixup blends dense inputs, and these are token ids", "remove distill.mixup",
                          where="distill.mixup")
