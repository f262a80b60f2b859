"""What a search shows: a progress line per trial, the table of the best trials in the terminal, the search report
(``report.html`` with the Pareto front or the objective per trial) and the best trials' recipes as YAML files."""
from __future__ import annotations

import base64
import datetime as dt
import html
import math
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from ..io import atomic_write
from ..recipe import Recipe
from ..report.summary import format_count
from ..yamlload import short_repr
from .space import METRICS, SearchPlan, with_values

STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


def fmt(metric: str, v: float | None) -> str:
    """A metric's value with its unit."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if metric.endswith("accuracy"):
        return f"{100 * v:.2f} %"
    if metric.endswith("_kb"):
        return f"{v:.1f} KB"
    if metric.endswith("_ms"):
        return f"{v:.3g} ms"
    if metric == "energy_uj":
        return f"{v:.3g} µJ"
    if metric in ("params", "macs"):
        return format_count(v)
    if metric == "trial_seconds":
        return f"{v:.1f} s"
    return f"{v:.4g}"


def _short_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return short_repr(v, 60)


def values_text(trial) -> str:
    values = trial.user_attrs.get("values") or {}
    return ", ".join(f"{k}={_short_value(v)}" for k, v in values.items())


def violations(trial, plan: SearchPlan) -> list[str]:
    """The constraints a trial misses, in words."""
    out = []
    measured = trial.user_attrs.get("measured") or {}
    for b in plan.bounds:
        v = measured.get(b.metric)
        if v is not None and b.violation(v) > 0:
            out.append(f"{b.key} ({fmt(b.metric, v)} {'>' if b.kind == 'max' else '<'} {fmt(b.metric, b.limit)})")
    if plan.board is not None and measured.get("board_over_kb", 0) > 0:
        out.append(f"board ({measured['board_over_kb']:.1f} KB over)")
    return out


def feasible(trial, plan: SearchPlan) -> bool:
    return not violations(trial, plan)


def _best_numbers(study, plan: SearchPlan) -> set[int]:
    from optuna.trial import TrialState

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return set()
    if plan.multi:
        return {t.number for t in study.best_trials}
    try:
        return {study.best_trial.number}
    except ValueError:  # no feasible trial yet
        return set()


def progress_line(study, number: int, plan: SearchPlan, state, note: str, seconds: float) -> str:
    """One line per trial: its state, what it measured, whether it is the best so far, and its values."""
    trial = study.get_trials(deepcopy=False)[number]
    word = STATE_WORDS.get(state.name, state.name.lower())
    head = f"trial {number} ({number + 1}/{plan.trials}) {word} in {seconds:.1f} s"
    if trial.user_attrs.get("baseline"):
        head += " (the recipe as written)"
    if state.name == "COMPLETE":
        measured = trial.user_attrs["measured"]
        body = ", ".join(f"{o.metric} {fmt(o.metric, measured[o.metric])}" for o in plan.objectives)
        missed = violations(trial, plan)
        if missed:
            body += " [yellow]misses " + ", ".join(missed) + "[/]"
        elif number in _best_numbers(study, plan):
            body += " [green]" + ("on the Pareto front" if plan.multi else "best so far") + "[/]"
    else:
        body = note.splitlines()[0] if note else word
    return f"{head}: {body} — {values_text(trial)}"


def best_trials(study, plan: SearchPlan) -> list:
    """The best feasible trial, or the Pareto front ordered by the first objective."""
    numbers = _best_numbers(study, plan)
    trials = [t for t in study.get_trials(deepcopy=False) if t.number in numbers]
    sign = -1 if plan.objectives[0].direction == "maximize" else 1
    return sorted(trials, key=lambda t: (sign * t.values[0], t.number))


def dominates(a, b, plan: SearchPlan) -> bool:
    """Trial ``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for o, va, vb in zip(plan.objectives, a.values, b.values):
        if (va < vb) if o.direction == "maximize" else (va > vb):
            return False
        better = better or va != vb
    return better


