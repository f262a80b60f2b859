"""The measurement stage: accuracy, agreement, size, MACs, latency (every variant in every runtime it has,
interleaved), parity of each converted artifact, the artifact to deploy, speed-ups, energy estimates, the
microcontroller fit and the facts of the run — the body of metrics.json."""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ..data.spec import DataBundle
from ..deploy.onnx import ort_predict, ort_predict_inputs, ort_session
from ..deploy.preprocess import raw_inputs
from ..distill.schemes import get_scheme
from ..distill.trainer import describe_device, resolve_device
from ..errors import TinyKDError
from ..measure import (agreement, classification_metrics, count_macs, count_params, file_bytes, interleaved_latency,
                       ort_timers, torch_timers)
from ..measure.accuracy import disagreement_examples
from ..recipe import Recipe
from ..tasks import Classification
from ..threads import available_cores, resolve_threads
from ..version import __version__
from .common import label
from .export import ExportResult

CLAIMS = {"accuracy_retention": [0.90, 0.97], "size_reduction_pct": [50, 70], "speedup": [2, 5]}
PARITY_MIN = 0.99  # an artifact agreeing with its fp32 PyTorch source on fewer test predictions is flagged


# runtime of each non-PyTorch artifact variant, and the fp32 model it was made from
ARTIFACT_RUNTIMES = {"student_int8": ("ort_int8", "student"), "student_pruned_int8": ("ort_int8", "student_pruned"),
                     "student_lowrank_int8": ("ort_int8", "student_lowrank"), "student_qat": ("ort_int8", "student"),
                     "student_fp16": ("ort_fp16", "student"), "student_dynamic_int8": ("ort_dynamic_int8", "student"),
                     "student_tflite": ("tflite", "student"), "student_tflite_int8": ("tflite_int8", "student"),
                     "student_pte": ("executorch", "student")}


def _runner(runtime: str, path: Path, shape: tuple[int, ...], m, make_inputs=None) -> tuple:
    """(predict(raw x) -> logits array, {batch: timed call}) for an artifact in its own runtime; ``make_inputs``:
    the timed inputs of token-id models (``Task.example_inputs``)."""
    if runtime.startswith("ort"):
        sess = ort_session(path, threads=m.threads)
        predict = (lambda x: ort_predict_inputs(sess, x)) if make_inputs else (lambda x: ort_predict(sess, x))
        return predict, ort_timers(sess, shape, m.batch_sizes, make_inputs=make_inputs)
    if runtime.startswith("tflite"):
        from ..deploy.tflite import tflite_predict, tflite_timer

        return (lambda x: tflite_predict(path, x, threads=m.threads)), {"b1": tflite_timer(path, threads=m.threads)}
    from ..deploy.executorch import pte_predict, pte_timer

    return (lambda x: pte_predict(path, x)), {"b1": pte_timer(path, shape)}


