"""An exponential moving average of a model's weights (what is evaluated and saved).

The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so that early averages follow the
fast-changing weights; floating-point buffers are averaged too, integer buffers (e.g. BatchNorm's
``num_batches_tracked``) are copied.

Example:
    >>> import torch
    >>> m = torch.nn.Linear(2, 1)
    >>> ema = ModelEMA(m, decay=0.9, tau=1.0)
    >>> with torch.no_grad():
    ...     _ = m.weight.add_(1.0)
    >>> ema.update(m)
    >>> ema.updates
    1
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Keeps ``self.module``, a frozen copy of ``model`` whose weights are averaged.

    Args:
        model: the model being trained (unwrap DDP before passing it).
        decay: the final decay per update.
        tau: the ramp-up length in updates.
        updates: the number of updates already done (for resume).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 200.0,
                 updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = int(updates)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return self.decay * (1 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average."""
        d = self.current_decay()
        self.updates += 1
        ema_state = self.module.state_dict()
        model_state = model.state_dict()
        floats_ema, floats_new = [], []
        for name, value in ema_state.items():
            new = model_state[name].detach()
            if value.dtype.is_floating_point:
                floats_ema.append(value)
                floats_new.append(new.to(value.dtype))
            else:
                value.copy_(new)
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates,
                "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.tau = float(state["tau"])


__all__ = ["ModelEMA"]
