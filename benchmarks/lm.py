"""Language-model distillation on tiny-shakespeare, character level (recipes/shakespeare_char.yaml): one teacher,
one student size, every objective: from scratch, forward KL (kd), reverse KL (MiniLLM's objective as a plain loss),
JSD(0.5), on-policy GKD (JSD(0.5) with half the batches continued by the student) and sequence-level KD (the
student learns the teacher's greedy continuations). Per student: best and last validation loss, test loss and
perplexity, the share of the scratch-to-teacher gap closed, the int8 artifact's loss change and time per token.

    python benchmarks/lm.py                 # from the repository root; ~1 h on 2 cores; writes results/lm_shakespeare.md
    python benchmarks/lm.py --only scratch_fkl rkl   # a subset (the first run trains the teacher every other reuses)

Variants whose folder under --out-root holds a complete run are read back, not trained again (--rerun trains them).

The recipe reads ../shared/data: run it from a checkout that is a sibling of shared/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import tinykd  # noqa: E402
from tinykd.recipe import load_recipe  # noqa: E402

RECIPE = ROOT / "recipes" / "shakespeare_char.yaml"
OUT = ROOT / "benchmarks" / "results" / "lm_shakespeare.md"
# variant -> overrides on the recipe; "scratch_fkl" trains the teacher, the scratch student and the kd student
VARIANTS = {
    "scratch_fkl": [],
    "rkl": ["distill.losses=[{name: reverse_kd, temperature: 1.0, alpha: 0.5}]"],
    "jsd": ["distill.losses=[{name: jsd, beta: 0.5}]"],
    "gkd": ["distill.losses=[{name: jsd, beta: 0.5}]",
            "distill.on_policy={fraction: 0.5, prompt_tokens: 32, temperature: 1.0}"],
    "seqkd": ["distill.losses=[{name: ce}]", "distill.sequence_kd={prompt_tokens: 32}"],
    "seqkd_t1": ["distill.losses=[{name: ce}]", "distill.sequence_kd={prompt_tokens: 32, temperature: 1.0}"],
    "minillm": ["distill.losses=[{name: minillm, teacher_mix: 0.2}]",
                "distill.on_policy={fraction: 0.5, prompt_tokens: 32, temperature: 1.0, teacher_mix: 0.2}"],
}
LABELS = {"student_scratch": "from scratch (labels only)", "scratch_fkl": "forward KL + labels (kd, α 0.5)",
          "rkl": "reverse KL + labels (reverse_kd, α 0.5)", "jsd": "JSD(0.5), off-policy",
          "gkd": "on-policy GKD: JSD(0.5), λ 0.5", "seqkd": "sequence-level KD (teacher's greedy text, ce)",
          "seqkd_t1": "sequence-level KD (teacher's text sampled at T 1, ce)",
          "minillm": "MiniLLM: policy gradient, teacher mix 0.2, λ 0.5 (+ ce on corpus batches)"}


def run_variant(name: str, out_root: Path, teacher_ckpt: Path | None, threads: int) -> dict:
    overrides = [f"output_dir={out_root}", f"name={name}", f"teacher.train.threads={threads}",
                 f"student.train.threads={threads}", *VARIANTS[name]]
    if teacher_ckpt is not None:
        overrides += [f"teacher.checkpoint={teacher_ckpt}", "distill.scratch_baseline=false"]
    t0 = time.perf_counter()
    result = tinykd.run(load_recipe(RECIPE, overrides), progress=False)
    return {"metrics": result.metrics, "history": result.history, "run_dir": result.run_dir,
            "seconds": time.perf_counter() - t0}


def load_variant(name: str, out_root: Path) -> dict | None:
    """A variant whose run folder holds a complete run: its metrics and history, read back (nothing re-runs)."""
    import csv

    folder = out_root / name
    status = folder / "status.json"
    if not status.is_file() or json.loads(status.read_text()).get("status") != "complete":
        return None
    with open(folder / "history.csv", newline="") as f:
        history = [{k: (v if k == "model" else float(v)) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    for row in history:
        row["epoch"] = int(row["epoch"])
    return {"metrics": json.loads((folder / "metrics.json").read_text()), "history": history, "run_dir": folder,
            "seconds": float("nan")}


def _rows(history: list[dict], model: str) -> list[dict]:
    return [r for r in history if r.get("model") == model]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=list(VARIANTS))
    p.add_argument("--out-root", default=str(ROOT.parent / "lm_bench_runs"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rerun", action="store_true", help="train variants whose folder holds a complete run again")
    args = p.parse_args()
    out_root = Path(args.out_root)
    results = {}
    base = out_root / "scratch_fkl"
    for name in args.only:
        done = None if args.rerun else load_variant(name, out_root)
        if done is not None:  # finished by an earlier call: read back
            results[name] = done
            continue
        ckpt = None if name == "scratch_fkl" else base / "teacher" / "best.safetensors"
        results[name] = run_variant(name, out_root, ckpt, args.threads)
        print(f"{name}: test loss {results[name]['metrics']['variants']['student']['loss']:.4f} "
              f"({results[name]['seconds']:.0f} s)", flush=True)
    write_table(results, args)


def write_table(results: dict, args) -> None:
    base = results.get("scratch_fkl") or next(iter(results.values()))
    m0, h0 = base["metrics"], base["history"]
    teacher = m0["variants"]["teacher"]
    scratch = m0["variants"].get("student_scratch")
    t_rows = _rows(h0, "teacher")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [
        "# Language-model distillation: tiny-shakespeare, character level",
        "",
        f"Command: `python benchmarks/lm.py {' '.join(sys.argv[1:])}` · commit {commit} · "
        f"{dt.date.today().isoformat()} · {os.cpu_count()} cores, training at {args.threads} thread(s) per run · "
        f"load average at the end {os.getloadavg()[0]:.1f} (other jobs ran on the machine)",
        "",
        f"Teacher `{teacher['model']}` ({teacher['params']:,} parameters), students `{m0['variants']['student']['model']}` "
        f"({m0['variants']['student']['params']:,}, {teacher['params'] / m0['variants']['student']['params']:.1f}× "
        "fewer), one seed (0). Losses in nats per character on the validation / test text (the last 5 % of the "
        "corpus, never trained on); gap closed = (scratch − student) / (scratch − teacher) on test.",
        "",
        "| model | best val loss (epoch) | last val loss | test loss | test perplexity | gap closed | int8 loss change | "
        "ms / token (deployed) | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(rows):
        if not rows:
            return "—", "—"
        best = min(rows, key=lambda r: r["val_loss"])
        return f"{best['val_loss']:.4f} ({best['epoch']})", f"{rows[-1]['val_loss']:.4f}"

    b, last = fmt(t_rows)
    lines.append(f"| teacher | {b} | {last} | {teacher['loss']:.4f} | {teacher['perplexity']:.2f} | — | — | "
                 f"{teacher['ms_per_token']:.3f} ({teacher['runtime']}) | "
                 f"{sum(r['seconds'] for r in t_rows):.0f} |")
    if scratch is not None:
        b, last = fmt(_rows(h0, "student_scratch"))
        lines.append(f"| {LABELS['student_scratch']} | {b} | {last} | {scratch['loss']:.4f} | "
                     f"{scratch['perplexity']:.2f} | 0 % | — | {scratch['ms_per_token']:.3f} ({scratch['runtime']}) | "
                     f"{sum(r['seconds'] for r in _rows(h0, 'student_scratch')):.0f} |")
    for name, res in results.items():
        v = res["metrics"]["variants"]
        s, q = v["student"], v.get("student_int8") or {}
        b, last = fmt(_rows(res["history"], "student"))
        closed = "—"
        if scratch is not None and scratch["loss"] > teacher["loss"]:
            closed = f"{100 * (scratch['loss'] - s['loss']) / (scratch['loss'] - teacher['loss']):.0f} %"
        change = q.get("loss_change_vs_fp32")
        dep = res["metrics"]["deploy"]
        lines.append(f"| {LABELS[name]} | {b} | {last} | {s['loss']:.4f} | {s['perplexity']:.2f} | {closed} | "
                     f"{'—' if change is None else f'{100 * change:+.2f} %'} | {dep['ms_per_token']:.3f} "
                     f"({dep['variant']}, {dep['runtime']}) | "
                     f"{sum(r['seconds'] for r in _rows(res['history'], 'student')):.0f} |")
    r = m0["ratios"]
    lines += ["", f"Deployed int8 student vs teacher (scratch_fkl run): {r['size_reduction']:.1f}× smaller file, "
              f"{r['speedup_per_token']:.1f}× faster per token ({r['speedup_kind']}).", "",
              "## Samples (scratch_fkl run, temperature 0.8, top-k 20, seed 0)", ""]
    for row in m0["samples"]["rows"][:1]:
        lines.append(f"Prompt: `{json.dumps(row['prompt'])}`")
        lines.append("")
        for model, text in row["continuations"].items():
            lines.append(f"- **{model}**: `{json.dumps(text)}`")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
