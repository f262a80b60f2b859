"""The six figures of a run report, each written as a PNG."""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from ..io import atomic_write  # noqa: E402
from .history import loss_columns, loss_term, model_rows, series, to_number  # noqa: E402
from .style import CLAIM_COLOR, MPL_STYLE, runtime_markers, runtime_name, variant_colors  # noqa: E402
from .summary import (claimed_ranges, compared_variant, format_bytes, format_factor, ordered_variants,  # noqa: E402
                      pareto_front, variant_label, variant_metric, variant_noun)

FIGURE_KEYS = ("improvement", "latency_accuracy", "size_accuracy", "training", "transfer", "confusion")
TRANSFER_VARIANTS = ("teacher", "student_scratch")  # then the deployed variant
IMPROVEMENT_KEYS = ("size_reduction", "macs_reduction", "speedup_b1", "accuracy_retention")
PERCENT = FuncFormatter(lambda v, _: f"{v:g} %")
TRAINING_MODELS = ("student", "student_scratch", "teacher")
LINESTYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
LOSS_COLORS = ("#6a3d9a", "#b15928", "#c2185b", "#00838f", "#5d4037", "#455a64")
# where a label may sit relative to its point: (dx, dy) offset in points, horizontal and vertical alignment
RUNTIME_LABEL_SPOTS = ((0, 8, "center", "bottom"), (0, -9, "center", "top"), (9, 0, "left", "center"),
                       (-9, 0, "right", "center"), (0, 20, "center", "bottom"), (0, -21, "center", "top"))
VARIANT_LABEL_SPOTS = ((8, 0, "left", "center"), (8, 9, "left", "bottom"), (8, -9, "left", "top"),
                       (0, 20, "center", "bottom"), (0, -21, "center", "top"), (8, 22, "left", "bottom"),
                       (8, -23, "left", "top"), (-8, 0, "right", "center"), (-8, 9, "right", "bottom"),
                       (-8, -9, "right", "top"))
LONG_ENTRY = 36  # legend entries longer than this (characters) are set smaller
CROWDED = 9  # with more latency points than this, runtime names are left to the legend
LEADER_BEYOND = 14  # labels placed further than this (points) from their point get a thin leader line


def radial_spots(radii: tuple[float, ...]) -> tuple:
    """Label spots around a point at each radius (points): right, left, the four diagonals, above, below."""
    directions = ((1, 0, "left", "center"), (-1, 0, "right", "center"), (0.8, 0.8, "left", "bottom"),
                  (0.8, -0.8, "left", "top"), (-0.8, 0.8, "right", "bottom"), (-0.8, -0.8, "right", "top"),
                  (0, 1, "center", "bottom"), (0, -1, "center", "top"))
    return tuple((r * cx, r * cy, ha, va) for r in radii for cx, cy, ha, va in directions)


POINT_LABEL_SPOTS = radial_spots((10, 24, 40, 60))
NEAR_LABEL_SPOTS = radial_spots((10,))
FAR_LABEL_SPOTS = radial_spots((24, 40))


def make_figures(metrics: dict, history: list[dict], out_dir: Path) -> dict[str, Path]:
    """Draw the six report figures into ``out_dir`` as ``<key>.png``; returns {key: path}."""
    makers: dict[str, Callable[[], Figure]] = {
        "improvement": lambda: improvement_figure(metrics),
        "latency_accuracy": lambda: latency_accuracy_figure(metrics),
        "size_accuracy": lambda: size_accuracy_figure(metrics),
        "training": lambda: training_figure(metrics, history),
        "transfer": lambda: transfer_figure(metrics),
        "confusion": lambda: confusion_figure(metrics),
    }
    with plt.rc_context(MPL_STYLE):
        return {key: save_png(_draw(key, makers[key]), Path(out_dir) / f"{key}.png") for key in FIGURE_KEYS}


def _draw(key: str, maker: Callable[[], Figure]) -> Figure:
    """The figure, or a placeholder saying why when malformed metrics make drawing fail."""
    open_before = set(plt.get_fignums())
    try:
        return maker()
    except (ArithmeticError, LookupError, TypeError, ValueError) as err:
        for number in set(plt.get_fignums()) - open_before:
            plt.close(number)
        reason = f"{type(err).__name__}: {err}"[:110]
        return placeholder_figure(key.replace("_", " ").capitalize(), f"Could not draw it from the metrics ({reason}).")


