"""The search section of a recipe, read and checked: the space (dotted recipe paths and their distributions), the
measured objectives and the constraints. Everything here is checked before a study is opened or anything trains;
errors name the ``search.*`` key."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel

from ..errors import RecipeError, TinyKDError, closest
from ..recipe import Recipe, apply_override, load_recipe
from ..yamlload import short_repr

# What a trial measures, with the direction that is better and what it is. Accuracy is on the validation split:
# the test split is read only for the report of the best trials, never to choose them.
METRICS: dict[str, tuple[str, str]] = {
    "accuracy": ("maximize", "validation top-1 accuracy of the distilled student (fp32, best epoch)"),
    "int8_accuracy": ("maximize", "validation top-1 accuracy of the int8 student in ONNX Runtime"),
    "int8_size_kb": ("minimize", "size of the int8 student's file (student.int8.onnx), KB of 1000 bytes"),
    "fp32_size_kb": ("minimize", "size of the fp32 student's ONNX file, KB"),
    "params": ("minimize", "parameters of the student"),
    "macs": ("minimize", "multiply-accumulates of one inference of the student"),
    "latency_ms": ("minimize", "batch-1 median latency of the artifact the run deploys (ms, measure.threads)"),
    "int8_latency_ms": ("minimize", "batch-1 median latency of the int8 student in ONNX Runtime (ms)"),
    "energy_uj": ("minimize", "estimated energy of one int8 inference (µJ, per-operation model)"),
    "flash_kb": ("minimize", "flash the int8 model file takes on a microcontroller, runtime not included (KB)"),
    "sram_kb": ("minimize", "peak activation SRAM of the int8 model (KB)"),
    "trial_seconds": ("minimize", "wall time of the trial: training, export and measurement, the study's teacher "
                      "left out (s)"),
}
INT8_METRICS = ("int8_accuracy", "int8_size_kb", "int8_latency_ms", "energy_uj", "flash_kb", "sram_kb")
KINDS = ("float", "int", "choice")
NOT_SEARCHABLE = ("search", "name", "output_dir")


@dataclass(frozen=True)
class Dimension:
    """One entry of the space: a recipe path and the distribution its value is drawn from."""

    key: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Optuna's categorical values are scalars: lists and mappings become their JSON text."""
        if self.kind != "choice" or all(_scalar(c) for c in self.choices):
            return None
        return tuple(json.dumps(c, sort_keys=True) for c in self.choices)

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.CategoricalDistribution(self.labels or self.choices)

    def suggest(self, trial) -> Any:
        """This trial's value (the recipe value: a list or mapping for a structured choice)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return self.value(trial.suggest_categorical(self.key, list(self.labels or self.choices)))

    def value(self, param: Any) -> Any:
        """The recipe value of an Optuna parameter value."""
        labels = self.labels
        return copy.deepcopy(self.choices[labels.index(param)]) if labels else param

    def param(self, value: Any) -> Any:
        """The Optuna parameter of a recipe value, or None when the distribution does not hold it."""
        if self.kind == "choice":
            for i, c in enumerate(self.choices):
                if c == value and type(c) is type(value):
                    return self.labels[i] if self.labels else c
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return None
        if self.kind == "int" and (not float(value).is_integer() or (int(value) - int(self.low)) % int(self.step or 1)):
            return None
        return int(value) if self.kind == "int" else float(value)

    def probes(self) -> list:
        """The values checked before any trial: both ends of a range, every choice."""
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(short_repr(c) for c in self.choices)
        extra = (", log" if self.log else "") + (f", step {self.step:g}" if self.step else "")
        return f"{self.kind} in [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # maximize | minimize


@dataclass(frozen=True)
class Bound:
    """``max_<metric>`` or ``min_<metric>``: a measured metric must stay at or below / above ``limit``."""

    metric: str
    kind: str  # max | min
    limit: float

    @property
    def key(self) -> str:
        return f"{self.kind}_{self.metric}"

    def violation(self, value: float) -> float:
        """Optuna's constraint value: ≤ 0 when met, the amount by which it is missed otherwise."""
        return value - self.limit if self.kind == "max" else self.limit - value


