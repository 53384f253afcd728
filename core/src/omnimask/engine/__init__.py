"""Training engine: `pretrain(recipe, config, run_dir)` and the pieces it is made of."""

from omnimask.engine.engine import Engine, NonFiniteLossError, ResumeError, TrainResult, pretrain

__all__ = ["Engine", "NonFiniteLossError", "ResumeError", "TrainResult", "pretrain"]
