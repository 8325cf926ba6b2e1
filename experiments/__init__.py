"""Evaluation tasks (one module per task family) and the resumable runner behind
``python tools/run_eval.py --config configs/<name>.yaml``."""

from .copy_task import InContextCopy
from .fidelity import Fidelity

TASKS = {cls.name: cls for cls in (Fidelity, InContextCopy)}

__all__ = ["TASKS", "Fidelity", "InContextCopy"]