@dataclass(frozen=True)
class SearchPlan:
    """The search section of a recipe, checked."""

    dimensions: tuple[Dimension, ...]
    objectives: tuple[Objective, ...]
    bounds: tuple[Bound, ...] = ()
    board: str | dict | None = None
    trials: int = 20
    storage: str | None = None
    sampler: str = "auto"
    pruning: bool = False
    baseline: bool = True
    seed: int = 0
    metrics: tuple[str, ...] = field(default=())  # every metric the objectives and bounds read

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.dimensions if d.key == key)


def _err(what: str, fix: str, where: str) -> RecipeError:
    return RecipeError(what, fix, where=where)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def valid_metrics() -> str:
    return ", ".join(f"{name} ({METRICS[name][0]})" for name in METRICS)


def _metric(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in METRICS:
        guess = closest(str(name), METRICS) if isinstance(name, str) else None
        hint = f"did you mean '{guess}'? " if guess else ""
        if isinstance(name, str) and name.startswith("test"):
            hint = "the test split is kept for the report of the best trials; "
        raise _err(f"unknown metric {short_repr(name)}", f"{hint}valid metrics: {valid_metrics()}", where)
    return name


def parse_search(recipe: Recipe) -> SearchPlan:
    """The recipe's search section, checked: a RecipeError naming the ``search.*`` key for no section, an empty
    space, a bad distribution, an unknown metric or constraint, and pruning with several objectives."""
    s = recipe.search
    if s is None:
        raise _err("the recipe has no search section", "add one, e.g.\n  search:\n    trials: 20\n    space:\n"
                   "      distill.losses.0.temperature: {float: [1, 8], log: true}\n"
                   "      student.kwargs.hidden: {int: [8, 64], step: 8}", "search")
    if not s.space:
        raise _err("the search space is empty: nothing to search", "name at least one recipe path with a "
                   "distribution, e.g. distill.losses.0.alpha: {float: [0.1, 0.95]}", "search.space")
    dims = tuple(parse_dimension(key, spec) for key, spec in s.space.items())
    objectives = []
    for i, o in enumerate(s.objectives):
        where = f"search.objectives[{i}]"
        if isinstance(o, str):
            o = {"metric": o}
        unknown = sorted(set(o) - {"metric", "direction"})
        if unknown or "metric" not in o:
            raise _err(f"an objective is {{metric: NAME, direction: maximize|minimize}}, got {short_repr(o)}",
                       "write e.g. {metric: accuracy, direction: maximize}", where)
        metric = _metric(o["metric"], where)
        direction = o.get("direction") or METRICS[metric][0]
        if direction not in ("maximize", "minimize"):
            raise _err(f"direction must be maximize or minimize, got {short_repr(direction)}",
                       f"{metric} is usually {METRICS[metric][0]}d", where)
        objectives.append(Objective(metric, direction))
    if len({o.metric for o in objectives}) < len(objectives):
        raise _err("a metric is named twice among the objectives", "name each metric once", "search.objectives")
    if s.pruning and len(objectives) > 1:
        raise _err(f"pruning stops trials on their intermediate validation accuracy, which fits one objective; "
                   f"this search has {len(objectives)}", "set search.pruning: false, or keep one objective",
                   "search.pruning")
    if s.pruning and objectives[0].metric != "accuracy":
        raise _err(f"pruning reports validation accuracy per epoch, and the objective is {objectives[0].metric}",
                   "set search.pruning: false, or make accuracy the objective", "search.pruning")
    bounds, board = _constraints(s.constraints)
    metrics = tuple(dict.fromkeys([o.metric for o in objectives] + [b.metric for b in bounds]))
    if not recipe.quantize.enabled:
        int8 = [m for m in metrics if m in INT8_METRICS] + (["board"] if board is not None else [])
        if int8:
            raise _err(f"{', '.join(int8)} measure the int8 student, and quantize.enabled is false",
                       "set quantize.enabled: true, or use fp32 metrics (accuracy, fp32_size_kb, latency_ms)",
                       "search.objectives" if any(o.metric in int8 for o in objectives) else "search.constraints")
    check_storage(s.storage)
    sampler = s.sampler
    if sampler == "auto":
        sampler = "nsga2" if len(objectives) > 1 else "tpe"
    return SearchPlan(dims, tuple(objectives), bounds, board, s.trials, s.storage, sampler, s.pruning, s.baseline,
                      recipe.seed if s.seed is None else s.seed, metrics)


def check_storage(storage: str | None) -> None:
    """None (a journal file in the search folder) or an SQLAlchemy URL."""
    if storage is not None and "://" not in storage:
        raise _err(f"storage {storage!r} is not an SQLAlchemy URL", "leave search.storage null (a journal file in "
                   "the search folder), or give a URL such as sqlite:///search.db or postgresql://user@host/db",
                   "search.storage")


def _constraints(spec: dict) -> tuple[tuple[Bound, ...], str | dict | None]:
    bounds, board = [], None
    for key, value in spec.items():
        where = f"search.constraints.{key}"
        if key == "board":
            from ..deploy.mcu import get_board

            try:
                get_board(value)
            except TinyKDError as err:
                raise _err(err.what, err.fix, where) from None
            board = value
            continue
        kind, _, metric = str(key).partition("_")
        if kind not in ("max", "min") or metric not in METRICS:
            raise _err(f"unknown constraint '{key}'", "use board: BOARD, or max_<metric> / min_<metric> with a "
                       f"metric of: {', '.join(METRICS)} (e.g. max_latency_ms: 5)", where)
        if not _number(value):
            raise _err(f"a bound is a number, got {short_repr(value)}", f"write e.g. {key}: 5", where)
        bounds.append(Bound(metric, kind, float(value)))
    return tuple(bounds), board


def parse_dimension(key: Any, spec: Any) -> Dimension:
    """One space entry: ``{float: [low, high]}``, ``{int: [low, high]}`` (with ``log`` or ``step``) or
    ``{choice: [...]}``."""
    where = f"search.space.{key}"
    fix = "write {float: [low, high]}, {int: [low, high], step: 8}, {float: [1e-4, 1e-1], log: true} or {choice: [a, b]}"
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise _err(f"a space key is a dotted recipe path, got {short_repr(key)}", "e.g. distill.losses.0.alpha",
                   "search.space")
    if key.split(".")[0] in NOT_SEARCHABLE:
        raise _err(f"'{key.split('.')[0]}' cannot be searched", "search the settings of the run: data, teacher, "
                   "student, distill, quantize, ...", where)
    if not isinstance(spec, dict):
        raise _err(f"a distribution is a mapping, got {short_repr(spec)}", fix, where)
    kinds = [k for k in KINDS if k in spec]
    unknown = sorted(set(map(str, spec)) - set(KINDS) - {"log", "step"})
    if len(kinds) != 1 or unknown:
        got = f"unknown key(s) {', '.join(unknown)}" if unknown else (
            f"{' and '.join(kinds)} together" if kinds else "no float, int or choice")
        raise _err(f"a distribution has exactly one of float, int, choice ({got})", fix, where)
    kind = kinds[0]
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise _err(f"log is true or false, got {short_repr(log)}", fix, where)
    if kind == "choice":
        choices = spec["choice"]
        if log or step is not None:
            raise _err("log and step apply to float and int ranges, not to a choice", fix, where)
        if not isinstance(choices, list) or not choices:
            raise _err(f"choice takes a non-empty list of values, got {short_repr(choices)}", fix, where)
        texts = [json.dumps(c, sort_keys=True) for c in choices]
        if len(set(texts)) < len(texts):
            raise _err("a choice lists a value twice", "list each value once", where)
        return Dimension(key, kind, choices=tuple(choices))
    bounds = spec[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) for b in bounds)):
        raise _err(f"{kind} takes [low, high], two numbers, got {short_repr(bounds)}", fix, where)
    low, high = bounds
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise _err(f"int takes whole-number bounds, got {short_repr(bounds)}", "use float for a real range", where)
    if not low < high:
        raise _err(f"low must be below high, got [{low}, {high}]", "write [low, high] with low < high", where)
    if log and low <= 0:
        raise _err(f"a log range needs low > 0, got {low}", "raise low above 0, or drop log", where)
    if step is not None:
        if log:
            raise _err("log and step cannot be combined", "keep one of them", where)
        if not _number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise _err(f"step must be a positive {'whole ' if kind == 'int' else ''}number, got {short_repr(step)}",
                       fix, where)
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9:
            top = low + math.floor(span) * step
            raise _err(f"high - low ({high - low:g}) is not a multiple of step {step:g}",
                       f"use [{low:g}, {top:g}] or [{low:g}, {top + step:g}]", where)
    return Dimension(key, kind, float(low), float(high), log, None if step is None else float(step))