def save_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG (tight bounding box), write it atomically and close the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15, facecolor="white")
    plt.close(fig)
    return atomic_write(path, buffer.getvalue())


def placeholder_figure(title: str, message: str) -> Figure:
    """A small figure that says why a plot could not be drawn."""
    fig, ax = plt.subplots(figsize=(8, 2.2))
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.45, message, ha="center", va="center", color="#666666", fontsize=11, transform=ax.transAxes)
    return fig


# --- 1. improvement factors vs claims -------------------------------------------------------------


def improvement_figure(metrics: dict) -> Figure:
    """Measured final-student-vs-teacher factors beside the claimed ranges (factors left, retention right)."""
    ratios = metrics.get("ratios") or {}
    if all(ratios.get(key) is None for key in IMPROVEMENT_KEYS):
        return placeholder_figure("Improvement over the teacher", "The int8 student was not compared with the teacher.")
    claims = claimed_ranges(metrics)
    final = compared_variant(metrics)
    noun = variant_noun(metrics, final)
    color = variant_colors(metrics).get(final, "#e07b00")
    fig, (ax_f, ax_r) = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [3, 1.25], "wspace": 0.32})
    factors = [("size_reduction", "Size\n(file bytes)"), ("macs_reduction", "Compute\n(MACs)"),
               ("speedup_b1", "Speed\n(batch 1)")]
    _factor_panel(ax_f, [(label, ratios.get(key), claims[key]) for key, label in factors], color)
    retention = ratios.get("accuracy_retention")
    _retention_panel(ax_r, None if retention is None else 100 * retention, claims["accuracy_retention"], color)
    ax_r.set_ylabel(f"{noun[:1].upper()}{noun[1:]} accuracy (% of teacher's)")
    handles = [Patch(color=color, label=variant_label(metrics, final) + " vs teacher (measured)"),
               Patch(facecolor=CLAIM_COLOR, edgecolor="#777777", hatch="///", label="range claimed by the seed paper")]
    fig.legend(handles=handles, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(f"How much smaller, cheaper and faster the {noun} is than the teacher",
                 fontsize=13, fontweight="bold", x=0.08, ha="left", y=1.0)
    return fig


def _factor_panel(ax, bars: list[tuple[str, float | None, tuple[float, float] | None]], color: str) -> None:
    """Bars of improvement factors (log scale, from 1×) with a hatched claimed band beside each."""
    values = [v for _, v, _ in bars if v is not None and v > 0] + [c[1] for *_, c in bars if c]
    top = max(values + [2.0]) * 1.9
    bottom = min(values + [1.0]) / 1.6
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    for i, (_, value, claim) in enumerate(bars):
        if value is not None and value > 0:
            ax.bar(i - 0.19, value - 1, bottom=1, width=0.36, color=color, zorder=2)
            ax.text(i - 0.19, value * 1.08 if value >= 1 else value / 1.08, format_factor(value),
                    ha="center", va="bottom" if value >= 1 else "top", fontweight="bold")
        else:
            ax.text(i - 0.19, 1.05, "not\nmeasured", ha="center", va="bottom", color="#666666", fontsize=9)
        _claim_band(ax, i + 0.19, claim, unit="×", log=True)
    ax.axhline(1, color="#444444", linewidth=1)
    ax.set_xticks(range(len(bars)), [label for label, *_ in bars])
    ax.set_xlim(-0.6, len(bars) - 0.4)
    _log_ticks(ax.yaxis, "×")
    ax.set_ylabel("Improvement over teacher (×, log scale)")
    ax.set_title("Improvement factors (higher is better)", loc="left")
    ax.grid(axis="x", visible=False)


def _log_ticks(axis, unit: str) -> None:
    """Plain-number ticks at 1, 2 and 5 times each power of ten, followed by ``unit``."""
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
    axis.set_minor_formatter(NullFormatter())


def _claim_band(ax, x: float, claim: tuple[float, float] | None, unit: str, log: bool) -> None:
    """A hatched band from the low to the high claimed value at ``x`` labelled ``low–high<unit>``, or 'no claim'."""
    if claim is None:
        ymin = ax.get_ylim()[0]
        ax.text(x, 1.05 if log else ymin, "no\nclaim", ha="center", va="bottom", color="#888888", fontsize=9)
        return
    low, high = claim
    ax.bar(x, high - low, bottom=low, width=0.36, facecolor=CLAIM_COLOR, edgecolor="#777777",
           hatch="///", linewidth=0.8, alpha=0.75, zorder=2)
    # on the linear retention axis the label goes under the band: above it would sit on the teacher's 100 % line
    ax.text(x, high * 1.08 if log else low - 0.01 * ax.get_ylim()[1], f"{low:.2g}–{high:.2g}{unit}", ha="center",
            va="bottom" if log else "top", color="#555555", fontsize=9)


def _retention_panel(ax, retention_pct: float | None, claim: tuple[float, float] | None, color: str) -> None:
    """Accuracy retention (% of teacher accuracy) beside its claimed band, on an axis from 0 so bar heights compare."""
    values = [v for v in ([retention_pct] + list(claim or ())) if v is not None]
    low = 0.0
    high = max(values + [100.0]) * 1.12
    ax.set_ylim(low, high)
    if retention_pct is not None:
        ax.bar(-0.19, retention_pct - low, bottom=low, width=0.36, color=color, zorder=2)
        inside = retention_pct > 0.2 * high  # inside the bar's top, clear of the teacher's 100 % line
        ax.text(-0.19, retention_pct + (-0.015 if inside else 0.01) * high, f"{retention_pct:.1f} %", ha="center",
                va="top" if inside else "bottom", fontweight="bold", color="white" if inside else None)
    else:
        ax.text(-0.19, low + 0.5, "not\nmeasured", ha="center", va="bottom", color="#666666", fontsize=9)
    _claim_band(ax, 0.19, claim, unit=" %", log=False)
    ax.axhline(100, color="#444444", linewidth=1, linestyle="--")
    ax.text(0.58, 100, "teacher", ha="right", va="bottom", fontsize=8.5, color="#444444")
    ax.set_xticks([0], ["Accuracy\nretention"])
    ax.set_xlim(-0.6, 0.6)
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PERCENT)
    ax.set_title("Accuracy kept", loc="left")
    ax.grid(axis="x", visible=False)


