"""Backpropagation by hand on the classic 2-2-2 sigmoid network, checked against torch autograd.

The network has two inputs ``i1, i2``, two hidden sigmoid units ``h1, h2`` and two sigmoid
outputs ``o1, o2``. Weights are numbered as in the well-known worked example:

* ``w1, w2`` feed ``h1`` from ``i1, i2``; ``w3, w4`` feed ``h2`` from ``i1, i2``;
* ``w5, w6`` feed ``o1`` from ``h1, h2``; ``w7, w8`` feed ``o2`` from ``h1, h2``;
* one bias ``b1`` is shared by both hidden units and ``b2`` by both outputs. The biases are
  held fixed (not trained), as in the original walk-through.

The error is ``E = sum_k 0.5 * (t_k - o_k) ** 2`` and training is plain gradient descent,
``w <- w - lr * dE/dw`` with ``lr = 0.5``, on the single sample ``(0.05, 0.10) -> (0.01, 0.99)``.
Everything is computed in float64 (plain Python floats) with no autograd; the last part redoes
the gradient and one update with torch autograd to show that the hand-written chain rule agrees.

Run it with::

    python examples/backprop_from_scratch.py

It prints the error before training (0.298371109), after the first update (0.291027774; the
often-quoted 0.291027924 is what backpropagating through the already-updated output weights
gives, which :func:`stale_order_step` reproduces) and after 10,000 updates (3.5102e-05,
outputs 0.015914 and 0.984064), then the largest difference between the hand-written and the
autograd gradients (a few 1e-18, float64 round-off) and weights after one SGD update.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

INPUTS: tuple[float, float] = (0.05, 0.10)
TARGETS: tuple[float, float] = (0.01, 0.99)
#: w1..w8, in the numbering of the module docstring.
WEIGHTS: tuple[float, ...] = (0.15, 0.20, 0.25, 0.30, 0.40, 0.45, 0.50, 0.55)
B1 = 0.35  # hidden bias
B2 = 0.60  # output bias
LEARNING_RATE = 0.5

Weights = tuple[float, float, float, float, float, float, float, float]


class Activations(NamedTuple):
    """The outputs of every unit for one forward pass (after the sigmoid)."""

    h1: float
    h2: float
    o1: float
    o2: float


def sigmoid(x: float) -> float:
    """The logistic function ``1 / (1 + exp(-x))``."""
    return 1.0 / (1.0 + math.exp(-x))


def forward(
    w: Weights,
    inputs: tuple[float, float] = INPUTS,
    b1: float = B1,
    b2: float = B2,
) -> Activations:
    """Run the network forward and return the activations of the hidden and output units."""
    w1, w2, w3, w4, w5, w6, w7, w8 = w
    i1, i2 = inputs
    h1 = sigmoid(w1 * i1 + w2 * i2 + b1)
    h2 = sigmoid(w3 * i1 + w4 * i2 + b1)
    o1 = sigmoid(w5 * h1 + w6 * h2 + b2)
    o2 = sigmoid(w7 * h1 + w8 * h2 + b2)
    return Activations(h1, h2, o1, o2)


def error(act: Activations, targets: tuple[float, float] = TARGETS) -> float:
    """The squared error ``0.5 * (t1 - o1)**2 + 0.5 * (t2 - o2)**2``."""
    t1, t2 = targets
    return 0.5 * (t1 - act.o1) ** 2 + 0.5 * (t2 - act.o2) ** 2


def backward(
    w: Weights,
    inputs: tuple[float, float] = INPUTS,
    targets: tuple[float, float] = TARGETS,
    b1: float = B1,
    b2: float = B2,
) -> Weights:
    """Return ``(dE/dw1, ..., dE/dw8)`` by the chain rule, written out by hand.

    ``delta_ok = dE/d(net input of o_k) = (o_k - t_k) * o_k * (1 - o_k)``, using
    ``sigmoid'(z) = s * (1 - s)``. A hidden unit's delta sums the output deltas through the
    weights that leave it; all deltas use the weights *before* the update.
    """
    w1, w2, w3, w4, w5, w6, w7, w8 = w
    i1, i2 = inputs
    t1, t2 = targets
    h1, h2, o1, o2 = forward(w, inputs, b1, b2)
    delta_o1 = (o1 - t1) * o1 * (1.0 - o1)
    delta_o2 = (o2 - t2) * o2 * (1.0 - o2)
    # h1 reaches the error through w5 (to o1) and w7 (to o2); h2 through w6 and w8.
    delta_h1 = (delta_o1 * w5 + delta_o2 * w7) * h1 * (1.0 - h1)
    delta_h2 = (delta_o1 * w6 + delta_o2 * w8) * h2 * (1.0 - h2)
    return (
        delta_h1 * i1, delta_h1 * i2,
        delta_h2 * i1, delta_h2 * i2,
        delta_o1 * h1, delta_o1 * h2,
        delta_o2 * h1, delta_o2 * h2,
    )


def step(w: Weights, grads: Weights, lr: float = LEARNING_RATE) -> Weights:
    """One gradient-descent update ``w - lr * grads`` (all eight weights at once)."""
    return tuple(wi - lr * gi for wi, gi in zip(w, grads, strict=True))  # type: ignore[return-value]


def stale_order_step(w: Weights, lr: float = LEARNING_RATE) -> Weights:
    """A common slip, kept to explain a figure: update w5..w8 *first*, then backpropagate
    the hidden deltas through the already-updated output weights.

    Its error after one update is the often-quoted 0.291027924; the correct update
    (:func:`backward` then :func:`step`) gives 0.291027774.
    """
    h1, h2, o1, o2 = forward(w)
    grads = backward(w)
    new_out = step(w[4:], grads[4:], lr)  # type: ignore[arg-type]
    w5, w6, w7, w8 = new_out
    delta_o1 = (o1 - TARGETS[0]) * o1 * (1.0 - o1)
    delta_o2 = (o2 - TARGETS[1]) * o2 * (1.0 - o2)
    delta_h1 = (delta_o1 * w5 + delta_o2 * w7) * h1 * (1.0 - h1)
    delta_h2 = (delta_o1 * w6 + delta_o2 * w8) * h2 * (1.0 - h2)
    i1, i2 = INPUTS
    hidden_grads = (delta_h1 * i1, delta_h1 * i2, delta_h2 * i1, delta_h2 * i2)
    return step(w[:4], hidden_grads, lr) + new_out  # type: ignore[arg-type, return-value]


def train(w: Weights = WEIGHTS, steps: int = 10_000, lr: float = LEARNING_RATE) -> Weights:
    """Apply ``steps`` full-batch gradient-descent updates from ``w``; return the final weights."""
    for _ in range(steps):
        w = step(w, backward(w), lr)
    return w


def autograd_gradients(w: Weights = WEIGHTS) -> Weights:
    """The same gradients as :func:`backward`, but from torch autograd in float64."""
    import torch  # only this check needs torch

    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    error_t = _torch_error(wt)
    error_t.backward()
    return tuple(wt.grad.tolist())  # type: ignore[return-value, union-attr]


def autograd_step(w: Weights = WEIGHTS, lr: float = LEARNING_RATE) -> Weights:
    """One update with ``torch.optim.SGD`` on the same network; return the new weights."""
    import torch

    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([wt], lr=lr)
    opt.zero_grad()
    _torch_error(wt).backward()
    opt.step()
    return tuple(wt.detach().tolist())  # type: ignore[return-value]


def _torch_error(wt: torch.Tensor) -> torch.Tensor:
    """The network's error as a torch expression of the 8-element weight tensor ``wt``."""
    import torch

    x = torch.tensor(INPUTS, dtype=torch.float64)
    t = torch.tensor(TARGETS, dtype=torch.float64)
    hidden_w = wt[:4].reshape(2, 2)  # rows: h1 <- (w1, w2), h2 <- (w3, w4)
    output_w = wt[4:].reshape(2, 2)  # rows: o1 <- (w5, w6), o2 <- (w7, w8)
    h = torch.sigmoid(hidden_w @ x + B1)
    o = torch.sigmoid(output_w @ h + B2)
    return (0.5 * (t - o) ** 2).sum()