# --- recipe paths ------------------------------------------------------------------------------------------------


def _section(annotation: Any) -> type[BaseModel] | None:
    """The recipe section class in an annotation (``X``, ``X | None``, ``list[X]``), or None for a plain value or a
    free mapping (kwargs, options)."""
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack.extend(get_args(a))
    return None


def _owner(parts: list[str]) -> type[BaseModel] | None:
    """The section class whose fields are the keys at ``parts`` (None: a free mapping, any key allowed)."""
    model: type[BaseModel] | None = Recipe
    for part in parts:
        if part.isdigit():
            continue  # a list item: the list's element section
        if model is None or part not in model.model_fields:
            return None
        model = _section(model.model_fields[part].annotation)
    return model


def check_path(resolved: dict, key: str) -> None:
    """``key`` names a setting of the resolved recipe: every section on the way exists; the last key exists, or
    sits in a free mapping (a model's kwargs, a reader's options, a loss term's parameters), checked when the
    recipe is built."""
    parts = key.split(".")
    node: Any = resolved
    where = f"search.space.{key}"
    for i, part in enumerate(parts):
        here, above = ".".join(parts[:i + 1]), ".".join(parts[:i])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise _err(f"'{here}' is not in the recipe: '{above}' is a list of {len(node)} item(s)",
                           f"use an index from 0 to {len(node) - 1}" if node else f"'{above}' is empty", where)
            node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                owner = _owner(parts[:i])
                if owner is None or owner.model_config.get("extra") == "allow":
                    return  # a new key of a free mapping
                valid = sorted(k for k in owner.model_fields if k != "base_dir")
                guess = closest(part, valid)
                raise _err(f"'{here}' is not in the recipe", (f"did you mean '{guess}'? " if guess else "")
                           + f"keys of {above or 'the recipe'}: {', '.join(valid)}", where)
            node = node[part]
        else:
            raise _err(f"'{here}' is not in the recipe: '{above}' is a value ({short_repr(node)}), not a section",
                       f"search '{above}' itself", where)


