"""Interrupting a training run as a crash would: right after an epoch's checkpoint is on disk."""


class Stop(Exception):
    """Raised by a trainer that ``stop_after`` prepared."""


def stop_after(trainer, epoch: int):
    """Make ``trainer`` raise Stop once ``epoch`` is logged (its checkpoint is already written); returns it."""
    log = trainer._log

    def stop(row):
        log(row)
        if row["epoch"] == epoch:
            raise Stop
    trainer._log = stop
    return trainer