# --- 2. latency vs accuracy -----------------------------------------------------------------------


def latency_points(metrics: dict) -> list[dict]:
    """(variant, runtime, median ms, p90 ms, accuracy %) for every measured runtime of every variant."""
    points = []
    for name in ordered_variants(metrics):
        variant = metrics["variants"][name] or {}
        if variant.get("accuracy") is None:
            continue
        per_runtime = {rt: (d or {}).get("b1") or {} for rt, d in (variant.get("latency") or {}).items()}
        if not per_runtime:
            per_runtime = {variant.get("runtime") or "?": {"median_ms": variant.get("latency_ms_b1"),
                                                          "p90_ms": variant.get("latency_ms_b1_p90")}}
        for runtime, b1 in per_runtime.items():
            if b1.get("median_ms") is not None and b1["median_ms"] > 0:
                points.append({"variant": name, "runtime": runtime, "median": b1["median_ms"],
                               "p90": b1.get("p90_ms"), "accuracy": 100 * variant["accuracy"]})
    return points


def latency_accuracy_figure(metrics: dict) -> Figure:
    """Batch-1 latency (log x) against test accuracy: colour per variant, marker per runtime, p90 whiskers."""
    points = latency_points(metrics)
    title = "Batch-1 latency vs test accuracy (up and left is better)"
    if not points:
        return placeholder_figure(title, "No variant has both a measured accuracy and a batch-1 latency.")
    colors = variant_colors(metrics)
    markers = runtime_markers(list(dict.fromkeys(p["runtime"] for p in points)))
    names = [n for n in colors if any(p["variant"] == n for p in points)]
    fig, ax = plt.subplots(figsize=(10, _legend_height(len(names) + len(markers) + 1, 2)))
    fig.subplots_adjust(right=0.7)
    ax.set_xscale("log")
    for name in dict.fromkeys(p["variant"] for p in points):
        mine = sorted((p for p in points if p["variant"] == name), key=lambda p: p["median"])
        ax.plot([p["median"] for p in mine], [p["accuracy"] for p in mine], color=colors[name],
                linewidth=1, alpha=0.5, zorder=1)
        for p in mine:
            if p["p90"] is not None and p["p90"] > p["median"]:
                ax.plot([p["median"], p["p90"]], [p["accuracy"]] * 2, color=colors[name], linewidth=2.2,
                        alpha=0.35, solid_capstyle="butt", zorder=1)
            ax.scatter(p["median"], p["accuracy"], s=80, color=colors[name], marker=markers[p["runtime"]],
                       edgecolor="white", linewidth=0.8, zorder=3)
    _pad_axes(ax, points)
    _label_points(ax, points, metrics, colors)
    _latency_legends(fig, metrics, names, colors, markers)
    _log_ticks(ax.xaxis, "")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("Batch-1 latency, median (ms, log scale)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title, loc="left")
    return fig


def _latency_legends(fig: Figure, metrics: dict, names: list[str], colors: dict[str, str],
                     markers: dict[str, str]) -> None:
    """Two legends right of the plot: colour = variant, marker = runtime (plus the p90 whisker)."""
    variant_handles = [Line2D([], [], color=colors[n], marker="o", linestyle="", markersize=8,
                              label=variant_label(metrics, n)) for n in names]
    runtime_handles = [Line2D([], [], color="#555555", marker=m, linestyle="", markersize=8, label=runtime_name(r))
                       for r, m in markers.items()]
    runtime_handles.append(Line2D([], [], color="#555555", alpha=0.35, linewidth=2.2, label="median → p90"))
    _stacked_legends(fig, [("Variant (colour)", variant_handles), ("Runtime (marker)", runtime_handles)])


def _legend_height(entries: int, legends: int, base: float = 5.4) -> float:
    """Figure height (inches) that fits ``entries`` legend rows under ``legends`` titles beside the plot."""
    return max(base, 0.235 * (entries + 1.4 * legends) + 1.0)


def _stacked_legends(fig: Figure, legends: list[tuple[str, list]], tops: tuple[float, ...] = (0.89, 0.5)) -> None:
    """Legends one under the other right of the plot: each at its preferred top (figure fraction) unless the one
    above reaches lower. Entries longer than ``LONG_ENTRY`` characters get a smaller font so the figure keeps
    its width."""
    renderer = fig.canvas.get_renderer()
    longest = max((len(h.get_label()) for _, handles in legends for h in handles), default=0)
    below = 1.0
    for i, (title, handles) in enumerate(legends):
        top = min(tops[min(i, len(tops) - 1)], below)
        legend = fig.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(0.71, top),
                            alignment="left", fontsize=8.5 if longest > LONG_ENTRY else None)
        box = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
        below = box.y0 - 0.03


