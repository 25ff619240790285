"""One function per recipe stage kind, ``run_<kind>(run, stage) -> summary``; see :mod:`..recipes`."""

from .fit import run_fit
from .handoff import run_handoff
from .kd import run_kd
from .progressive import run_progressive
from .transfer import run_transfer

RUNNERS = {"fit": run_fit, "transfer": run_transfer, "kd": run_kd, "progressive": run_progressive,
           "handoff": run_handoff}

__all__ = ["RUNNERS"]
