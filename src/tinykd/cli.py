"""The `tinykd` command line. User errors print a message with a fix (no traceback) and exit 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import TinyKDError, TrainingError

def cmd_run(args, console: Console) -> int:
    from . import distributed as dist

    if args.nproc is not None:
        return launch_run(args)
    if args.run_dir and args.resume:
        raise TinyKDError("--run-dir names the folder of a new run, and --resume the folder of an earlier one",
                          f"drop --run-dir: `tinykd run --resume {args.resume}` continues in that folder")
    if dist.init() and not dist.is_main():
        console = Console(quiet=True)  # rank 0 prints the run
    try:
        return _run(args, console)
    finally:
        dist.shutdown()


def _run(args, console: Console) -> int:
    from . import distributed as dist
    from .pipeline import resume_recipe, run

    stage_console = Console(quiet=True) if args.quiet else console

    if args.resume:
        changes = ([args.recipe] if args.recipe else []) + list(args.overrides)
        if any("=" not in c for c in changes):
            raise TinyKDError("--resume takes the run directory and, optionally, changed settings (key=value)",
                              "drop the recipe: the run's saved recipe is used; a learning rate may change, e.g. "
                              f"tinykd run --resume {args.resume} student.train.lr=0.001")
        recipe = resume_recipe(args.resume, changes)
        result = run(recipe, run_dir=args.resume, resume=True, console=stage_console, progress=not args.quiet)
        if result.complete and args.quiet:
            console.print(f"run {result.run_dir} is already complete: nothing was re-run or overwritten")
    else:
        recipe = new_run_recipe(args)
        unfinished = None if args.run_dir or not dist.is_main() else unfinished_run(recipe)
        if unfinished:
            print(f"{unfinished} exists and did not finish; `tinykd run --resume {unfinished}` continues it",
                  file=sys.stderr)
        result = run(recipe, run_dir=args.run_dir, console=stage_console, progress=not args.quiet)
    if not dist.is_main():
        return 0  # rank 0 exports, measures and reports
    print_summary(result.metrics, console)
    console.print(f"\nrun directory: {result.run_dir}")
    if (result.run_dir / "report.html").is_file():
        console.print(f"report: [bold green]{result.report}[/]")
    return 0


def launch_run(args) -> int:
    """``tinykd run ... --nproc N``: the run folder is claimed here, before the processes start; then torchrun starts
    N processes on this machine that run the recipe in it. Their exit status is returned."""
    import os
    import shlex
    import subprocess

    import torch

    from . import distributed as dist
    from .pipeline import claim_run_dir
    from .threads import available_cores

    n = args.nproc
    if n < 1:
        raise TinyKDError(f"--nproc {n}: a run needs at least one process", "give --nproc 1 or more, e.g. --nproc 2")
    if dist.launched():
        raise TinyKDError("--nproc starts torchrun, and this process already runs under torchrun",
                          "drop --nproc: torchrun's --nproc_per_node sets the processes")
    if args.run_dir and args.resume:
        raise TinyKDError("--run-dir names the folder of a new run, and --resume the folder of an earlier one",
                          f"drop --run-dir: `tinykd run --resume {args.resume} --nproc {n}` continues in that folder")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else available_cores()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and n > gpus:
        raise TinyKDError(f"--nproc {n}: each process trains on a GPU of its own, and torch sees {gpus}",
                          f"give --nproc {gpus} or fewer (or hide the GPUs, CUDA_VISIBLE_DEVICES=, to train on the CPU)")
    if not gpus and n > cores:
        print(f"warning: --nproc {n} on {cores} CPU core(s): the processes share cores and train slower than "
              f"--nproc {cores}", file=sys.stderr)
    forwarded = ([args.recipe] if args.recipe else []) + list(args.overrides)
    forwarded += ["--resume", args.resume] if args.resume else []
    forwarded += ["--name", args.name] if args.name is not None else []
    forwarded += ["--quiet"] if args.quiet else []
    claimed = None
    if not args.resume:
        recipe = new_run_recipe(args)  # a recipe error is reported here, before any process starts
        unfinished = unfinished_run(recipe)
        if unfinished:
            print(f"{unfinished} exists and did not finish; `tinykd run --resume {unfinished}` continues it",
                  file=sys.stderr)
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            run_dir = claimed = claim_run_dir(recipe)
        forwarded += ["--run-dir", str(run_dir)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "tinykd.cli", "run", *forwarded]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // n)))  # each process its share of the cores
    print(f"starting {n} processes: {shlex.join(command)}", file=sys.stderr)
    try:
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:
        return 130  # torchrun passed the interrupt to its processes
    finally:
        if claimed is not None and claimed.is_dir() and not any(claimed.iterdir()):
            claimed.rmdir()  # the processes failed before writing anything: no empty run folder is left


def new_run_recipe(args):
    """The recipe of a new ``tinykd run``: the file given (else the bundled default), overrides, ``--name``."""
    from .recipe import default_recipe_path, load_recipe

    source = args.recipe
    overrides = list(args.overrides)
    if source and "=" in source and not Path(source).exists():
        overrides.insert(0, source)  # `tinykd run a.b=c` overrides the default recipe
        source = None
    recipe = load_recipe(source or default_recipe_path(), overrides)
    if args.name is not None:
        from .recipe import check_run_name
        try:
            check_run_name(args.name)
        except ValueError as exc:
            raise TinyKDError(f"--name {args.name!r}: {exc}", "give a name without '/', e.g. --name mnist-lr3") from None
        recipe = recipe.model_copy(update={"name": args.name})  # a recipe is frozen: a renamed copy
    return recipe


def unfinished_run(recipe) -> Path | None:
    """``<output_dir>/<name>`` when an earlier run there stopped before the end (a saved recipe, no metrics.json):
    a new run goes to ``<name>-2``, so the user may have meant ``--resume``."""
    folder = Path(recipe.output_dir) / recipe.name
    if (folder / "recipe.yaml").is_file() and not (folder / "metrics.json").is_file():
        return folder
    return None


SUMMARY_HEADERS = ("variant", "acc %", "F1", "agree %", "params", "file", "MACs", "b1 ms", "b32 ms")


def summary_table(metrics: dict, width: int) -> Table:
    """The summary table of a run (same rows as the report's): boxed when that fits ``width`` columns, else
    without the box, then with columns one space apart. Units sit in the headers; no cell is cut short with an
    ellipsis: a console too narrow even for that wraps a variant name instead."""
    from rich import box

    from .report import format_bytes, format_count, summary_rows

    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    def ms(v):
        return "—" if v is None else f"{v:.3f}"
    cells = [(r["variant"], pct(r["accuracy"]), "—" if r["macro_f1"] is None else f"{r['macro_f1']:.3f}",
              pct(r["agreement"]), format_count(r["params"]), format_bytes(r["file_bytes"]),
              format_count(r["macs"]), ms(r["latency_ms_b1"]), ms(r["latency_ms_b32"]))
             for r in summary_rows(metrics)]
    title = "tinykd summary (test split; F1 = macro-F1, agree = same prediction as the teacher)"

    def build(style: dict) -> Table:
        table = Table(title=title, title_justify="left", **style)
        for col in SUMMARY_HEADERS:
            table.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")
        for row in cells:
            table.add_row(*row)
        return table
    compact = dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for style in ({}, {**compact, "padding": (0, 1)}, {**compact, "padding": (0, 0)}):  # widest first
        table = build(style)
        if Console(width=max(width, 1000)).measure(table).maximum <= width:
            break
    return table


def print_summary(metrics: dict, console: Console) -> None:
    """The summary table of a run and, when measured, the final student's factors against the teacher."""
    if (metrics.get("task") or {}).get("task") == "causal_lm":
        from .report.lm import print_lm_summary
        return print_lm_summary(metrics, console)
    table = summary_table(metrics, console.width)
    console.print(table)
    ratios = metrics.get("ratios") or {}

    def times(x):
        return "—" if x is None else f"{x:.1f}×"
    if ratios:
        retention = ratios.get("accuracy_retention")
        console.print(f"{ratios.get('compared', 'student vs teacher')}: {times(ratios.get('size_reduction'))} smaller "
                      f"file, {times(ratios.get('macs_reduction'))} fewer MACs, {times(ratios.get('speedup_b1'))} lower "
                      "batch-1 latency (each in its fastest runtime), "
                      f"{'—' if retention is None else f'{100 * retention:.1f}%'} of the teacher's accuracy")
    speedups = metrics.get("speedups") or {}
    lines = [f"  {v['what']}: {times(v.get('b1'))}" for v in speedups.values() if isinstance(v, dict)]
    if lines:
        console.print("batch-1 speed-ups:\n" + "\n".join(lines))
    deploy = metrics.get("deploy") or {}
    if deploy.get("artifact"):
        console.print(f"deploy: {deploy['artifact']} ({deploy['runtime']}) — {deploy['rule']}")
    noisy = (metrics.get("latency_quality") or {}).get("noisy") or []
    if noisy:
        console.print(f"[yellow]latency: {len(noisy)} noisy timing(s): the machine was busy; rerun before trusting "
                      "the speed-ups[/]")


def cmd_layers(args, console: Console) -> int:
    from .distill.capture import list_layers
    from .models import count_params, create_model

    from .models import accepts

    kwargs = _kv(args.kw)
    inputs = None
    if accepts(args.model, "vocab_size"):  # a token model: ids of --in-shape length (default 64) from a vocabulary
        from .data.spec import InputSpec
        from .tasks import Classification

        from .models.gpt import LM_MODELS
        from .tasks import CausalLM

        lm = args.model in LM_MODELS  # a language model: its classes are its tokens
        in_shape = _shape_args(args)[0] if args.in_shape else ((128,) if lm else (64,))
        kwargs.setdefault("vocab_size", args.num_classes or (68 if lm else 8000))
        num_classes = kwargs["vocab_size"] if lm else (args.num_classes or 2)
        spec = InputSpec(in_shape, num_classes, "text", vocab_size=kwargs["vocab_size"],
                         task="causal_lm" if lm else "classification")
        inputs = (CausalLM() if lm else Classification()).example_inputs(spec, 1)
    else:
        in_shape, num_classes = _shape_args(args)
    model = create_model(args.model, num_classes=num_classes, in_shape=in_shape, **kwargs)
    table = Table(title=f"{args.model}: input {in_shape}, {num_classes} classes, {count_params(model):,} parameters",
                  title_justify="left")
    table.add_column("path")
    table.add_column("type")
    table.add_column("output shape (batch 1)")
    table.add_column("params", justify="right")
    modules = dict(model.named_modules())
    for path, kind, shape in list_layers(model, in_shape, inputs=inputs):
        n = sum(p.numel() for p in modules[path].parameters())
        table.add_row(path, kind, "—" if shape is None else str(tuple(shape)), f"{n:,}")
    console.print(table)
    return 0


def _shape_args(args) -> tuple[tuple[int, ...], int]:
    if args.in_shape:
        try:
            shape = tuple(int(s) for s in args.in_shape.split(","))
        except ValueError:
            raise TinyKDError(f"--in-shape '{args.in_shape}' is not a comma-separated list of integers",
                              "write e.g. --in-shape 1,28,28") from None
        return shape, args.num_classes or 10
    from .data import load_dataset
    bundle = load_dataset(args.dataset, limit=50)
    return tuple(bundle.spec.shape), args.num_classes or bundle.spec.num_classes


def _kv(items: list[str]) -> dict:
    from .recipe import parse_override
    out = {}
    for text in items:
        path, value = parse_override(text)
        out[".".join(path)] = value
    return out


def cmd_methods(args, console: Console) -> int:
    from .distill.losses import describe_losses

    rows = describe_losses()
    if args.name:
        from .errors import unknown_name
        by_name = {row["name"]: row for row in rows}
        if args.name not in by_name:
            raise unknown_name("loss term", args.name, by_name)
        return _method_details(by_name[args.name], console)
    table = Table(title="loss terms (distill.losses[].name)", title_justify="left", show_lines=True)
    for col in ("name", "what it does", "hyper-parameters (defaults)", "paper"):
        table.add_column(col)
    for row in rows:
        hp = ", ".join([f"{k} (required)" for k in row["required"]]
                       + [f"{k}={v}" for k, v in row["params"].items()]) or "—"
        table.add_row(row["name"], row["description"], hp, row["paper"])
    console.print(table)
    return 0


def _method_details(row: dict, console: Console) -> int:
    """One loss term: what it does, its paper, its hyper-parameters one a line, and its docstring (conventions)."""
    import inspect

    from rich.text import Text

    from .distill.losses import LOSSES

    lines = [Text(row["name"], style="bold") + Text(f" — {row['description']}"),
             Text(f"paper: {row['paper']}"), Text(f"needs a teacher: {'yes' if row['needs_teacher'] else 'no'}"),
             Text("hyper-parameters (defaults):")]
    lines += [Text(f"  {k} (required)") for k in row["required"]]
    lines += [Text(f"  {k} = {v}") for k, v in row["params"].items()]
    if not row["required"] and not row["params"]:
        lines.append(Text("  none"))
    doc = inspect.getdoc(LOSSES[row["name"]])
    if doc:
        lines += [Text(""), Text(doc)]
    for line in lines:
        console.print(line)
    return 0


def cmd_datasets(args, console: Console) -> int:
    from .data import list_datasets
    table = Table(title="datasets (data.name)", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for name, desc in sorted(list_datasets().items()):
        table.add_row(name, desc)
    console.print(table)
    return 0


def cmd_models(args, console: Console) -> int:
    from .models import list_models
    table = Table(title="models (teacher.model / student.model)", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for name, desc in sorted(list_models().items()):
        table.add_row(name, desc)
    console.print(table)
    return 0


def cmd_search(args, console: Console) -> int:
    from .recipe import load_recipe
    from .search import search

    if args.trials is not None and args.trials < 1:
        raise TinyKDError(f"--trials {args.trials}: a study needs at least one trial", "give --trials 1 or more")
    recipe = load_recipe(args.recipe, list(args.overrides))
    result = search(recipe, trials=args.trials, study_name=args.study, folder=args.dir, storage=args.storage,
                    console=Console(quiet=True) if args.quiet else console, progress=not args.quiet)
    if args.quiet:
        console.print(f"{result.ran} trial(s) run here; the study holds {len(result.trials)}")
        console.print(f"search report: {result.report}")
        if result.best_recipe:
            console.print(f"best trial's recipe: {result.best_recipe}")
    return 0


def cmd_compare(args, console: Console) -> int:
    from .compare import compare

    compare(args.runs, out=args.out, console=console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="tinykd", description="Distil, quantize and measure small models for edge hardware.")
    p.add_argument("--version", action="version", version=f"tinykd {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these; `tinykd COMMAND -h` describes its arguments")
    r = sub.add_parser("run", help="run a recipe (the bundled default when none is given)")
    r.add_argument("recipe", nargs="?", help="path of a YAML recipe (default: the bundled MNIST-5k recipe)")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. student.train.epochs=3")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its directory")
    r.add_argument("--name", help="name of the run (its folder under output_dir)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    r.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine (starts torchrun: "
                   "DistributedDataParallel, gloo on the CPU, one GPU per process with CUDA)")
    r.add_argument("--run-dir", metavar="DIR", help="write the new run into this empty folder (default: "
                   "<output_dir>/<name>, or <name>-2, ... when taken)")
    r.set_defaults(func=cmd_run)
    lay = sub.add_parser("layers", help="list a model's module paths with output shapes (for feature losses)")
    lay.add_argument("model", help="registered model name, e.g. cnn or resnet20 (see `tinykd models`)")
    lay.add_argument("--dataset", default="mnist5k", help="take the input shape and classes from this dataset")
    lay.add_argument("--in-shape", help="input shape without batch, e.g. 1,28,28 (overrides --dataset); for a token "
                     "model (transformer, hf:) the sequence length, default 64")
    lay.add_argument("--num-classes", type=int, help="number of output classes (default: the dataset's, or 10 "
                     "with --in-shape)")
    lay.add_argument("--kw", nargs="*", default=[], help="model kwargs, e.g. widths=[8,16] hidden=32")
    lay.set_defaults(func=cmd_layers)
    met = sub.add_parser("methods", help="list the distillation loss terms, or show one term's details")
    met.add_argument("name", nargs="?", help="a loss term's name, e.g. kd: its hyper-parameters and conventions")
    met.set_defaults(func=cmd_methods)
    se = sub.add_parser("search", help="search a recipe's search space with Optuna (several workers may share a study)")
    se.add_argument("recipe", help="path of a YAML recipe with a search: section")
    se.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, e.g. student.train.epochs=3")
    se.add_argument("--trials", type=int, help="trials the study holds in all, over every worker (default: "
                    "search.trials)")
    se.add_argument("--study", help="name of the study: workers given the same name share it (default: the recipe's "
                    "name)")
    se.add_argument("--dir", help="the search folder (default: <output_dir>/search-<study>)")
    se.add_argument("--storage", help="an SQLAlchemy URL for the study (default: search.storage, else a journal "
                    "file in the search folder)")
    se.add_argument("--quiet", action="store_true", help="no progress lines")
    se.set_defaults(func=cmd_search)
    co = sub.add_parser("compare", help="compare finished runs: a table here and an HTML page with plots")
    co.add_argument("runs", nargs="+", help="run folders, e.g. runs/* (folders that are not runs are skipped)")
    co.add_argument("--out", help="the HTML page to write (default: compare.html in the runs' common folder)")
    co.set_defaults(func=cmd_compare)
    sub.add_parser("datasets", help="list the registered datasets").set_defaults(func=cmd_datasets)
    sub.add_parser("models", help="list the registered models").set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may also follow the options: `tinykd run --name x a.b=1`
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if args.command in ("run", "search") and overrides:
        args.overrides = list(args.overrides or []) + overrides
        extra = [e for e in extra if e not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    console = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        return args.func(args, console)
    except TinyKDError as err:
        if getattr(err, "printed_by_rank_0", False):
            return 2  # one of several processes: rank 0 prints the error of the rank that failed
        print(f"error: {err}", file=sys.stderr)
        run_dir = getattr(err, "run_dir", None)
        if run_dir is not None:
            print(f"the run folder {run_dir} is kept, marked failed in its status.json; once fixed, continue it with "
                  f"`tinykd run --resume {run_dir}`", file=sys.stderr)
            if isinstance(err, TrainingError):
                print("(resume may change a learning rate or gradient clip of a stage still training, e.g. "
                      f"`tinykd run --resume {run_dir} student.train.lr=0.001 student.train.grad_clip=1`)",
                      file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        run_dir = getattr(err, "run_dir", None)
        print("\ninterrupted" + (f": continue with `tinykd run --resume {run_dir}`" if run_dir else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
