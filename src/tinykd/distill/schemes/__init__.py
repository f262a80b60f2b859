"""Training schemes: who teaches whom. Every scheme drives the one Trainer (distill/trainer.py).

* offline with a teacher-output cache: ``TeacherCache`` (distill/cache.py), a TeacherSource for the trainer;
* online: ``Peers`` + the ``dml`` / ``peer_ensemble`` loss terms;
* self-distillation: the ``byot`` / ``pskd`` loss terms, ``EarlyExits``, ``born_again``;
* multi-teacher: ``TeacherEnsemble`` (a TeacherSource) + the ``multi_hint`` loss term;
* teacher-assistant chains: ``distill_chain``, ``teacher_assistant_chain``, ``assistant_kwargs``;
* data-free: ``DAFLBatches`` (a BatchSource), ``deep_inversion``, ``save_grid``.

Importing this package registers the loss terms above.
"""
from ..cache import TeacherCache
from ..sources import BatchSource, ModuleTeacher, TeacherSource
from .assistant import StageResult, assistant_kwargs, distill_chain, teacher_assistant_chain
from .datafree import (BNStatistics, DAFLBatches, Generator, dafl_losses, deep_inversion, image_priors,
                       inversion_losses, invert_batch, save_grid)
from .multiteacher import WEIGHTS, MultiHint, TeacherEnsemble
from .online import DML, PeerEnsemble, Peers, peer_accuracies
from .selfdistill import BYOT, PSKD, EarlyExits, born_again

__all__ = ["BYOT", "BNStatistics", "BatchSource", "DAFLBatches", "DML", "EarlyExits", "Generator", "ModuleTeacher",
           "MultiHint", "PSKD", "PeerEnsemble", "Peers", "StageResult", "TeacherCache", "TeacherEnsemble",
           "TeacherSource", "WEIGHTS", "assistant_kwargs", "born_again", "dafl_losses", "deep_inversion",
           "distill_chain", "image_priors", "inversion_losses", "invert_batch", "peer_accuracies", "save_grid",
           "teacher_assistant_chain"]
