"""The export and measure stages of a language-model run (``spec.task == "causal_lm"``).

Export: ONNX fp32 of every model (int64 ``input_ids`` with dynamic batch and sequence axes, logits (B, T, vocab)),
and the distilled student's int8 twin for ONNX Runtime (dynamic quantization: int8 weights of every MatMul/Gemm,
activations quantized per call; the exporter's per-node debugging metadata is dropped), checked against the fp32 student on validation blocks: next-token agreement and
the change of the per-token loss. The tokenizer travels with them as ``artifacts/tokenizer.json``.

Measure: per variant the test loss (nats per token), perplexity and next-token accuracy (PyTorch models and ONNX
artifacts alike, batch by batch: an N x T x vocab array is never held), the size, parameters, MACs per block, and
the time per generated token at batch 1 with fixed-context decoding (one forward pass over the context window per
token), interleaved across variants; the share of the scratch-to-teacher loss gap the distilled student closes;
and samples continued from the same prompts with the same seed by every model.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ..compress.quantize import quantize_onnx_dynamic
from ..data.spec import DataBundle, Split
from ..deploy.onnx import export_onnx, ort_session, strip_node_metadata
from ..tasks.causal_lm import CausalLM, sample_next, token_sums
from ..measure import count_params, file_bytes
from ..measure.cost import count_macs
from ..measure.latency import interleaved_latency, ort_timers, torch_timers
from ..recipe import Recipe
from .export import ExportResult

LOSS_CHANGE_MAX = 0.02  # the int8 student's per-token loss may exceed the fp32 student's by at most 2 %
INT8 = "student_int8"


def export_lm(recipe: Recipe, bundle: DataBundle, run_dir: Path, models: dict[str, nn.Module], *,
              console: Console | None = None) -> ExportResult:
    """ONNX fp32 of every model and the dynamic int8 student (module docstring), with its parity facts."""
    console = console or Console(quiet=True)
    spec, task = bundle.spec, CausalLM()
    art = run_dir / "artifacts"
    out: dict[str, Path] = {}
    facts: dict[str, dict] = {}
    args = dict(example=task.example_inputs(spec, 2, length=min(16, spec.shape[0])),
                input_names=task.input_names(spec), dynamic_axes=task.dynamic_axes(spec))
    with console.status("exporting to ONNX") as status:
        for name, model in models.items():
            status.update(f"exporting {name} to ONNX")
            out[name] = strip_node_metadata(export_onnx(model.eval(), None, art / f"{name}.onnx",
                                                        opset=recipe.export.opset, **args))
        if recipe.quantize.enabled or recipe.deploy.dynamic_int8:
            status.update("int8 student (ONNX Runtime, dynamic: int8 weights of every MatMul/Gemm)")
            out[INT8] = quantize_onnx_dynamic(out["student"], art / "student.int8.onnx", op_types=("MatMul", "Gemm"))
            check = bundle.val.take(torch.arange(min(len(bundle.val), 256)))
            facts[INT8] = int8_parity(out["student"], out[INT8], check)
        if bundle.tokenizer is not None:
            bundle.tokenizer.save(art / "tokenizer.json")
    for name, f in facts.items():
        console.print(f"{name}: next-token agreement with the fp32 student {100 * f['agreement']:.2f}%, loss "
                      f"{f['loss_fp32']:.4f} → {f['loss_int8']:.4f} ({100 * f['loss_change']:+.2f}%) on "
                      f"{f['checked_tokens']:,} validation tokens{'' if f['met'] else ' (above the 2% target)'}")
    console.print(f"artifacts: {', '.join(p.name for p in out.values())}"
                  + (", tokenizer.json" if bundle.tokenizer is not None else ""))
    return ExportResult(out, facts)


def ort_token_scores(session, split: Split, batch_size: int = 32) -> tuple[dict, np.ndarray]:
    """Per-token loss, perplexity and next-token accuracy of an ONNX language model on ``split``, and its
    next-token predictions at the scored positions (flattened, in split order)."""
    task = CausalLM()
    loss = correct = tokens = 0
    preds = []
    for i in range(0, len(split), batch_size):
        batch = task.collate(split, torch.arange(i, min(i + batch_size, len(split))))
        logits = torch.from_numpy(session.run(None, {"input_ids": batch.x.numpy()})[0])
        l_, c, n = token_sums(logits, batch.y)
        loss, correct, tokens = loss + l_, correct + c, tokens + n
        preds.append(logits[batch.y >= 0].argmax(-1).numpy())
    mean = loss / max(1, tokens)
    return ({"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "accuracy": correct / max(1, tokens),
             "tokens": tokens}, np.concatenate(preds) if preds else np.zeros(0, np.int64))


def int8_parity(fp32: Path, int8: Path, split: Split) -> dict:
    """How the int8 artifact's next-token predictions and loss compare with the fp32 one's on ``split``."""
    ref, ref_pred = ort_token_scores(ort_session(fp32), split)
    got, got_pred = ort_token_scores(ort_session(int8), split)
    change = got["loss"] / ref["loss"] - 1.0 if ref["loss"] > 0 else 0.0
    return {"method": "dynamic", "activation_type": "dynamic (per call)", "kept_fp32": [],
            "agreement": float((got_pred == ref_pred).mean()) if len(ref_pred) else float("nan"),
            "loss_fp32": ref["loss"], "loss_int8": got["loss"], "loss_change": change,
            "met": bool(change <= LOSS_CHANGE_MAX), "target": f"loss within +{100 * LOSS_CHANGE_MAX:.0f}%",
            "checked_on": len(split), "checked_tokens": ref["tokens"]}


def _torch_scores(model: nn.Module, split: Split) -> tuple[dict, np.ndarray]:
    task = CausalLM()
    scores = task.evaluate(model, split)
    preds = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(split), 64):
            batch = task.collate(split, torch.arange(i, min(i + 64, len(split))))
            preds.append(task.logits(model, batch)[batch.y >= 0].argmax(-1).numpy())
    model.train(was)
    scores["tokens"] = int((split.y >= 0).sum())
    return scores, np.concatenate(preds) if preds else np.zeros(0, np.int64)


def _prompts(recipe: Recipe, bundle: DataBundle) -> list[torch.Tensor]:
    g = recipe.measure.generate
    tok = bundle.tokenizer
    if g.prompts:
        if tok is None:
            return []
        return [torch.tensor(tok._pieces([p])[0] or [2]) for p in g.prompts]
    test = bundle.test
    picks = torch.linspace(0, len(test) - 1, g.samples).long().unique() if len(test) else torch.zeros(0).long()
    out = []
    for i in picks.tolist():
        real = int(test.mask[i].sum()) if test.mask is not None else test.x.shape[1]
        out.append(test.x[i, :max(1, min(g.prompt_tokens, real))])
    return out


def decode(bundle: DataBundle, ids: list[int]) -> str:
    """Text of token ids (``TextTokenizer.decode``: special tokens dropped; exact for char and byte_bpe)."""
    tok = bundle.tokenizer
    if tok is None:
        return " ".join(map(str, ids))
    return tok.decode(ids)


def _ort_generate(session, prompt: torch.Tensor, n: int, context: int, temperature: float, top_k: int | None,
                  seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = prompt[None]
    for _ in range(n):
        logits = torch.from_numpy(session.run(None, {"input_ids": ids[:, -context:].numpy()})[0])[:, -1].float()
        ids = torch.cat([ids, sample_next(logits, temperature, top_k, gen)[:, None]], 1)
    return ids[0]


def samples(recipe: Recipe, bundle: DataBundle, models: dict[str, nn.Module], artifacts: dict[str, Path]) -> dict:
    """The report's samples: each prompt continued by every model with the same settings and seed."""
    g, task, context = recipe.measure.generate, CausalLM(), bundle.spec.shape[0]
    rows = []
    for j, prompt in enumerate(_prompts(recipe, bundle)):
        row = {"prompt": decode(bundle, prompt.tolist()), "continuations": {}}
        for name, model in models.items():
            ids = task.generate(model, prompt, g.max_new_tokens, context=context, temperature=g.temperature,
                                top_k=g.top_k, seed=g.seed + j)[0]
            row["continuations"][name] = decode(bundle, ids[len(prompt):].tolist())
        if INT8 in artifacts:
            ids = _ort_generate(ort_session(artifacts[INT8]), prompt, g.max_new_tokens, context, g.temperature,
                                g.top_k, g.seed + j)
            row["continuations"][INT8] = decode(bundle, ids[len(prompt):].tolist())
        rows.append(row)
    return {"settings": g.model_dump(), "context": context, "rows": rows}