def resolved_values(recipe: Recipe, plan: SearchPlan) -> dict[str, Any]:
    """The recipe's own value at each space key (keys it does not set are left out)."""
    resolved = recipe.model_dump(mode="json")
    out = {}
    for d in plan.dimensions:
        node: Any = resolved
        for part in d.key.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                break
        else:
            out[d.key] = node
    return out


def apply_values(base: dict, values: dict[str, Any]) -> dict:
    """A copy of the recipe dump ``base`` with ``values`` at their dotted paths, shallower paths first (a chosen
    loss list, then a parameter of one of its terms)."""
    data = copy.deepcopy(base)
    for key in sorted(values, key=lambda k: k.count(".")):
        try:
            apply_override(data, key.split("."), copy.deepcopy(values[key]))
        except RecipeError as err:
            raise _err(err.what, err.fix, f"search.space.{key}") from None
    return data


def with_values(recipe: Recipe, values: dict[str, Any], extra: dict[str, Any] | None = None) -> Recipe:
    """``recipe`` with the space's ``values`` (then ``extra``, settings of the search itself) applied, validated."""
    data = apply_values(recipe.model_dump(mode="json"), values)
    for key, value in (extra or {}).items():
        apply_override(data, key.split("."), value)
    return load_recipe(data).model_copy(update={"base_dir": recipe.base_dir})


def check_space(recipe: Recipe, plan: SearchPlan) -> None:
    """Every key names a setting of the recipe, and every probe value (both ends of a range, each choice) makes a
    valid recipe with the other settings as written."""
    resolved = recipe.model_dump(mode="json")
    for d in plan.dimensions:
        check_path(resolved, d.key)
    for _ in probe_recipes(recipe, plan):
        pass  # each probe recipe validates as it is made


def probe_recipes(recipe: Recipe, plan: SearchPlan, extra: dict[str, Any] | None = None):
    """(dimension, value, recipe) for each probe value; a RecipeError naming the key and the value that breaks."""
    for d in plan.dimensions:
        for value in d.probes():
            try:
                yield d, value, with_values(recipe, {d.key: value}, extra)
            except TinyKDError as err:
                raise probe_error(d, value, err) from None


def probe_error(d: Dimension, value: Any, err: TinyKDError) -> RecipeError:
    what = err.what if not err.where or err.where.startswith("search.") else f"{err.where}: {err.what}"
    return _err(f"with {short_repr(value)} the recipe is invalid: {what}", err.fix or "narrow the distribution",
                f"search.space.{d.key}")
