"""Learning-rate schedules: linear warmup, then cosine decay, steps, or constant.

The schedule is a pure function of the optimizer step, so resuming needs only the step and the
schedule's few numbers (:meth:`LRSchedule.state_dict`).

Example:
    >>> s = LRSchedule(base_lr=1.0, total_steps=100, warmup_steps=10, kind="cosine",
    ...                min_lr_ratio=0.0)
    >>> round(s.lr(0), 3), round(s.lr(10), 3), round(s.lr(55), 3), round(s.lr(100), 3)
    (0.1, 1.0, 0.5, 0.0)
    >>> s = LRSchedule(1.0, 100, 0, kind="step", milestones=[0.5], gamma=0.1)
    >>> s.lr(49), s.lr(50)
    (1.0, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


class LRSchedule:
    """Warmup then ``cosine`` / ``step`` / ``constant``.

    Args:
        base_lr: the peak learning rate, reached at the end of warmup.
        total_steps: the length of the run in optimizer steps (may be changed later, e.g. when a
            time budget shortens the run: :attr:`total_steps` is read on every call).
        warmup_steps: linear warmup from ``base_lr / warmup_steps`` to ``base_lr``.
        kind: ``cosine`` decays to ``base_lr * min_lr_ratio`` at ``total_steps``; ``step``
            multiplies by ``gamma`` at each milestone (fractions of ``total_steps``).
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, *,
                 kind: str = "cosine", min_lr_ratio: float = 0.05,
                 milestones: Sequence[float] = (0.7, 0.9), gamma: float = 0.1) -> None:
        self.base_lr = float(base_lr)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.kind = kind
        self.min_lr_ratio = float(min_lr_ratio)
        self.milestones = [float(m) for m in milestones]
        self.gamma = float(gamma)

    def factor(self, step: int) -> float:
        """The multiplier of ``base_lr`` at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            passed = sum(step >= m * self.total_steps for m in self.milestones)
            return self.gamma ** passed
        span = max(self.total_steps - self.warmup_steps, 1)
        t = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def lr(self, step: int) -> float:
        """The learning rate at step ``step``."""
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's ``lr`` (scaled by its ``lr_scale``, default 1)."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers; :meth:`load_state_dict` restores them."""
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind,
                "min_lr_ratio": self.min_lr_ratio, "milestones": list(self.milestones),
                "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["base_lr"], state["total_steps"], state["warmup_steps"],
                      kind=state["kind"], min_lr_ratio=state["min_lr_ratio"],
                      milestones=state["milestones"], gamma=state["gamma"])


__all__ = ["LRSchedule"]
