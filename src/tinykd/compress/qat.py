"""Quantization-aware distillation with torchao's PT2E flow, and a PT2E post-training baseline.

QAT (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference") inserts fake-quantize ops so training sees int8 rounding; here the fp32 teacher drives that
fine-tuning with a distillation loss (as in Mishra & Marr 2018, "Apprentice"; Polino et al. 2018). The flow:
[fold BatchNorm] -> ``torch.export`` -> ``prepare_qat_pt2e`` with the XNNPACK quantizer (int8 symmetric,
per-channel weights; torchao 0.18 ships it as ``torchao.testing.pt2e._xnnpack_quantizer``, the same code as
ExecuTorch's) -> the one Trainer -> ``convert_pt2e`` (quantize/dequantize ops around fp32 ops, int8 weights).

Export: the converted model is a plain nn.Module, so ``tinykd.deploy.onnx.export_onnx(model, in_shape, path)``
writes an int8 QDQ ONNX file (QuantizeLinear/DequantizeLinear around Conv/Gemm, int8 weight initializers).
ONNX Runtime with its graph optimisations off computes exactly what PyTorch does; with them on (the default
session) it fuses QDQ into integer kernels (QLinearConv, ...) whose rounding differs slightly, so a few
borderline predictions can change. ``count_macs`` and PyTorch latency also work on the converted model.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..data.spec import Split
from ..distill.trainer import Trainer
from ..errors import TinyKDError
from ..deploy.quiet import quiet
from ..recipe import LossSpec, TrainConfig
from .prune import DEFAULT_LOSSES, loss_terms

_CALIBRATION_SAMPLES = 256


def _quiet():
    """torchao logs warnings about optional GPU kernels it cannot load on CPU; they are noise here."""
    return quiet(("torchao", "torch._dynamo", "torch.export", "torch.fx", "torch.utils._pytree"), stdout=False)


def _pt2e():
    with _quiet():
        from torchao.quantization import pt2e
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    return pt2e, quantize_pt2e, XNNPACKQuantizer, get_symmetric_quantization_config


class PT2EModel(nn.Module):
    """An exported (prepared or converted) PT2E GraphModule that behaves like a module in train()/eval().

    ``GraphModule.train()`` cannot switch BatchNorm and dropout of an exported graph (prepared ones even refuse),
    so this wrapper flips the mode of those ops in the graph instead (``_set_graph_mode``), and freezes the
    fake-quantize observers in eval mode, so validation data never moves the quantization ranges.
    ``history`` holds the fine-tuning rows of a QAT run (empty after PTQ).
    """

    def __init__(self, gm: torch.fx.GraphModule, *, training: bool, history: list[dict] | None = None):
        super().__init__()
        self.gm = gm
        self.history = history or []
        self.training = not training  # force the first train() to rewrite the graph
        self.train(training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)

    def _aliases(self) -> dict[str, str]:
        """State keys of fake-quantizers shared by several ops (e.g. a max-pool's input and output) -> the key of
        their first name. safetensors refuses tensors stored twice, so checkpoints keep only the first."""
        first: dict[int, str] = {}
        out = {}
        for name, module in self.named_modules(remove_duplicate=False):
            if id(module) not in first:
                first[id(module)] = name
            elif first[id(module)] != name:
                for key in module.state_dict():
                    out[f"{name}.{key}"] = f"{first[id(module)]}.{key}"
        return out

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for alias in self._aliases():
            state.pop(f"{prefix}{alias}", None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state = dict(state_dict)
        for alias, key in self._aliases().items():
            if key in state:
                state.setdefault(alias, state[key])
        return super().load_state_dict(state, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> PT2EModel:
        if mode == self.training:
            return self
        _set_graph_mode(self.gm, mode)
        pt2e = _pt2e()[0]
        self.gm.apply(pt2e.enable_observer if mode else pt2e.disable_observer)
        self.training = mode
        for module in self.gm.modules():  # flags only: nn.Module.train on a prepared GraphModule raises
            module.training = mode
        return self


# ops of an exported training graph whose train/eval behaviour is a literal argument: op -> index of the flag
_MODE_ARGS = {torch.ops.aten.batch_norm.default: 5, torch.ops.aten.dropout.default: 2,
              torch.ops.aten.feature_dropout.default: 2, torch.ops.aten.alpha_dropout.default: 2}


def _set_graph_mode(gm: torch.fx.GraphModule, mode: bool) -> None:
    """Flip the ``training`` literal of BatchNorm and dropout ops in place (dropout keeps its own p).

    torchao's ``move_exported_model_to_train/eval`` does this by pattern rewriting, which re-traces its patterns
    (about a second per call, and the Trainer switches twice per epoch) and resets every dropout to p=0.5
    (pytorch/pytorch#103681); it remains the fallback for graphs with other BatchNorm ops.
    """
    changed = False
    for node in gm.graph.nodes:
        index = _MODE_ARGS.get(node.target) if node.op == "call_function" else None
        if index is not None and len(node.args) > index and node.args[index] != mode:
            node.args = (*node.args[:index], mode, *node.args[index + 1:])
            changed = True
    if any(n.op == "call_function" and "_native_batch_norm_legit" in str(n.target) for n in gm.graph.nodes):
        pt2e = _pt2e()[0]
        with _quiet():
            (pt2e.move_exported_model_to_train if mode else pt2e.move_exported_model_to_eval)(gm)
    elif changed:
        gm.recompile()


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each BatchNorm folded into the Conv/Linear before it (exact in eval mode)."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception as err:  # noqa: BLE001 - torch.fx cannot trace every model
        raise TinyKDError(f"could not fold BatchNorm of {type(model).__name__} (torch.fx tracing failed: {err})",
                          "pass fold_bn=False to keep BatchNorm (torchao's slower QAT conv-bn pattern)") from None


def _export(model: nn.Module, example: torch.Tensor, *, train: bool, fold_bn: bool) -> torch.fx.GraphModule:
    # a copy: the caller's model keeps its weights and mode
    model = (_fold_batchnorm(model) if fold_bn else copy.deepcopy(model)).train(train)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet():
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    except Exception as err:  # noqa: BLE001 - any export failure is a property of the user's model
        raise TinyKDError(f"torch.export could not capture {type(model).__name__} for PT2E quantization: {err}",
                          "make the forward traceable (no data-dependent Python control flow), or use ONNX "
                          "post-training quantization (quantize_onnx_static) instead") from None


def _quantizer(qat: bool):
    _, _, xnnpack, config = _pt2e()
    return xnnpack().set_global(config(is_per_channel=True, is_qat=qat))


def _example(x: torch.Tensor) -> torch.Tensor:
    if len(x) == 0:
        raise TinyKDError("no samples to trace the model for PT2E quantization", "pass a non-empty training split")
    return x[:2].clone() if len(x) >= 2 else torch.cat([x, x])


@torch.no_grad()
def _observe(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> None:
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])


def ptq_pt2e(student: nn.Module, calib_inputs: torch.Tensor) -> PT2EModel:
    """Post-training int8 quantization (PT2E, XNNPACK quantizer, per-channel weights), calibrated on
    ``calib_inputs`` (N x input shape): the baseline QAT should beat. BatchNorm is folded into the preceding
    layers first (exact at inference). The input model is left unchanged."""
    _, qpt2e, _, _ = _pt2e()
    if len(calib_inputs) == 0:
        raise TinyKDError("no calibration inputs for PT2E post-training quantization", "pass ≥ 1 calibration input")
    with _quiet():
        prepared = qpt2e.prepare_pt2e(_export(student, _example(calib_inputs), train=False, fold_bn=True), _quantizer(qat=False))
        _observe(prepared, calib_inputs)
        converted = qpt2e.convert_pt2e(prepared)
    return PT2EModel(converted, training=False)


def prepare_qat(student: nn.Module, example: torch.Tensor, *, fold_bn: bool = True) -> PT2EModel:
    """A fake-quantized copy of ``student``, ready to train (the input model is left unchanged).

    ``fold_bn=True`` folds BatchNorm into the convolutions first, so fine-tuning trains the folded weights with
    the statistics frozen (BN freezing, Krishnamoorthi 2018, "Quantizing deep convolutional networks for
    efficient inference", section 3.2) and the trained graph is exactly the deployed one. ``fold_bn=False``
    keeps BatchNorm training through torchao's QAT conv-bn pattern; its prepare and convert trace about a
    hundred patterns (a minute or more on a small CPU).
    """
    _, qpt2e, _, _ = _pt2e()
    with _quiet():
        gm = _export(student, _example(example), train=True, fold_bn=fold_bn)
        prepared = qpt2e.prepare_qat_pt2e(gm, _quantizer(qat=True))
    return PT2EModel(prepared, training=True)


def convert_qat(model: PT2EModel) -> PT2EModel:
    """The int8 model of a fine-tuned QAT model: weights stored as int8 with per-channel scales."""
    _, qpt2e, _, _ = _pt2e()
    model.eval()
    with _quiet():
        converted = qpt2e.convert_pt2e(model.gm)
    return PT2EModel(converted, training=False, history=model.history)


def qat_distill(student: nn.Module, teacher: nn.Module, train: Split, val: Split, cfg: TrainConfig,
                losses: Sequence[dict | LossSpec] = DEFAULT_LOSSES, out_dir: str | Path = "qat", *,
                calib: torch.Tensor | None = None, fold_bn: bool = True, seed: int = 0, label: str = "qat",
                progress: bool = False) -> PT2EModel:
    """Quantization-aware distillation: fake-quantize a copy of the fp32 ``student``, fine-tune it on
    ``losses`` with the frozen fp32 ``teacher`` through the Trainer (checkpoints in ``out_dir``), then convert it.

    Only terms on logits work (kd, dkd, ce, ...): the exported graph has no module paths for feature hooks.
    ``calib`` (N x input shape) initialises the activation ranges before training (default: the first 256
    training inputs). ``fold_bn``: see ``prepare_qat``. Returns the converted int8 model (``.history``: the fine-tuning rows); the student and
    teacher passed in are left unchanged. Export it with ``tinykd.deploy.onnx.export_onnx`` (int8 QDQ ONNX).
    """
    terms = loss_terms(losses)
    features = [t.name for _, t in terms if t.student_paths]
    if features:
        raise TinyKDError(f"loss terms {features} capture student features, which an exported QAT graph cannot "
                          "provide (it has no module paths to hook)",
                          "distil features before QAT, and use logit terms (e.g. kd) for quantization-aware distillation")
    model = prepare_qat(student, train.x, fold_bn=fold_bn)
    calib = train.x[:_CALIBRATION_SAMPLES] if calib is None else calib
    if len(calib):
        pt2e = _pt2e()[0]
        model.eval()  # BatchNorm uses its running statistics while the observers see the calibration inputs
        model.gm.apply(pt2e.enable_observer)
        _observe(model, calib)
        model.gm.apply(pt2e.disable_observer)
    teacher.eval()
    # An exported graph keeps the device it was captured on (constants, device arguments of its ops), so the
    # fake-quantized copy fine-tunes on the CPU, where it was exported, whatever train.device says.
    cfg = cfg.model_copy(update={"device": "cpu"})
    result = Trainer(model, terms, cfg, out_dir=Path(out_dir), label=label, seed=seed, teacher=teacher,
                     progress=progress).fit(train, val)
    model.history = result.history
    return convert_qat(model)


__all__ = ["PT2EModel", "convert_qat", "prepare_qat", "ptq_pt2e", "qat_distill"]