def _label_points(ax, points: list[dict], metrics: dict, colors: dict[str, str]) -> None:
    """Variant name right of its slowest p90 and runtime name beside each point, each where it overlaps least.

    With more than ``CROWDED`` points the runtime names are left to the marker legend, and a variant name that
    would overlap another label or point is left to the colour legend too (the legends always list everything).
    """
    renderer = ax.figure.canvas.get_renderer()
    crowded = len(points) > CROWDED
    taken = [_marker_box(ax, (p["median"], p["accuracy"])) for p in points]
    for name in dict.fromkeys(p["variant"] for p in points):
        mine = [p for p in points if p["variant"] == name]
        right = max(max(p["median"], p["p90"] or 0) for p in mine)
        _place_label(ax, (right, mine[0]["accuracy"]), variant_label(metrics, name),
                     VARIANT_LABEL_SPOTS + FAR_LABEL_SPOTS if crowded else VARIANT_LABEL_SPOTS, taken,
                     renderer, optional=crowded, fontsize=8.5 if crowded else 9, fontweight="bold", color=colors[name])
    if crowded:
        return
    for p in points:
        _place_label(ax, (p["median"], p["accuracy"]), runtime_name(p["runtime"]), RUNTIME_LABEL_SPOTS, taken,
                     renderer, fontsize=8.5, color="#333333")