def baseline_trial(trials: list):
    return next((t for t in trials if t.user_attrs.get("baseline")), None)


# --- the terminal table -----------------------------------------------------------------------------------------


def best_table(best: list, plan: SearchPlan) -> Table:
    title = ("Pareto front" if plan.multi else "best trial") + " (objectives on the validation split; test accuracy " \
        "read only here)"
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    for o in plan.objectives:
        table.add_column(f"{o.metric} ({'max' if o.direction == 'maximize' else 'min'})", justify="right")
    table.add_column("test acc fp32 / int8", justify="right")
    table.add_column("values", overflow="fold")
    for t in best:
        m, test = t.user_attrs.get("measured") or {}, t.user_attrs.get("test") or {}
        table.add_row(str(t.number) + (" (recipe)" if t.user_attrs.get("baseline") else ""),
                      *(fmt(o.metric, m.get(o.metric)) for o in plan.objectives),
                      f"{fmt('accuracy', test.get('accuracy'))} / {fmt('accuracy', test.get('int8_accuracy'))}",
                      values_text(t))
    return table


# --- best recipes -----------------------------------------------------------------------------------------------


def write_trial_recipe(path: Path, recipe: Recipe, trial, study_name: str) -> Path:
    """The recipe of ``trial`` as a YAML file ``tinykd run`` takes: the searched recipe with the trial's values and
    the study's teacher checkpoint, without the search section."""
    folder = Path(trial.user_attrs["folder"])
    saved = yaml.safe_load((folder / "recipe.yaml").read_text())
    extra = {"name": f"{recipe.name}-trial{trial.number}", "teacher.checkpoint": saved["teacher"]["checkpoint"]}
    out = with_values(recipe, trial.user_attrs.get("values") or {}, extra).model_copy(update={"search": None})
    measured = trial.user_attrs.get("measured") or {}
    head = (f"# tinykd search '{study_name}', trial {trial.number}: "
            + ", ".join(f"{k} {fmt(k, measured.get(k))}" for k in measured if k in METRICS and k != "trial_seconds")
            + f"\n# run it: tinykd run {path}  (relative paths are as in the searched recipe: run from the folder"
            " the search ran in; the teacher is the study's, by its checkpoint)\n")
    data = out.model_dump(mode="json")
    data.pop("search", None)
    return atomic_write(path, head + yaml.safe_dump(data, sort_keys=False))


# --- the figure -------------------------------------------------------------------------------------------------


def _axis_value(metric: str, v: float) -> float:
    return 100 * v if metric.endswith("accuracy") else v


def _axis_label(metric: str) -> str:
    unit = {"accuracy": "validation, %", "kb": "KB", "ms": "ms", "uj": "µJ", "seconds": "s"}
    suffix = next((u for k, u in unit.items() if metric.endswith(k)), "")
    return f"{metric} ({suffix})" if suffix else metric