def measure(recipe: Recipe, bundle: DataBundle, run_dir: Path, models: dict[str, nn.Module], exported: ExportResult, *,
            console: Console | None = None) -> dict:
    """Accuracy, agreement, size, MACs and latency of every variant. PyTorch models run on standardised inputs,
    artifacts on raw ones (their graphs standardise). Latency: every variant in every runtime it has, interleaved."""
    console = console or Console(quiet=True)
    artifacts, quantization = exported.artifacts, exported.quantization
    m, spec, test = recipe.measure, bundle.spec, bundle.test
    shape = tuple(spec.shape)
    y = test.y.numpy()
    task = Classification()
    text = spec.modality == "text"
    if text:  # token ids: timed and counted at the stated sequence length, test texts at their own lengths
        length = m.sequence_length or spec.shape[0]
        make_inputs = lambda b: task.example_inputs(spec, b, length=length)  # noqa: E731
        raw_test = (test.x, test.mask)
        onnx_predict = ort_predict_inputs
    else:
        make_inputs = None
        raw_test = raw_inputs(test.x, bundle.info.get("normalize"))
        onnx_predict = ort_predict
    preds: dict[str, np.ndarray] = {}
    timers: dict[str, dict[str, dict]] = {}
    extras: dict[str, dict] = {}
    with console.status("measuring accuracy") as status:
        for name, model in models.items():
            status.update(f"accuracy of {name}")
            preds[name] = task.predict(model, test).argmax(1).numpy()
            sess = ort_session(artifacts[name], threads=m.threads)
            timers[name] = {"pytorch": torch_timers(model, shape, m.batch_sizes, make_inputs=make_inputs),
                            "ort_fp32": ort_timers(sess, shape, m.batch_sizes, make_inputs=make_inputs)}
            extras[name] = {"onnx_agreement": agreement(onnx_predict(sess, raw_test).argmax(1), preds[name])}
        for name, (runtime, source) in ARTIFACT_RUNTIMES.items():
            if name not in artifacts:
                continue
            status.update(f"accuracy of {name}")
            predict, timer = _runner(runtime, artifacts[name], shape, m, make_inputs)
            timers[name] = {runtime: timer}
            preds[name] = predict(raw_test).argmax(1)
            agree = agreement(preds[name], preds[source])
            extras[name] = {"agreement_with_fp32_student": agree, "fp32_source": source,
                            "parity_flag": bool(agree < PARITY_MIN)}
            if name in quantization:
                extras[name]["quantization"] = quantization[name]
            if agree < PARITY_MIN:
                console.print(f"[yellow]{name}: agrees with the fp32 {source} on {100 * agree:.1f}% of test "
                              f"predictions (< {100 * PARITY_MIN:.0f}%)[/]")
        status.update(f"timing {sum(len(t) for t in timers.values())} variant/runtime pairs, interleaved "
                      f"({m.rounds} rounds)")
        flat = {f"{n}|{rt}": t for n, per in timers.items() for rt, t in per.items()}
        timed = interleaved_latency(flat, warmup=m.warmup, repeats=m.repeats, rounds=m.rounds, threads=m.threads)
    variants: dict[str, dict] = {}
    for name in timers:
        latency = {rt: timed[f"{name}|{rt}"] for rt in timers[name]}
        if name in models:
            model = models[name]
            variants[name] = _variant(name, preds[name], y, spec, latency, "pytorch",
                                      model_name=_model_name(recipe, name, model), params=count_params(model),
                                      macs=count_macs(model, shape, inputs=make_inputs(1) if text else None),
                                      artifact=artifacts[name], run_dir=run_dir,
                                      extra=extras[name])
            sparsity = _sparsity(model)
            if sparsity > 0.01:
                variants[name]["sparsity"] = sparsity
        else:
            source = variants[ARTIFACT_RUNTIMES[name][1]]
            variants[name] = _variant(name, preds[name], y, spec, latency, ARTIFACT_RUNTIMES[name][0],
                                      model_name=source["model"], params=source["params"], macs=source["macs"],
                                      artifact=artifacts[name], run_dir=run_dir, extra=extras[name])
    for name, v in variants.items():
        v["agreement_with_teacher"] = agreement(preds[name], preds["teacher"])
        v["energy"] = _energy(recipe, name, v, artifacts)
    deploy = _deploy_choice(variants)
    out = {
        "run": _run_facts(recipe, bundle, run_dir),
        "variants": variants,
        "deploy": deploy,
        "speedups": _speedups(variants, deploy),
        "latency_quality": _latency_quality(timed, m),
        "ratios": _ratios(variants["teacher"], variants[deploy["variant"]], deploy)
        | {"compared": f"{deploy['variant']} vs teacher"},
        "claims": CLAIMS,
    }
    if out["latency_quality"]["noisy"]:
        console.print(f"[yellow]latency: {len(out['latency_quality']['noisy'])} of "
                      f"{sum(len(per) for per in timed.values())} timings were noisy (p90 / median or the spread across rounds too high): another process "
                      "competed for the cores; rerun on an idle machine before trusting the speed-ups[/]")
    if text:
        out["inputs"] = {"kind": "token ids", "sequence_length": length,
                         "what": f"latency and MACs per text of {length} tokens; accuracy on the test texts as they are"}
        texts = (bundle.texts or {}).get("test")
        if texts:
            out["examples"] = disagreement_examples(texts, y, preds["teacher"], preds[deploy["variant"]],
                                                    list(spec.class_names)) | {"student_variant": deploy["variant"]}
        return out  # no microcontroller fit: token-id graphs are not TensorFlow Lite Micro models here
    fit = _mcu(recipe, artifacts, variants, console)
    if fit:
        out["mcu"] = fit
    return out


