"""Training schemes: who teaches whom. Every scheme drives the one Trainer (distill/trainer.py) and registers in
``SCHEMES`` by its recipe name (one ``Scheme`` class per file, see base.py):

* ``offline`` (offline.py): the teacher teaches; with a teacher-output cache, ``TeacherCache`` (distill/cache.py);
* ``multi_teacher`` (multiteacher.py): ``TeacherEnsemble`` (a TeacherSource) + the ``multi_hint`` loss term;
* ``assistant`` (assistant.py): ``distill_chain``, ``teacher_assistant_chain``, ``assistant_kwargs``;
* ``data_free`` (datafree.py): ``DAFLBatches`` (a BatchSource), ``deep_inversion``, ``save_grid``;
* ``online`` (online.py): ``Peers`` + the ``dml`` / ``peer_ensemble`` loss terms;
* ``self`` (selfdistill.py): the ``byot`` / ``pskd`` loss terms, ``EarlyExits``, ``born_again``.

Importing this package registers the schemes (in the order above, then any other module of this folder, so a new
scheme is one file with its ``@register_scheme`` class) and the loss terms above.
"""
import importlib
import pkgutil

from ..cache import TeacherCache
from ..sources import BatchSource, ModuleTeacher, TeacherSource
from .base import Scheme, SchemeContext, SchemeFigure, SchemeReport
from .registry import SCHEMES, find_scheme, get_scheme, register_scheme, scheme_names, schemes
from .offline import Offline  # noqa: I001  (registration order: the order of distill.scheme's names)
from .multiteacher import WEIGHTS, MultiHint, MultiTeacher, TeacherEnsemble
from .assistant import Assistant, StageResult, assistant_kwargs, distill_chain, teacher_assistant_chain
from .datafree import (BNStatistics, DAFLBatches, DataFree, Generator, dafl_losses, deep_inversion, image_priors,
                       inversion_losses, invert_batch, save_grid)
from .online import DML, Online, PeerEnsemble, Peers, peer_accuracies
from .selfdistill import BYOT, PSKD, EarlyExits, SelfDistill, born_again

for _module in pkgutil.iter_modules(__path__):  # a scheme added as its own file registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = ["Assistant", "BYOT", "BNStatistics", "BatchSource", "DAFLBatches", "DML", "DataFree", "EarlyExits",
           "Generator", "ModuleTeacher", "MultiHint", "MultiTeacher", "Offline", "Online", "PSKD", "PeerEnsemble",
           "Peers", "SCHEMES", "Scheme", "SchemeContext", "SchemeFigure", "SchemeReport", "SelfDistill",
           "StageResult", "TeacherCache", "TeacherEnsemble", "TeacherSource", "WEIGHTS", "assistant_kwargs",
           "born_again", "dafl_losses", "deep_inversion", "distill_chain", "find_scheme", "get_scheme",
           "image_priors", "inversion_losses", "invert_batch", "peer_accuracies", "register_scheme", "save_grid",
           "scheme_names", "schemes", "teacher_assistant_chain"]