def _marker_box(ax, xy: tuple[float, float], size: float = 14) -> Bbox:
    """The pixel box a marker at data point ``xy`` covers."""
    x, y = ax.transData.transform(xy)
    return Bbox.from_bounds(x - size / 2, y - size / 2, size, size)


def _place_label(ax, xy: tuple[float, float], text: str, spots: tuple, taken: list[Bbox], renderer, *,
                 optional: bool = False, **style) -> bool:
    """Annotate ``xy`` at the first spot (offset in points, alignment) that overlaps nothing taken, else the least;
    an ``optional`` label that overlaps wherever it goes is left out. A label placed more than ``LEADER_BEYOND``
    points away gets a thin leader line in its colour, which must not cross anything taken either; the label
    (and its leader) then join ``taken``. Returns whether the label was placed."""
    frame = ax.get_window_extent(renderer)
    anchor = ax.transData.transform(xy)
    best = None
    for dx, dy, ha, va in spots:
        far = math.hypot(dx, dy) > LEADER_BEYOND
        leader = ({"arrowprops": {"arrowstyle": "-", "color": style.get("color", "#555555"), "linewidth": 0.7,
                                  "alpha": 0.7, "shrinkA": 1, "shrinkB": 5}} if far else {})
        label = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **leader, **style)
        label.update_positions(renderer)
        box = Text.get_window_extent(label, renderer).padded(3)  # the text alone, not its leader line
        trail = _leader_boxes(anchor, box) if far else []
        clash = (sum(_overlap(box, other) for other in taken) + box.width * box.height - _overlap(box, frame)
                 + sum(_overlap(dot, other) for dot in trail for other in taken if not other.contains(*anchor)))
        if best is not None and clash >= best[0]:
            label.remove()
            continue
        if best is not None:
            best[1].remove()
        best = (clash, label, [box] + trail)
        if clash == 0:
            break
    if optional and best[0] > 0:
        best[1].remove()
        return False
    taken.extend(best[2])
    return True


def _leader_boxes(anchor, box: Bbox, samples: int = 8, size: float = 4) -> list[Bbox]:
    """Small pixel boxes along a leader line from ``anchor`` to the middle of a label's ``box`` (ends left out)."""
    (x0, y0), (x1, y1) = anchor, ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
    points = [(x0 + (x1 - x0) * t / samples, y0 + (y1 - y0) * t / samples) for t in range(1, samples)]
    return [Bbox.from_bounds(x - size / 2, y - size / 2, size, size) for x, y in points if not box.contains(x, y)]


