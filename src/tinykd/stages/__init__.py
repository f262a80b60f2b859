"""The stages of a run, each a public function with a typed result, callable alone (a search, a benchmark) or in
the order ``tinykd.pipeline.run`` gives them:

* ``preflight(recipe, bundle)``: everything a recipe can get wrong, before anything is written or trains;
* ``load_data(recipe) -> DataBundle``;
* ``train_teacher(recipe, bundle, run_dir) -> TeacherResult``: trained or loaded, frozen, pruned if asked;
* ``train_scratch(recipe, bundle, run_dir) -> ScratchResult``: the student on the labels alone;
* ``distill(recipe, bundle, run_dir, teacher) -> DistillResult``: the student taught by the recipe's scheme;
* ``compress(recipe, bundle, run_dir, student, teacher) -> CompressResult``: pruned / low-rank / QAT students;
* ``export(recipe, bundle, run_dir, models) -> ExportResult``: the artifacts;
* ``measure(recipe, bundle, run_dir, models, exported) -> dict``: the body of metrics.json.

The run folder (claiming, status.json, resume) is ``stages.rundir``; small shared pieces are ``stages.common``.
The package's names are the functions: ``tinykd.stages.export`` is ``export()``, and its module is reached by
``from tinykd.stages.export import ExportResult`` or ``importlib.import_module("tinykd.stages.export")``.
"""
from .common import LABELS, EnergyTracker, build_terms, label, trained_weights
from .compress import CompressResult, compress
from .data import load_data
from .distill import DistillResult, ScratchResult, distill, train_scratch
from .export import ExportResult, export
from .measure import CLAIMS, PARITY_MIN, measure
from .preflight import preflight
from .teacher import TeacherResult, train_teacher

__all__ = ["CLAIMS", "LABELS", "PARITY_MIN", "CompressResult", "DistillResult", "EnergyTracker", "ExportResult",
           "ScratchResult", "TeacherResult", "build_terms", "compress", "distill", "export", "label", "load_data",
           "measure", "preflight", "train_scratch", "train_teacher", "trained_weights"]