def search_figures(study, plan: SearchPlan, out_dir: Path) -> dict[str, Path]:
    """The Pareto front of the first objective against each other one (several objectives), or the objective per
    trial with the best so far (one), as PNG files in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.figures import save_png
    from ..report.style import MPL_STYLE

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return {}
    best = {t.number for t in best_trials(study, plan)}
    out = {}
    with plt.rc_context(MPL_STYLE):
        if plan.multi:
            first = plan.objectives[0]
            for j, other in enumerate(plan.objectives[1:], 1):
                fig = _pareto_figure(plt, complete, best, plan, first, other, j)
                out[f"pareto_{other.metric}"] = save_png(fig, Path(out_dir) / f"pareto_{first.metric}_{other.metric}.png")
        else:
            out["objective"] = save_png(_history_figure(plt, study, complete, best, plan), Path(out_dir) / "objective.png")
    return out


def _pareto_figure(plt, complete, best, plan, first, other, j):
    fig, ax = plt.subplots(figsize=(9, 5.4))
    feas = [t for t in complete if feasible(t, plan)]
    infeas = [t for t in complete if not feasible(t, plan)]

    def xy(t):
        return _axis_value(other.metric, t.values[j]), _axis_value(first.metric, t.values[0])
    if feas:
        ax.scatter(*zip(*[xy(t) for t in feas if t.number not in best]) if any(t.number not in best for t in feas)
                   else ([], []), s=46, color="#9fb8d6", edgecolor="white", linewidth=0.6, zorder=2,
                   label="trial")
    if infeas:
        ax.scatter(*zip(*[xy(t) for t in infeas]), s=46, marker="x", color="#c0392b", linewidth=1.2, zorder=2,
                   label="trial missing a constraint")
    front = sorted((t for t in complete if t.number in best), key=lambda t: xy(t)[0])
    if front:
        xs, ys = zip(*[xy(t) for t in front])
        ax.plot(xs, ys, color="#1f4e79", linewidth=1.3, linestyle="--", zorder=1)
        ax.scatter(xs, ys, s=80, color="#1f4e79", edgecolor="#111111", linewidth=1.0, zorder=3,
                   label="Pareto front (of all objectives)")
        for t, x, y in zip(front, xs, ys):
            ax.annotate(f"#{t.number}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8.5,
                        color="#1f4e79", fontweight="bold")
    base = baseline_trial(complete)
    if base is not None:
        ax.scatter(*xy(base), s=210, marker="*", color="#e07b00", edgecolor="#222222", linewidth=0.8, zorder=4,
                   label=f"the recipe as written (#{base.number})")
    better = ("up" if first.direction == "maximize" else "down") + " and " + (
        "right" if other.direction == "maximize" else "left")
    ax.set_xlabel(_axis_label(other.metric))
    ax.set_ylabel(_axis_label(first.metric))
    ax.set_title(f"{first.metric} vs {other.metric} over {len(complete)} trials ({better} is better)", loc="left")
    ax.legend(loc="best")
    return fig


def _history_figure(plt, study, complete, best, plan):
    o = plan.objectives[0]
    fig, ax = plt.subplots(figsize=(9, 4.6))
    pts = [(t.number, _axis_value(o.metric, t.values[0]), feasible(t, plan)) for t in complete]
    ax.scatter([n for n, _, f in pts if f], [v for _, v, f in pts if f], s=46, color="#9fb8d6", edgecolor="white",
               zorder=2, label="complete trial")
    if any(not f for *_, f in pts):
        ax.scatter([n for n, _, f in pts if not f], [v for _, v, f in pts if not f], marker="x", color="#c0392b",
                   zorder=2, label="trial missing a constraint")
    run, steps = None, []
    for n, v, f in sorted(pts):
        if f and (run is None or (v > run if o.direction == "maximize" else v < run)):
            run = v
        if run is not None:
            steps.append((n, run))
    if steps:
        ax.step(*zip(*steps), where="post", color="#1f4e79", linewidth=1.4, label="best so far")
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    if pruned and o.metric == "accuracy":
        ax.scatter([t.number for t in pruned], [100 * t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="v", color="#8c8c8c", zorder=2, label="pruned (last reported epoch)")
    base = baseline_trial(complete)
    if base is not None:
        ax.scatter(base.number, _axis_value(o.metric, base.values[0]), s=210, marker="*", color="#e07b00",
                   edgecolor="#222222", zorder=4, label="the recipe as written")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(_axis_label(o.metric))
    ax.set_title(f"{o.metric} per trial ({'higher' if o.direction == 'maximize' else 'lower'} is better)", loc="left")
    ax.legend(loc="best")
    return fig


# --- the page ---------------------------------------------------------------------------------------------------


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def findings(trials: list, best: list, plan: SearchPlan) -> list[str]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[STATE_WORDS.get(t.state.name, t.state.name)] = counts.get(STATE_WORDS.get(t.state.name, t.state.name), 0) + 1
    lines = [f"{len(trials)} trials: " + ", ".join(f"{n} {w}" for w, n in counts.items()) + "."]
    infeasible = sum(1 for t in trials if t.user_attrs.get("infeasible"))
    if infeasible:
        lines.append(f"{infeasible} trial(s) were stopped before training: their int8 student cannot fit the board.")
    if not best:
        lines.append("No complete trial meets every constraint yet.")
        return lines
    if plan.multi:
        lines.append(f"{len(best)} trial(s) on the Pareto front of " + ", ".join(o.metric for o in plan.objectives)
                     + f"; the most {plan.objectives[0].metric} of them is trial {best[0].number}.")
    else:
        t = best[0]
        lines.append(f"The best trial is {t.number}: {plan.objectives[0].metric} "
                     f"{fmt(plan.objectives[0].metric, t.values[0])}.")
    base = baseline_trial([t for t in trials if t.state.name == "COMPLETE"])
    if base is not None:
        winners = [t for t in trials if t.state.name == "COMPLETE" and feasible(t, plan) and dominates(t, base, plan)]
        lines.append(f"The recipe as written (trial {base.number}) is "
                     + (f"dominated by {len(winners)} trial(s) ({', '.join(str(t.number) for t in winners[:10])}): "
                        "each as good on every objective and better on one." if winners
                        else "dominated by no trial."))
    return lines


def _trial_row(t, plan: SearchPlan, best: set[int]) -> str:
    m, test = t.user_attrs.get("measured") or {}, t.user_attrs.get("test") or {}
    state = STATE_WORDS.get(t.state.name, t.state.name)
    note = t.user_attrs.get("infeasible") or t.user_attrs.get("error") or ""
    if t.state.name == "COMPLETE":
        missed = violations(t, plan)
        note = ("misses " + ", ".join(missed)) if missed else ("best" if t.number in best else "")
    cells = [f"<td>{t.number}{' (recipe)' if t.user_attrs.get('baseline') else ''}</td>", f"<td>{_esc(state)}</td>"]
    cells += [f'<td class="num">{_esc(fmt(o.metric, m.get(o.metric)))}</td>' for o in plan.objectives]
    cells += [f'<td class="num">{_esc(fmt(b.metric, m.get(b.metric)))}</td>' for b in plan.bounds
              if b.metric not in {o.metric for o in plan.objectives}]
    if t.number in best:
        cells.append(f'<td class="num">{_esc(fmt("accuracy", test.get("accuracy")))} / '
                     f'{_esc(fmt("accuracy", test.get("int8_accuracy")))}</td>')
    else:
        cells.append('<td class="num missing">—</td>')
    cells += [f'<td class="num">{_esc(fmt("trial_seconds", m.get("trial_seconds")))}</td>',
              f'<td class="text">{_esc(values_text(t))}</td>', f'<td class="text">{_esc(note.splitlines()[0] if note else "")}</td>']
    return f'<tr{" class=target" if t.number in best else ""}>' + "".join(cells) + "</tr>"


def render_search_page(study_name: str, trials: list, best: list, plan: SearchPlan, figures: dict[str, Path],
                       recipe: Recipe, storage: str) -> str:
    from ..report.page import CSS

    best_numbers = {t.number for t in best}
    extra_bounds = [b.metric for b in plan.bounds if b.metric not in {o.metric for o in plan.objectives}]
    head = ("<tr><th>trial</th><th>state</th>" + "".join(
        f"<th>{_esc(o.metric)} ({'max' if o.direction == 'maximize' else 'min'})</th>" for o in plan.objectives)
        + "".join(f"<th>{_esc(m)}</th>" for m in extra_bounds)
        + "<th>test accuracy fp32 / int8 (best only)</th><th>seconds</th><th class=text>values</th>"
        "<th class=text>note</th></tr>")
    order = sorted(trials, key=lambda t: (t.number not in best_numbers, t.number))
    table = (f'<div class="scroll"><table><thead>{head}</thead><tbody>'
             + "".join(_trial_row(t, plan, best_numbers) for t in order) + "</tbody></table></div>")
    figs = "".join(
        f'<figure><img alt="{_esc(key)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{_esc(_caption(key, plan))}</figcaption></figure>" for key, p in figures.items())
    constraints = ", ".join([f"{b.key} = {b.limit:g}" for b in plan.bounds]
                            + ([f"fits {plan.board}"] if plan.board is not None else [])) or "none"
    facts = {"study": study_name, "storage": storage, "sampler": plan.sampler,
             "pruning": "median of earlier trials, per epoch" if plan.pruning else "off",
             "objectives": ", ".join(f"{o.metric} ({o.direction}): {METRICS[o.metric][1]}" for o in plan.objectives),
             "constraints": constraints, "space": "; ".join(f"{d.key}: {d.describe()}" for d in plan.dimensions),
             "written": dt.datetime.now().isoformat(timespec="seconds")}
    search_yaml = yaml.safe_dump({"search": recipe.search.model_dump(mode="json")}, sort_keys=False)
    sections = [
        f'<header><p class="eyebrow">tinykd search report</p><h1>{_esc(study_name)} '
        f'<span class="dataset">({_esc(recipe.data.name)})</span></h1>'
        f'<p class="meta">{_esc(recipe.name)} · {len(trials)} trials</p></header>',
        '<section><h2>What this search shows</h2><div class="findings">'
        + "".join(f"<p>{_esc(s)}</p>" for s in findings(trials, best, plan)) + "</div></section>",
        f"<section><h2>Trials</h2><p class=note>Objectives and constraints are measured on the validation split and "
        f"the exported artifacts; the test accuracy of the best trials is read only for this report.</p>{table}"
        "</section>",
        f"<section><h2>Figures</h2>{figs or '<p class=note>No complete trial yet.</p>'}</section>",
        '<section><h2>Search</h2><dl class="facts">'
        + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts.items()) + "</dl>"
        f"<pre>{_esc(search_yaml)}</pre></section>",
        f"<section><h2>Recipe</h2><pre>{_esc(recipe.model_copy(update={'search': None}).to_yaml())}</pre></section>",
    ]
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>tinykd search — {_esc(study_name)}</title>\n<style>{CSS}\ntd.text, th.text {{ text-align: left; }}"
            "\ntr.target td { background: #eef5fc; }</style>\n</head>\n<body>\n<main>\n" + "\n".join(sections)
            + "\n<footer>Generated by tinykd search.</footer>\n</main>\n</body>\n</html>\n")


def _caption(key: str, plan: SearchPlan) -> str:
    if key == "objective":
        return ("Each point is a complete trial's objective; the line is the best feasible value so far, the star the "
                "recipe as written, grey triangles the last validation accuracy of pruned trials.")
    return ("Each point is a complete trial; the outlined points joined by the dashed line are the Pareto front of "
            "all the objectives (with more than two, a front point may look beaten in this pair), red crosses miss "
            "a constraint, the star is the recipe as written.")


def write_search_report(result, study, recipe: Recipe, console: Console):
    """The search report, the best trials' recipes and the terminal table; ``result`` with them filled in."""
    plan = result.plan
    best = best_trials(study, plan)
    result.trials, result.best = study.get_trials(deepcopy=False), best
    figures = search_figures(study, plan, result.folder / "figures")
    result.report = atomic_write(result.folder / "report.html", render_search_page(
        result.study_name, result.trials, best, plan, figures, recipe, result.storage).encode())
    if best:
        result.best_recipe = write_trial_recipe(result.folder / "best.yaml", recipe, best[0], result.study_name)
        if plan.multi:
            pareto = result.folder / "pareto"
            keep = {f"trial-{t.number:04d}.yaml" for t in best}
            for old in pareto.glob("trial-*.yaml") if pareto.is_dir() else []:
                if old.name not in keep:
                    old.unlink()
            for t in best:
                write_trial_recipe(pareto / f"trial-{t.number:04d}.yaml", recipe, t, result.study_name)
        console.print(best_table(best, plan))
    for line in findings(result.trials, best, plan):
        console.print(line)
    console.print(f"search report: [bold green]{result.report}[/]")
    if result.best_recipe:
        console.print(f"best trial's recipe: {result.best_recipe} (tinykd run {result.best_recipe})")
    return result
