"""One way to silence exporters: their loggers at ERROR, warnings ignored, stdout captured (errors still raise)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping


@contextlib.contextmanager
def quiet(loggers: Iterable[str], env: Mapping[str, str] | None = None, *, stdout: bool = True) -> Iterator[None]:
    """Run the block with ``loggers`` at ERROR, warnings ignored, stdout swallowed (when ``stdout``) and the
    environment variables ``env`` set; everything is restored afterwards."""
    lgs = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in lgs]
    old_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    for lg in lgs:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), (contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(lgs, levels):
            lg.setLevel(lv)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
