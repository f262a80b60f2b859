"""The export stage: every model of the run as a deployable artifact under ``artifacts/`` (ONNX fp32, parity-checked
int8 QDQ of each student, and the optional fp16 / dynamic-int8 / QAT / TFLite / ExecuTorch / C-array files)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ..compress.quantize import calibration_subset, convert_onnx_fp16, quantize_onnx_dynamic, quantize_with_parity
from ..data.spec import DataBundle
from ..deploy.onnx import export_onnx, ort_predict_inputs, ort_session
from ..deploy.preprocess import attach_metadata, preprocess_spec, raw_inputs, with_preprocessing, write_preprocess_json
from ..measure import agreement
from ..recipe import Recipe
from ..tasks import Classification

STUDENT_FAMILY = ("student", "student_pruned", "student_lowrank")  # fp32 students that get an int8 twin


@dataclass
class ExportResult:
    """The artifacts by variant name and, per int8 artifact, how its quantization went."""

    artifacts: dict[str, Path] = field(default_factory=dict)
    quantization: dict[str, dict] = field(default_factory=dict)  # parity, nodes kept in fp32, activation type


def export(recipe: Recipe, bundle: DataBundle, run_dir: Path, models: dict[str, nn.Module], *,
           qat: nn.Module | None = None, calibration: np.ndarray | None = None,
           console: Console | None = None) -> ExportResult:
    """Every artifact of the run under ``artifacts/``: ONNX fp32 of each model, ONNX int8 (static QDQ) of each
    student, and the optional fp16 / dynamic-int8 / QAT / TFLite / ExecuTorch / C-array artifacts. ``calibration``:
    int8 calibration inputs, standardised like the training split (default: a class-balanced training subset).

    Every artifact starts with the input standardisation (``deploy.preprocess``): it takes raw inputs. The ONNX
    files carry the preprocessing in ``metadata_props`` and ``artifacts/preprocess.json`` states it too.
    """
    console = console or Console(quiet=True)
    if bundle.spec.modality == "text":
        return export_text(recipe, bundle, run_dir, models, console=console)
    shape = tuple(bundle.spec.shape)
    art = run_dir / "artifacts"
    out: dict[str, Path] = {}
    q, d = recipe.quantize, recipe.deploy
    norm = bundle.info.get("normalize")
    calib = calibration
    # A data-free run's parity check reads the validation split alone: no training input, as in its calibration.
    check, held_out = parity_split(bundle, recipe.seed, n=len(bundle.val) if calib is not None else 2048)
    if calib is None:  # calibrate on training inputs the parity check does not use, so the check sees unseen inputs
        rest = torch.ones(len(bundle.train), dtype=torch.bool)
        rest[held_out] = False
        calib = calibration_subset(bundle.train.x[rest], bundle.train.y[rest], q.calibration_samples, recipe.seed)
    calib = raw_inputs(calib, norm)
    quant_facts: dict[str, dict] = {}
    with console.status("exporting to ONNX") as status:
        for name, model in models.items():
            status.update(f"exporting {name} to ONNX")
            out[name] = export_onnx(with_preprocessing(model, norm), shape, art / f"{name}.onnx",
                                    opset=recipe.export.opset)
        if q.enabled:
            for name in (n for n in STUDENT_FAMILY if n in models):
                status.update(f"int8 static quantization of {name} (ONNX Runtime, QDQ)")
                out[f"{name}_int8"], quant_facts[f"{name}_int8"] = quantize_with_parity(
                    out[name], art / f"{name}.int8.onnx", calib, check, per_channel=q.per_channel,
                    activation_type=q.activation_type, calibrate_method=q.calibrate_method,
                    target=q.parity_target, keep_fp32=q.keep_fp32)
        if qat is not None:
            status.update("exporting the QAT-with-KD student (int8 QDQ ONNX)")
            out["student_qat"] = export_onnx(with_preprocessing(qat, norm), shape, art / "student_qat.int8.onnx",
                                             opset=recipe.export.opset)
        if d.fp16:
            status.update("fp16 student (ONNX)")
            out["student_fp16"] = convert_onnx_fp16(out["student"], art / "student.fp16.onnx")
        if d.dynamic_int8:
            status.update("dynamic int8 student (ONNX Runtime)")
            out["student_dynamic_int8"] = quantize_onnx_dynamic(out["student"], art / "student.dynamic_int8.onnx")
        deployable = with_preprocessing(models["student"], norm)
        if d.tflite:
            from ..deploy.tflite import export_tflite

            status.update("TFLite fp32 and int8 students (LiteRT)")
            out["student_tflite"] = export_tflite(deployable, shape, art / "student.tflite")
            out["student_tflite_int8"] = export_tflite(deployable, shape, art / "student.int8.tflite",
                                                       int8=True, calib=calib)
        if d.executorch:
            from ..deploy.executorch import export_pte

            status.update("ExecuTorch student (XNNPACK)")
            out["student_pte"] = export_pte(deployable, shape, art / "student.pte")
        spec = preprocess_spec(bundle.info, shape, bundle.spec.num_classes, list(bundle.spec.class_names))
        for path in out.values():
            if path.suffix == ".onnx":
                attach_metadata(path, spec)
        write_preprocess_json(art / "preprocess.json", spec)
        if d.c_array:
            from ..deploy.carray import write_c_array

            source = out.get("student_tflite_int8") or out.get("student_int8") or out["student"]
            write_c_array(source, art / "student_model_data.h", "g_student_model")
    for name, facts in quant_facts.items():
        kept = f", {len(facts['kept_fp32'])} node(s) kept in fp32 ({', '.join(facts['kept_fp32'])})" \
            if facts["kept_fp32"] else ""
        kept += ", 16-bit activations (int8 weights)" if facts["activation_type"].endswith("16") else ""
        kept += "" if facts["met"] else f" [yellow](below the {100 * facts['target']:.1f}% target)[/]"
        console.print(f"{name}: agrees with fp32 on {100 * facts['agreement']:.1f}% of {facts['checked_on']} "
                      f"validation inputs{kept}")
    console.print(f"artifacts: {', '.join(p.name for p in out.values())}, preprocess.json")
    return ExportResult(out, quant_facts)


def parity_split(bundle: DataBundle, seed: int, n: int = 2048) -> tuple[np.ndarray, torch.Tensor]:
    """Raw inputs the int8 parity check runs on, never the test split: the validation split, topped up to ``n``
    with training inputs (at most a third of them) held out from calibration; and the indices of those."""
    x = bundle.val.x[:n]
    take = min(max(0, n - len(x)), len(bundle.train) // 3)  # nothing taken when the validation split fills n
    held = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(seed + 7))[:take]
    return raw_inputs(torch.cat([x, bundle.train.x[held]]), bundle.info.get("normalize")), held


TEXT_SKIPS = {"tflite": "TFLite", "executorch": "ExecuTorch", "c_array": "the C array", "fp16": "fp16 ONNX"}


def export_text(recipe: Recipe, bundle: DataBundle, run_dir: Path, models: dict[str, nn.Module], *,
                console: Console | None = None) -> ExportResult:
    """The artifacts of a text run: ONNX fp32 of each model (int64 ``input_ids`` and ``attention_mask``, dynamic batch
    and sequence axes), and of each student two int8 twins for ONNX Runtime: static QDQ of its MatMul/Gemm layers,
    parity-checked like the dense students' (``quantize_with_parity``), and dynamic int8 (weights int8, activations
    quantized per batch). The tokenizer travels with them as ``artifacts/tokenizer.json``."""
    console = console or Console(quiet=True)
    spec, task = bundle.spec, Classification()
    art = run_dir / "artifacts"
    q, d = recipe.quantize, recipe.deploy
    out: dict[str, Path] = {}
    quant_facts: dict[str, dict] = {}
    onnx_args = dict(example=task.example_inputs(spec, 2, length=min(16, spec.shape[0])),
                     input_names=task.input_names(spec), dynamic_axes=task.dynamic_axes(spec))
    n_check = min(len(bundle.val), 2048)
    check = {"input_ids": bundle.val.x[:n_check].numpy(), "attention_mask": bundle.val.mask[:n_check].numpy()}
    calib = calibration_subset(bundle.train.x, bundle.train.y, q.calibration_samples, recipe.seed,
                               mask=bundle.train.mask)
    with console.status("exporting to ONNX") as status:
        for name, model in models.items():
            status.update(f"exporting {name} to ONNX")
            out[name] = export_onnx(model.eval(), None, art / f"{name}.onnx", opset=recipe.export.opset, **onnx_args)
        for name in (n for n in STUDENT_FAMILY if n in models):
            if q.enabled:
                status.update(f"int8 static quantization of {name} (ONNX Runtime, QDQ of MatMul/Gemm)")
                out[f"{name}_int8"], quant_facts[f"{name}_int8"] = quantize_with_parity(
                    out[name], art / f"{name}.int8.onnx", calib, check, per_channel=q.per_channel,
                    activation_type=q.activation_type, calibrate_method=q.calibrate_method,
                    target=q.parity_target, keep_fp32=q.keep_fp32)
        if q.enabled or d.dynamic_int8:
            status.update("dynamic int8 student (ONNX Runtime)")
            out["student_dynamic_int8"] = quantize_onnx_dynamic(out["student"], art / "student.dynamic_int8.onnx",
                                                                op_types=("MatMul", "Gemm"))
            ref = ort_predict_inputs(ort_session(out["student"]), check).argmax(1)
            agree = agreement(ort_predict_inputs(ort_session(out["student_dynamic_int8"]), check).argmax(1), ref)
            quant_facts["student_dynamic_int8"] = {
                "method": "dynamic", "agreement": agree, "met": bool(agree >= q.parity_target),
                "target": q.parity_target, "checked_on": n_check, "activation_type": "dynamic (per batch)",
                "kept_fp32": []}
        if bundle.tokenizer is not None:
            bundle.tokenizer.save(art / "tokenizer.json")
    skipped = [label for key, label in TEXT_SKIPS.items() if getattr(d, key)]
    if skipped:
        console.print(f"[yellow]not exported for text models: {', '.join(skipped)} (token-id graphs go to ONNX "
                      "Runtime here)[/]")
    for name, facts in quant_facts.items():
        console.print(f"{name}: agrees with fp32 on {100 * facts['agreement']:.1f}% of {facts['checked_on']} "
                      f"validation texts{'' if facts['met'] else ' (below the target)'}")
    console.print(f"artifacts: {', '.join(p.name for p in out.values())}"
                  + (", tokenizer.json" if bundle.tokenizer is not None else ""))
    return ExportResult(out, quant_facts)