def max_abs_diff(a: Weights, b: Weights) -> float:
    """The largest ``|a_k - b_k|``."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    """Train by hand, print the errors, then compare with torch autograd."""
    w0 = WEIGHTS
    print(f"error before training: {error(forward(w0)):.9f}")
    w1 = step(w0, backward(w0))
    print(f"error after 1 update: {error(forward(w1)):.9f}")
    # The figure often quoted for this step, 0.291027924, is not a rounding effect: the walk-
    # through's own printed weights give 0.291027774 too. It is reproduced exactly by
    # backpropagating the hidden deltas through the already-updated w5..w8.
    stale = error(forward(stale_order_step(w0)))
    print("  (exact float64; the often-quoted 0.291027924 is not a rounding effect: using the")
    print(f"   already-updated w5..w8 in the hidden deltas gives {stale:.9f})")
    print("weights after 1 update: " + ", ".join(f"{x:.6f}" for x in w1))
    w_end = train(w0, steps=10_000)
    act = forward(w_end)
    print(f"error after 10000 updates: {error(act):.4e}")
    print(f"outputs after 10000 updates: o1={act.o1:.6f} o2={act.o2:.6f} (targets 0.01, 0.99)")

    grad_diff = max_abs_diff(backward(w0), autograd_gradients(w0))
    print(f"max |hand-written - autograd| gradient: {grad_diff:.3e}")
    step_diff = max_abs_diff(w1, autograd_step(w0))
    print(f"max |hand-written - torch.optim.SGD| weights after 1 update: {step_diff:.3e}")


if __name__ == "__main__":
    main()