def measure_lm(recipe: Recipe, bundle: DataBundle, run_dir: Path, models: dict[str, nn.Module],
               exported: ExportResult, *, console: Console | None = None) -> dict:
    """metrics.json of a language-model run (module docstring)."""
    from .measure import _model_name, _run_facts  # the shared run facts

    console = console or Console(quiet=True)
    m, spec, test = recipe.measure, bundle.spec, bundle.test
    artifacts = exported.artifacts
    task, context = CausalLM(), spec.shape[0]
    make = lambda b: task.example_inputs(spec, b, length=context)  # noqa: E731
    variants: dict[str, dict] = {}
    timers: dict[str, dict] = {}
    preds: dict[str, np.ndarray] = {}
    with console.status("measuring perplexity") as status:
        for name, model in models.items():
            status.update(f"test perplexity of {name}")
            scores, preds[name] = _torch_scores(model, test)
            sess = ort_session(artifacts[name], threads=m.threads)
            onnx_scores, onnx_pred = ort_token_scores(sess, test)
            timers[name] = {"pytorch": torch_timers(model, (context,), [1], make_inputs=make),
                            "ort_fp32": ort_timers(sess, (context,), [1], make_inputs=make)}
            variants[name] = {"model": _model_name(recipe, name, model), "params": count_params(model),
                              "macs": count_macs(model, (context,), inputs=make(1)),
                              "file_bytes": file_bytes(artifacts[name]), "artifact": artifacts[name].name,
                              **_rounded(scores), "onnx_loss": onnx_scores["loss"],
                              "onnx_agreement": float((onnx_pred == preds[name]).mean())}
        if INT8 in artifacts:
            status.update("test perplexity of the int8 student")
            sess = ort_session(artifacts[INT8], threads=m.threads)
            scores, preds[INT8] = ort_token_scores(sess, test)
            timers[INT8] = {"ort_dynamic_int8": ort_timers(sess, (context,), [1], make_inputs=make)}
            source = variants["student"]
            variants[INT8] = {"model": source["model"], "params": source["params"], "macs": source["macs"],
                              "file_bytes": file_bytes(artifacts[INT8]), "artifact": artifacts[INT8].name,
                              **_rounded(scores),
                              "agreement_with_fp32_student": float((preds[INT8] == preds["student"]).mean()),
                              "loss_change_vs_fp32": scores["loss"] / source["loss"] - 1.0,
                              "quantization": exported.quantization.get(INT8)}
        status.update(f"timing {sum(len(t) for t in timers.values())} variant/runtime pairs at batch 1, "
                      f"{context} tokens of context, interleaved ({m.rounds} rounds)")
        flat = {f"{n}|{rt}": t for n, per in timers.items() for rt, t in per.items()}
        timed = interleaved_latency(flat, warmup=m.warmup, repeats=m.repeats, rounds=m.rounds, threads=m.threads)
    for name, per in timers.items():
        latency = {rt: timed[f"{name}|{rt}"]["b1"] for rt in per}
        best = min(latency, key=lambda rt: latency[rt]["median_ms"])
        v = variants[name]
        v["latency"] = latency
        v["runtime"] = best
        v["ms_per_token"] = latency[best]["median_ms"]
        v["tokens_per_second"] = 1000.0 / v["ms_per_token"] if v["ms_per_token"] else None
        v["agreement_with_teacher"] = float((preds[name] == preds["teacher"]).mean())
    deployed = INT8 if INT8 in variants else "student"
    t, s, d = variants["teacher"], variants.get("student_scratch"), variants[deployed]
    gap = None
    if s is not None and s["loss"] > t["loss"]:
        gap = {"scratch_loss": s["loss"], "student_loss": variants["student"]["loss"], "teacher_loss": t["loss"],
               "closed": (s["loss"] - variants["student"]["loss"]) / (s["loss"] - t["loss"])}
    return {
        "run": _run_facts(recipe, bundle, run_dir) | {"context": context},
        "task": task.report(),
        "variants": variants,
        "deploy": {"variant": deployed, "runtime": d["runtime"], "ms_per_token": d["ms_per_token"],
                   "file_bytes": d["file_bytes"]},
        "ratios": {"size_reduction": t["file_bytes"] / d["file_bytes"],
                   "speedup_per_token": t["ms_per_token"] / d["ms_per_token"] if d["ms_per_token"] else None,
                   "speedup_kind": f"teacher in {t['runtime']}, {deployed} in {d['runtime']}, batch 1, "
                                   f"{context}-token context",
                   "perplexity_ratio": d["perplexity"] / t["perplexity"],
                   "params_reduction": t["params"] / max(1, d["params"])},
        "gap": gap,
        "samples": samples(recipe, bundle, models, artifacts),
        "latency_quality": {"noisy": sorted(k for k, v in timed.items() if v["b1"].get("noisy"))},
    }


def _rounded(scores: dict) -> dict:
    return {"loss": float(scores["loss"]), "perplexity": float(scores["perplexity"]),
            "next_token_accuracy": float(scores["accuracy"]), "tokens": int(scores.get("tokens", 0))}
