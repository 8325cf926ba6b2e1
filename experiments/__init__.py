"""Evaluation tasks (one module per task family) and the resumable runner behind
``python tools/run_eval.py --config configs/<name>.yaml``."""

from . import recall
from .attention_fidelity import AttentionFidelity
from .copy_task import InContextCopy
from .fidelity import Fidelity
from .helmet import HelmetLocal
from .videomme import VideoMME

TASKS = {cls.name: cls for cls in (Fidelity, InContextCopy, AttentionFidelity)} | recall.TASKS | {"helmet": HelmetLocal, "videomme": VideoMME}

__all__ = ["TASKS", "Fidelity", "InContextCopy"]
