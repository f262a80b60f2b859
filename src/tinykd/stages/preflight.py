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
from ..distill.trainer import check_processes
from ..errors import RecipeError, TinyKDError
from ..measure import file_bytes
from ..recipe import Recipe
from ..tasks import get_task
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
    from ..tracking import check as check_tracking

    check_tracking(recipe)  # a tracker asked for and not installed
    if spec.modality == "text":
        _check_text_recipe(recipe)
    if spec.task == "causal_lm":
        _check_lm_recipe(recipe)
    _check_lm_sequences(recipe, bundle)
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
        try:
            check_processes(terms)  # terms that keep state per sample train in one process
        except TinyKDError as err:
            raise RecipeError(err.what, err.fix, where="distill.losses") from None
        if recipe.student.init_layers is not None:  # DistilBERT's initialisation fits the teacher, before it trains
            from .distill import init_student
            init_student(recipe, s_model, t_model if get_scheme(d.scheme).teacher_in_loop else None)
        if spec.task == "causal_lm":
            check_vocabularies(bundle, {"teacher": t_model, "student": s_model})
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
    batch = get_task(bundle.spec.task).collate(bundle.train, idx)
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
                    s_out = forward_with_features(student, batch, term.student_paths, role="student")
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


# Terms that compare two models' next-token distributions (or use the labels) position by position: what a language
# model is distilled with. Feature and relation terms read classifier layers.
LM_TERMS = ("ce", "kd", "reverse_kd", "jsd", "tvd", "topk_kl", "logit_mse", "minillm")


def _check_lm_recipe(recipe: Recipe) -> None:
    """What a language-model run cannot do yet, named before anything trains."""
    d = recipe.distill
    if d.on_policy is not None and d.on_policy.teacher_mix > 0 and not get_scheme(d.scheme).teacher_in_loop:
        raise RecipeError(f"distill.on_policy.teacher_mix {d.on_policy.teacher_mix:g} samples tokens from the "
                          f"teacher, and the '{d.scheme}' scheme has no teacher in the loop",
                          "set teacher_mix: 0, or use distill.scheme: offline", where="distill.on_policy.teacher_mix")
    if d.scheme != "offline":
        raise RecipeError(f"the '{d.scheme}' scheme is not available for language models",
                          "use distill.scheme: offline (a trained teacher teaches the student)", where="distill.scheme")
    for i, spec in enumerate(d.losses):
        if spec.name not in LM_TERMS:
            raise RecipeError(f"loss term '{spec.name}' does not apply to a language model's next-token logits",
                              f"use one of {', '.join(LM_TERMS)}", where=f"distill.losses[{i}]")
        if spec.name == "minillm":
            _check_minillm(recipe, i)
    if d.transfer is not None:
        raise RecipeError("distill.transfer takes unlabelled classification inputs; a language model learns from "
                          "text", "remove distill.transfer", where="distill.transfer")


def _check_minillm(recipe: Recipe, i: int) -> None:
    """MiniLLM learns from the student's own samples: on-policy batches, drawn at temperature 1 without top-k (its
    importance weights are q_student / mixture at temperature 1), with the term's teacher_mix the sampler's."""
    d, where = recipe.distill, f"distill.losses[{i}]"
    p = d.on_policy
    if p is None:
        raise RecipeError("loss term 'minillm' learns from the student's own samples, and distill.on_policy is not set",
                          "add distill.on_policy, e.g. {fraction: 0.5, prompt_tokens: 8} (the other batches train "
                          "minillm's cross-entropy on the corpus)", where=where)
    if p.temperature != 1.0 or p.top_k is not None:
        raise RecipeError(f"loss term 'minillm' weights tokens sampled at temperature 1 from the full vocabulary, and "
                          f"distill.on_policy samples at temperature {p.temperature:g}"
                          + (f" with top_k {p.top_k}" if p.top_k is not None else ""),
                          "set distill.on_policy.temperature: 1 and leave top_k out", where="distill.on_policy")
    alpha = d.losses[i].params().get("teacher_mix", 0.0)
    if isinstance(alpha, (int, float)) and alpha != p.teacher_mix:  # a value of the wrong type: the term's own check
        raise RecipeError(f"loss term 'minillm' has teacher_mix {alpha:g}, and distill.on_policy samples with "
                          f"teacher_mix {p.teacher_mix:g}: its importance weights q / (α·p + (1 − α)·q) need the "
                          "sampler's α", f"give both the same value (teacher_mix: {p.teacher_mix:g} in the minillm "
                          "term, or change distill.on_policy.teacher_mix)", where=f"{where}.teacher_mix")


def _check_lm_sequences(recipe: Recipe, bundle: DataBundle) -> None:
    """On-policy and sequence-level KD continue each block's first tokens: corpus blocks longer than the prompt."""
    d = recipe.distill
    for key in ("on_policy", "sequence_kd"):
        section = getattr(d, key)
        if section is None:
            continue
        if bundle.spec.task != "causal_lm":
            raise RecipeError(f"distill.{key} generates text: it applies to language models (text_corpus data)",
                              f"remove distill.{key}", where=f"distill.{key}")
        if section.prompt_tokens >= bundle.spec.shape[0]:
            raise RecipeError(f"distill.{key}.prompt_tokens {section.prompt_tokens} leaves nothing to generate in "
                              f"blocks of {bundle.spec.shape[0]} tokens", f"use fewer than {bundle.spec.shape[0]}",
                              where=f"distill.{key}.prompt_tokens")
        if bool((bundle.train.y[:, :section.prompt_tokens] < 0).any()):
            raise RecipeError(f"distill.{key} continues the first tokens of corpus blocks, and this data's blocks "
                              "hold prompts and padding (prompt_response)", "use text_corpus data, or remove "
                              f"distill.{key}", where=f"distill.{key}")


def check_vocabularies(bundle: DataBundle, models: dict[str, nn.Module]) -> None:
    """Teacher and student predict over the data's vocabulary: a model whose logits have another width is an error
    naming both vocabularies, before anything trains."""
    task = get_task(bundle.spec.task)
    batch = task.collate(bundle.train, torch.arange(min(len(bundle.train), 2)))
    tok = bundle.tokenizer
    data_vocab = (f"the data's {tok.kind} tokenizer has {bundle.spec.vocab_size} tokens (fingerprint "
                  f"{tok.fingerprint()})" if tok is not None else f"the data has {bundle.spec.vocab_size} tokens")
    for role, model in models.items():
        was = model.training
        model.eval()
        with torch.no_grad():
            width = task.logits(model, batch).shape[-1]
        model.train(was)
        if width != bundle.spec.vocab_size:
            raise RecipeError(f"the {role} predicts over a vocabulary of {width} tokens, but {data_vocab}: teacher, "
                              "student and data must share one vocabulary",
                              f"tokenize the data with the {role}'s tokenizer (data.options.tokenizer_path), or build "
                              f"the {role} for {bundle.spec.vocab_size} tokens", where=f"{role}.model")
