"""Search: an Optuna study over the settings a recipe's ``search`` section names — distillation policy (temperature,
α, loss weights, which terms, layer pairs) and student architecture (width, depth) in one — with every objective
and constraint measured by the stages (validation accuracy, int8 size, latency, energy, microcontroller fit).

* ``parse_search(recipe) -> SearchPlan`` and ``check_space``: the section, checked before anything trains;
* ``search(recipe, trials=N, study_name=...) -> SearchResult``: run trials (several workers may share a study),
  then write ``report.html``, ``best.yaml`` (and ``pareto/``) in the search folder.

Optuna is the ``search`` extra (``pip install 'tinykd[search]'``); it is imported when a study opens.
"""
from .space import METRICS, Bound, Dimension, Objective, SearchPlan, check_space, parse_search
from .study import SearchResult, search

__all__ = ["METRICS", "Bound", "Dimension", "Objective", "SearchPlan", "SearchResult", "check_space", "parse_search",
           "search"]