def _deploy_choice(variants: dict) -> dict:
    """The artifact to deploy: the fastest at batch 1 among the distilled student's artifacts (its fp32 ONNX in ONNX
    Runtime and every artifact made from it) that agree with the fp32 student on ≥ PARITY_MIN of the test
    predictions; when none does, the one that agrees most."""
    s = variants["student"]
    cands = [{"variant": "student", "runtime": "ort_fp32", "artifact": s["artifact"],
              "latency_ms_b1": s["latency"]["ort_fp32"]["b1"]["median_ms"], "agreement": s["onnx_agreement"]}]
    cands += [{"variant": n, "runtime": v["runtime"], "artifact": v["artifact"], "latency_ms_b1": v["latency_ms_b1"],
               "agreement": v["agreement_with_fp32_student"]}
              for n, v in variants.items() if v.get("fp32_source") == "student"]
    for c in cands:
        c["passes_parity"] = bool(c["agreement"] >= PARITY_MIN)
    passing = [c for c in cands if c["passes_parity"]]
    pick = min(passing, key=lambda c: c["latency_ms_b1"]) if passing else max(cands, key=lambda c: c["agreement"])
    rule = (f"fastest at batch 1 on this machine of the artifacts that agree with the fp32 student on "
            f"≥ {100 * PARITY_MIN:.0f}% of test predictions" if passing
            else "no artifact passes the parity check: the one that agrees most")
    return {**pick, "rule": rule, "candidates": cands}


def _median(latency: dict, runtime: str, batch: str) -> float | None:
    """The median latency of one runtime at one batch size, or None where it was not timed."""
    return ((latency.get(runtime) or {}).get(batch) or {}).get("median_ms")


def _speedups(variants: dict, deploy: dict) -> dict:
    """Batch-1 (and larger-batch) speed-ups, each labelled with what it compares."""
    def ratio(a, b):
        return float(a) / float(b) if a and b else None

    t, s = variants["teacher"], variants["student"]
    batches = [k for k in t["latency"]["pytorch"]]
    out = {"same_runtime": {"what": "teacher vs distilled student, both fp32 in ONNX Runtime",
                            **{b: ratio(_median(t["latency"], "ort_fp32", b), _median(s["latency"], "ort_fp32", b))
                               for b in batches}}}
    if "student_int8" in variants:
        q = variants["student_int8"]
        out["int8_vs_fp32"] = {"what": "int8 vs fp32 distilled student, both in ONNX Runtime",
                               **{b: ratio(_median(s["latency"], "ort_fp32", b), _median(q["latency"], "ort_int8", b))
                                  for b in batches}}
    d = variants[deploy["variant"]]["latency"]
    out["deployed"] = {"what": f"teacher in its fastest runtime ({t['best_runtime']}) vs the artifact to deploy "
                               f"({deploy['artifact']}, {deploy['runtime']})",
                       **{b: ratio(min(x[b]["median_ms"] for x in t["latency"].values() if b in x),
                                   _median(d, deploy["runtime"], b)) for b in batches}}
    return out


def _latency_quality(timed: dict, m) -> dict:
    """How far the timings can be trusted: the worst p90 / median and round spread, and the noisy timings."""
    stats = [(key, b, s) for key, per in timed.items() for b, s in per.items()]
    return {"rounds": m.rounds, "repeats": m.repeats, "threads": m.threads,
            "max_p90_over_median": max((s["p90_ms"] / s["median_ms"] for _, _, s in stats if s["median_ms"]),
                                       default=None),
            "max_round_spread": max((s.get("round_spread", 1.0) for _, _, s in stats), default=None),
            "noisy": [f"{key.replace('|', ' in ')} at {b}" for key, b, s in stats if s["noisy"]]}


def _sparsity(model: nn.Module) -> float:
    from ..compress.prune import sparsity_report

    return float(sparsity_report(model)["sparsity"])


INT8_RUNTIMES = ("ort_int8", "ort_dynamic_int8", "tflite_int8")


def _energy(recipe: Recipe, name: str, variant: dict, artifacts: dict) -> dict | None:
    """Estimated energy of one inference from the variant's MACs and its ONNX graph's bytes (module energy)."""
    from ..measure.energy import onnx_inference_energy

    runtime = variant.get("runtime", "pytorch")
    dtype = "int8" if runtime in INT8_RUNTIMES else "fp16" if runtime == "ort_fp16" else "fp32"
    source = variant.get("fp32_source", name)
    graph = artifacts.get(source)
    if graph is None or not variant.get("macs"):
        return None
    try:
        return onnx_inference_energy(graph, variant["macs"], dtype=dtype, memory=recipe.energy.memory)
    except TinyKDError:
        return None