def _overlap(a: Bbox, b: Bbox) -> float:
    """Area (pixels²) shared by two boxes."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _pad_axes(ax, points: list[dict]) -> None:
    """Leave room around the points for labels: more on the right (variant names) and a quarter span in y."""
    xs = [p["median"] for p in points] + [p["p90"] for p in points if p["p90"]]
    ys = [p["accuracy"] for p in points]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 4)
    span = max(max(ys) - min(ys), 1.0)
    ax.set_ylim(min(ys) - 0.25 * span, min(max(ys) + 0.25 * span, max(101.0, max(ys) + 1)))


# --- 3. file size vs accuracy --------------------------------------------------------------------


def size_points(metrics: dict) -> list[dict]:
    """(variant, runtime, file bytes, accuracy %) of every variant with a positive file size and an accuracy."""
    points = []
    for name in ordered_variants(metrics):
        variant = metrics["variants"][name] or {}
        size, accuracy = to_number(variant.get("file_bytes")), to_number(variant.get("accuracy"))
        if size is not None and size > 0 and accuracy is not None:
            points.append({"variant": name, "runtime": variant.get("runtime") or "?", "size": size,
                           "accuracy": 100 * accuracy})
    return points


def size_accuracy_figure(metrics: dict) -> Figure:
    """File size (log x) against test accuracy of every variant, with the Pareto front as a step line.

    Colour is the variant and the marker its runtime, as in the latency figure; the points on the front (no
    other variant is both smaller and at least as accurate) are labelled with name, size and accuracy.
    """
    title = "Model file size vs test accuracy (up and left is better)"
    points = size_points(metrics)
    if not points:
        return placeholder_figure(title, "No variant has both a measured accuracy and a file size.")
    colors = variant_colors(metrics)
    markers = runtime_markers(list(dict.fromkeys(p["runtime"] for p in points)))
    front = [points[i] for i in pareto_front([(p["size"], p["accuracy"]) for p in points])]
    fig, ax = plt.subplots(figsize=(10, _legend_height(len(points) + 1, 1)))
    fig.subplots_adjust(right=0.7)
    ax.set_xscale("log")
    xs = [p["size"] for p in points]
    _pad_axes(ax, [{"median": p["size"], "p90": None, "accuracy": p["accuracy"]} for p in points])
    ax.set_xlim(min(xs) / 2.2, max(xs) * 2.2)
    right = ax.get_xlim()[1]
    step_x = [p["size"] for p in front] + [right]
    step_y = [p["accuracy"] for p in front] + [front[-1]["accuracy"]]
    ax.step(step_x, step_y, where="post", color="#444444", linewidth=1.4, linestyle="--", alpha=0.8, zorder=1)
    for p in points:
        on_front = p in front
        ax.scatter(p["size"], p["accuracy"], s=95 if on_front else 70, color=colors[p["variant"]],
                   marker=markers[p["runtime"]], edgecolor="#222222" if on_front else "white",
                   linewidth=1.1 if on_front else 0.8, zorder=3)
    renderer = fig.canvas.get_renderer()
    taken = [_marker_box(ax, (p["size"], p["accuracy"]), 16) for p in points] + _step_boxes(ax, step_x, step_y)
    for p in front:
        _place_label(ax, (p["size"], p["accuracy"]),
                     f"{variant_label(metrics, p['variant'])}\n{format_bytes(p['size'])} · {p['accuracy']:.1f} %",
                     POINT_LABEL_SPOTS, taken, renderer, fontsize=8.5, fontweight="bold",
                     color=colors[p["variant"]], linespacing=1.15)
    for p in points:  # the others get a plain label where one fits without overlapping
        if p not in front:
            _place_label(ax, (p["size"], p["accuracy"]), variant_label(metrics, p["variant"]), NEAR_LABEL_SPOTS, taken,
                         renderer, optional=True, fontsize=8, color=colors[p["variant"]])
    handles = [Line2D([], [], color=colors[p["variant"]], marker=markers[p["runtime"]], linestyle="", markersize=8,
                      markeredgecolor="#222222" if p in front else "white",
                      label=f"{variant_label(metrics, p['variant'])} · {runtime_name(p['runtime'])}")
               for p in points]
    handles.append(Line2D([], [], color="#444444", linestyle="--", linewidth=1.4,
                          label="Pareto front (outlined points)"))
    _stacked_legends(fig, [("Variant (colour) and runtime (marker)", handles)])
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v).replace(".0 ", " ")))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("Model file size (bytes on disk, log scale)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(title, loc="left")
    return fig


def _step_boxes(ax, xs: list[float], ys: list[float], width: float = 4) -> list[Bbox]:
    """Thin pixel boxes along a ``where="post"`` step line, so labels keep off it."""
    boxes = []
    corners = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        boxes.append(Bbox.from_extents(x0, y0 - width / 2, x1, y0 + width / 2))  # along, at the left point's height
        boxes.append(Bbox.from_extents(x1 - width / 2, min(y0, y1), x1 + width / 2, max(y0, y1)))  # then up
    return boxes


# --- 4. training curves ---------------------------------------------------------------------------


def training_figure(metrics: dict, history: list[dict]) -> Figure:
    """Loss per term per epoch of the distilled student (or the first trained model), val accuracy on a twin axis."""
    model = next((m for m in TRAINING_MODELS if model_rows(history, m)), None)
    if model is None:
        return placeholder_figure("Training", "No training history was recorded.")
    rows = model_rows(history, model)
    colors = variant_colors(metrics)
    fig, ax = plt.subplots(figsize=(10, 5))
    handles = _loss_lines(ax, rows)
    scale = _log_loss_axis(ax)
    ax_acc = ax.twinx()
    ax_acc.grid(False)
    ax_acc.spines["right"].set_visible(True)
    handles += _accuracy_line(ax_acc, rows, colors.get(model, "#333333"),
                              f"val accuracy — {variant_label(metrics, model)}")
    scratch = model_rows(history, "student_scratch") if model == "student" else []
    if scratch:
        handles += _accuracy_line(ax_acc, scratch, colors.get("student_scratch", "#8c8c8c"),
                                  f"val accuracy — {variant_label(metrics, 'student_scratch')}")
    ax_acc.set_ylabel("Validation accuracy (%)")
    ax_acc.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.yaxis.set_major_formatter(PERCENT)
    ax.set_xlabel("Epoch")
    ax.set_ylabel(f"Training loss (per term, {scale})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Training of {variant_label(metrics, model)}: loss terms and validation accuracy", loc="left")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    return fig


def _loss_lines(ax, rows: list[dict]) -> list:
    """Total train loss plus each ``loss/*`` term; sub-parts (``kd.soft``) share their parent's colour, dashed."""
    handles = []
    epochs, total = series(rows, "train_loss")
    if total:
        handles += ax.plot(epochs, total, color="#c8c8c8", linewidth=6, solid_capstyle="round",
                           label="total train loss", zorder=1)
    parents: dict[str, str] = {}
    sub_parts: dict[str, int] = {}
    for column in loss_columns(rows):
        term = loss_term(column)
        parent = term.split(".")[0]
        color = parents.setdefault(parent, LOSS_COLORS[len(parents) % len(LOSS_COLORS)])
        style = "-"
        if term != parent:
            sub_parts[parent] = sub_parts.get(parent, -1) + 1
            style = LINESTYLES[sub_parts[parent] % len(LINESTYLES)]
        epochs, values = series(rows, column)
        handles += ax.plot(epochs, values, color=color, linewidth=1.9 if style == "-" else 1.5, linestyle=style,
                           label=f"loss: {term}")
    return handles


def _log_loss_axis(ax) -> str:
    """Put the loss lines on a log y axis, since the first epoch's loss is often many times the later ones and a
    linear axis flattens them; a symmetric log (linear near 0) when a term reaches zero or below. Returns the
    scale's name for the axis label."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()] + [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "linear scale"
    if (values > 0).all():
        ax.set_yscale("log")
        if math.log10(values.max() / values.min()) <= 2:
            _log_ticks(ax.yaxis, "")  # ticks at 1, 2 and 5 per decade, else a short span shows one tick or none
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        return "log scale"
    magnitudes = np.abs(values[values != 0])
    top = float(magnitudes.max()) if magnitudes.size else 1.0
    threshold = 10 ** math.floor(math.log10(max(float(magnitudes.min()) if magnitudes.size else top, top * 1e-4)))
    ax.set_yscale("symlog", linthresh=threshold)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    return f"symmetric log scale, linear within ±{threshold:g}"


def _accuracy_line(ax, rows: list[dict], color: str, label: str) -> list:
    """Validation accuracy (%) per epoch as a marked line."""
    epochs, accuracy = series(rows, "val_accuracy")
    if not accuracy:
        return []
    scale = 100 if max(accuracy) <= 1 else 1
    return ax.plot(epochs, [scale * a for a in accuracy], color=color, marker="o", markersize=4.5, linewidth=1.6,
                   label=label)


# --- 5. knowledge transfer per class --------------------------------------------------------------


def class_names(metrics: dict, n: int) -> list[str]:
    """The run's class names, or indices when the spec gives none (or the wrong number)."""
    names = ((metrics.get("run") or {}).get("spec") or {}).get("class_names") or []
    return [str(c) for c in names] if len(names) == n else [str(i) for i in range(n)]


def deployed_variant(metrics: dict) -> str:
    """The variant that is deployed: the one ``deploy.variant`` names, else the int8 student when there is one, else
    the fp32 distilled student. The per-class and confusion figures show it, since its errors are the ones that ship."""
    named = (metrics.get("deploy") or {}).get("variant")
    if named:
        return str(named)
    return "student_int8" if "student_int8" in (metrics.get("variants") or {}) else "student"


def transfer_figure(metrics: dict) -> Figure:
    """Per-class test accuracy of teacher, scratch student and the deployed (distilled) variant as grouped bars."""
    title = "Knowledge transfer: per-class test accuracy"
    shown = [v for v in (*TRANSFER_VARIANTS, deployed_variant(metrics))
             if variant_metric(metrics, v, "per_class_accuracy")]
    if not shown:
        return placeholder_figure(title, "No per-class accuracy was measured.")
    n = max(len(variant_metric(metrics, v, "per_class_accuracy")) for v in shown)
    names = class_names(metrics, n)
    colors = variant_colors(metrics)
    fig, ax = plt.subplots(figsize=(9.3, 5))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        acc = [100 * a if a is not None else np.nan for a in variant_metric(metrics, name, "per_class_accuracy")]
        acc += [np.nan] * (n - len(acc))
        ax.bar(np.arange(n) + (i - (len(shown) - 1) / 2) * width, acc, width=width * 0.92, color=colors[name],
               label=_transfer_label(metrics, name), zorder=2)
    ax.set_ylim(0, 100.5)  # from 0: a zoomed axis would make a 1-point gap look like a large one
    rotate = n > 12 or max(len(c) for c in names) > 6
    ax.set_xticks(range(n), names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("Class")
    ax.set_ylabel("Test accuracy of the class (%)")
    ax.grid(axis="x", visible=False)
    ax.set_title(title + _agreement_note(metrics), loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2 if rotate else -0.12), ncol=len(shown))
    return fig


def _transfer_label(metrics: dict, name: str) -> str:
    """Legend label of a variant, with its agreement with the teacher for students."""
    agreement = variant_metric(metrics, name, "agreement_with_teacher")
    label = variant_label(metrics, name)
    return label if name == "teacher" or agreement is None else f"{label}, {100 * agreement:.1f} % agreement"


def _agreement_note(metrics: dict) -> str:
    """Title suffix 'agreement with teacher: X % from scratch → Y % <deployed>' when both report it."""
    deployed = deployed_variant(metrics)
    scratch = variant_metric(metrics, "student_scratch", "agreement_with_teacher")
    distilled = variant_metric(metrics, deployed, "agreement_with_teacher")
    if scratch is None or distilled is None:
        return ""
    return (f"\nagreement with teacher: {100 * scratch:.1f} % from scratch → {100 * distilled:.1f} % "
            f"{variant_noun(metrics, deployed)}")


# --- 6. confusion matrix --------------------------------------------------------------------------


def confusion_figure(metrics: dict) -> Figure:
    """The deployed variant's confusion matrix: counts in cells, colour = share of the true class."""
    deployed = deployed_variant(metrics)
    title = f"{variant_label(metrics, deployed)}: confusion matrix on the test set"
    counts = variant_metric(metrics, deployed, "confusion")
    if not counts:
        return placeholder_figure(title, f"No confusion matrix was measured for the {variant_noun(metrics, deployed)}.")
    counts = np.asarray(counts, dtype=float)
    n = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(8.2, max(6.5, 0.35 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares * 100, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0, vmax=100))
    if n <= 20:
        for (r, c), count in np.ndenumerate(counts):
            if count:
                ax.text(c, r, f"{count:.0f}", ha="center", va="center", fontsize=9 if n <= 12 else 7.5,
                        color="white" if shares[r, c] > 0.55 else "#222222")
    names = class_names(metrics, n)
    rotate = n > 12 or max(len(c) for c in names) > 3
    ax.set_xticks(range(n), names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(n), names)
    ax.grid(False)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title} ({counts.sum():.0f} samples)", loc="left")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("Share of the true class (%, square-root colour scale)")
    bar.set_ticks([0, 1, 5, 10, 25, 50, 75, 100])
    return fig