def _mcu(recipe: Recipe, artifacts: dict, variants: dict, console: Console) -> dict | None:
    """Flash and SRAM of the deployable int8 student against each board of ``deploy.boards``."""
    from ..deploy.mcu import TFLM_FLASH_BYTES, TFLM_SRAM_BYTES, fit_check, get_board
    from ..measure.memory import peak_activation_memory

    name = "student_tflite_int8" if "student_tflite_int8" in artifacts else "student_int8"
    if name not in artifacts:
        return None
    d = recipe.deploy
    flash = file_bytes(artifacts[name])
    act = (variants[name].get("quantization") or {}).get("activation_type", "uint8")
    peak = peak_activation_memory(artifacts["student"], activation_bytes=2 if act.endswith("16") else 1)
    boards = {}
    notes = {}
    for spec in d.boards:
        board = get_board(spec)
        boards[board.name] = fit_check(flash, peak.peak_bytes, board).as_dict()
        notes[board.name] = board.notes
    target = None
    if d.target_board is not None:
        board = get_board(d.target_board)
        target = board.name
        boards[board.name] = fit_check(flash, peak.peak_bytes, board).as_dict()
        notes[board.name] = board.notes
    console.print("microcontroller fit of " + name + ": " + "; ".join(
        f"{b} {'fits' if f['fits'] else 'does NOT fit'}" for b, f in boards.items()))
    return {"variant": name, "artifact": variants[name]["artifact"], "flash_bytes": flash,
            "peak_sram_bytes": peak.peak_bytes, "peak_node": f"{peak.node} ({peak.op_type})",
            "runtime_flash_bytes": TFLM_FLASH_BYTES, "runtime_sram_bytes": TFLM_SRAM_BYTES,
            "target_board": target, "boards": boards, "notes": notes}


def _variant(name: str, pred, y, spec, latency: dict, runtime: str, *, model_name: str, params: int, macs: int,
             artifact: Path, run_dir: Path, extra: dict) -> dict:
    acc = classification_metrics(y, pred, spec.num_classes)
    primary = latency[runtime]
    v = {"label": label(name), "model": model_name, "runtime": runtime,
         "accuracy": acc["accuracy"], "macro_f1": acc["macro_f1"], "params": params,
         "file_bytes": file_bytes(artifact), "artifact": str(artifact.relative_to(run_dir)), "macs": macs,
         "latency_ms_b1": primary["b1"]["median_ms"], "latency_ms_b1_p90": primary["b1"]["p90_ms"]}
    for key, val in primary.items():
        if key != "b1":
            v[f"latency_ms_{key}"] = val["median_ms"]
    best = min(latency, key=lambda rt: latency[rt]["b1"]["median_ms"])
    v.update({"best_runtime": best, "latency_ms_b1_best": latency[best]["b1"]["median_ms"],
              "latency_noisy": any(s.get("noisy", False) for per in latency.values() for s in per.values())})
    v.update({"latency": latency, "per_class_accuracy": acc["per_class_accuracy"], "confusion": acc["confusion"]})
    v.update(extra)
    return v


def _model_name(recipe: Recipe, name: str, model: nn.Module) -> str:
    if not type(model).__module__.startswith("tinykd"):
        return type(model).__name__
    extra = get_scheme(recipe.distill.scheme).variant_configs(recipe.distill)
    cfg = recipe.teacher if name in ("teacher", "teacher_pruned") else extra.get(name, recipe.student)
    return cfg.model


def _ratios(teacher: dict, final: dict, deploy: dict) -> dict:
    """The artifact to deploy against the teacher; the speed-up is deployed: each in its fastest runtime."""
    def ratio(a, b):
        return float(a) / float(b) if a and b else None
    return {"size_reduction": ratio(teacher["file_bytes"], final["file_bytes"]),
            "macs_reduction": ratio(teacher["macs"], final["macs"]),
            "speedup_b1": ratio(teacher["latency_ms_b1_best"], deploy["latency_ms_b1"]),
            "speedup_kind": f"deployed: teacher in {teacher['best_runtime']}, {deploy['variant']} in {deploy['runtime']}",
            "accuracy_retention": ratio(final["accuracy"], teacher["accuracy"])}


def _run_facts(recipe: Recipe, bundle: DataBundle, run_dir: Path) -> dict:
    return {"name": recipe.name, "run_dir": str(run_dir), "dataset": bundle.name, "seed": recipe.seed,
            "created": dt.datetime.now().isoformat(timespec="seconds"), "tinykd": __version__,
            "spec": bundle.spec.to_dict(), "data_info": bundle.info,
            "split_sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test),
                            **({"unlabelled": len(bundle.unlabelled)} if bundle.unlabelled is not None else {})},
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "torch": torch.__version__, "system": platform.system(),
                        "available_cores": available_cores(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        # training and timing use their own thread counts: one "threads" fact would hide either
                        "train_threads": resolve_threads(recipe.student.train.threads),
                        **({"teacher_train_threads": resolve_threads(recipe.teacher.train.threads)}
                           if recipe.teacher.train.threads != recipe.student.train.threads else {}),
                        "measure_threads": recipe.measure.threads,
                        "train_device": describe_device(resolve_device(recipe.student.train.device))}}
