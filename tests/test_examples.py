"""The scripts in ``examples/`` compute what they claim, and run as written.

Each example is imported from its file path (``examples/`` is not a package) and its functions
are run small; one test per script then runs it as ``python examples/X.py`` and reads its
output. Tolerances are about ten times the errors measured at these sizes and seeds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module named ``examples_<name>`` (with examples/ on
    the path, as when the script runs: it imports ``_scenes`` from beside itself)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: threads only contend. Restore the setting for the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bp() -> ModuleType:
    return load_example("backprop_from_scratch")


@pytest.fixture(scope="module")
def jitter_ex() -> ModuleType:
    return load_example("kornia_colour_jitter")


@pytest.fixture(scope="module")
def homography_ex() -> ModuleType:
    return load_example("kornia_homography")


@pytest.fixture(scope="module")
def depth_ex() -> ModuleType:
    return load_example("kornia_depth")


# --- backpropagation by hand -------------------------------------------------------------------

def test_backprop_error_before_training(bp: ModuleType) -> None:
    assert bp.error(bp.forward(bp.WEIGHTS)) == pytest.approx(0.298371109, abs=5e-10)


def test_backprop_first_update(bp: ModuleType) -> None:
    w1 = bp.step(bp.WEIGHTS, bp.backward(bp.WEIGHTS))
    assert bp.error(bp.forward(w1)) == pytest.approx(0.291027774, abs=1e-9)
    # The updated weights as printed in the classic walk-through (to its 8-9 digits).
    published = (0.149780716, 0.19956143, 0.24975114, 0.29950229,
                 0.35891648, 0.408666186, 0.511301270, 0.561370121)
    assert w1 == pytest.approx(published, abs=5e-9)


def test_backprop_often_quoted_figure_is_the_stale_weight_order(bp: ModuleType) -> None:
    stale = bp.error(bp.forward(bp.stale_order_step(bp.WEIGHTS)))
    assert stale == pytest.approx(0.291027924, abs=1e-9)
    correct = bp.error(bp.forward(bp.step(bp.WEIGHTS, bp.backward(bp.WEIGHTS))))
    assert abs(stale - correct) > 1e-7


def test_backprop_after_10000_updates(bp: ModuleType) -> None:
    w = bp.train(bp.WEIGHTS, steps=10_000)
    act = bp.forward(w)
    assert bp.error(act) == pytest.approx(3.5102e-05, rel=1e-5)
    assert act.o1 == pytest.approx(0.015914, abs=5e-7)
    assert act.o2 == pytest.approx(0.984064, abs=5e-7)
    # Full float64 values, pinned: any change to the update would move them.
    assert bp.error(act) == pytest.approx(3.510187782978859e-05, rel=1e-9)
    assert (act.o1, act.o2) == pytest.approx((0.01591362044355068, 0.9840642735146238), rel=1e-9)


def test_backprop_gradients_match_autograd_along_training(bp: ModuleType) -> None:
    # Equal gradients at points along the trajectory mean every hand-written update is the
    # autograd update, without paying for 10,000 autograd steps.
    w = bp.WEIGHTS
    for _ in range(6):
        assert bp.max_abs_diff(bp.backward(w), bp.autograd_gradients(w)) < 1e-12
        w = bp.train(w, steps=2_000)
    odd = (-1.3, 0.7, 2.1, -0.4, 0.9, -2.2, 1.6, 0.05)
    assert bp.max_abs_diff(bp.backward(odd), bp.autograd_gradients(odd)) < 1e-12


def test_backprop_step_matches_torch_sgd(bp: ModuleType) -> None:
    w1 = bp.step(bp.WEIGHTS, bp.backward(bp.WEIGHTS))
    assert bp.max_abs_diff(w1, bp.autograd_step(bp.WEIGHTS)) < 1e-12


# --- Kornia: colour jitter ---------------------------------------------------------------------

def test_colour_jitter_identity_is_identity(jitter_ex: ModuleType) -> None:
    image = jitter_ex.load_image(16)
    assert image.shape == (1, 3, 16, 16)
    assert torch.allclose(jitter_ex.jitter(image, *jitter_ex.IDENTITY), image, atol=1e-6)
    scenes = load_example("_scenes")
    for grey, channels in ((False, 3), (True, 1)):
        assert scenes.load_image(16, grey=grey).shape == (1, channels, 16, 16)
        synthetic = scenes.synthetic_scene(16, channels)
        assert synthetic.shape == (1, channels, 16, 16)
        assert 0 <= synthetic.min() <= synthetic.max() <= 1


def test_colour_jitter_recovers_parameters(jitter_ex: ModuleType) -> None:
    image = jitter_ex.load_image(32)
    truth = jitter_ex.TRUE_JITTER
    result = jitter_ex.fit(image, jitter_ex.jitter(image, *truth), steps=200)
    # Measured at this size: loss 8.3e-03 -> 1.4e-11, parameters within 3e-5.
    assert result.loss_after < 1e-6 * result.loss_before
    assert result.jitter == pytest.approx(truth, abs=1e-3)


# --- Kornia: homography ------------------------------------------------------------------------

SMALL_STAGES = ((4.0, 60), (2.0, 60), (1.0, 60), (0.0, 60))


def test_homography_parametrisation(homography_ex: ModuleType) -> None:
    from kornia.geometry.linalg import transform_points

    offsets = torch.tensor([[[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25], [2.0, 2.0]]])
    h = homography_ex.homography_from_offsets(offsets, 32)
    corners = homography_ex.corners(32)
    assert torch.allclose(transform_points(h, corners), corners + offsets, atol=1e-4)
    identity = homography_ex.homography_from_offsets(torch.zeros(1, 4, 2), 32)
    assert torch.allclose(identity, torch.eye(3)[None], atol=1e-6)


def test_homography_recovered(homography_ex: ModuleType) -> None:
    problem = homography_ex.make_problem(32)
    start_error = homography_ex.corner_error(torch.zeros(1, 4, 2), problem.true_offsets)
    assert start_error > 2.0  # the problem is not solved by the starting point
    result = homography_ex.fit(problem.image, problem.target, SMALL_STAGES)
    # Measured at this size: loss 7.5e-02 -> 4.7e-12, corner error 6.6e-05 px.
    assert result.loss_after < 1e-6 * result.loss_before
    assert homography_ex.corner_error(result.offsets, problem.true_offsets) < 1e-3
    h = homography_ex.homography_from_offsets(result.offsets, 32)
    h_true = homography_ex.homography_from_offsets(problem.true_offsets, 32)
    assert torch.allclose(h, h_true, atol=1e-3)


# --- Kornia: depth from two views --------------------------------------------------------------

def test_depth_recovered(depth_ex: ModuleType) -> None:
    problem = depth_ex.make_problem(32, grid=4)
    flat = torch.full_like(problem.true_inverse_depth, 0.75)
    assert (flat - problem.true_inverse_depth).abs().max() > 0.1
    result = depth_ex.fit(problem, ((2.0, 60), (1.0, 60), (0.0, 60)))
    # Measured at this size: loss 1.9e-03 -> 5.6e-12, control points within 1.7e-05.
    assert result.loss_after < 1e-6 * result.loss_before
    error = (result.inverse_depth - problem.true_inverse_depth).abs().max().item()
    assert error < 5e-4
    relative = depth_ex.mean_relative_depth_error(result.inverse_depth,
                                                  problem.true_inverse_depth, 32)
    assert relative < 1e-4


# --- the scripts as written --------------------------------------------------------------------

def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


def _check_backprop(out: str) -> None:
    assert "error before training: 0.298371109" in out
    assert "error after 1 update: 0.291027774" in out
    assert "gives 0.291027924" in out
    assert "error after 10000 updates: 3.5102e-05" in out
    assert "o1=0.015914 o2=0.984064" in out
    assert _number(r"autograd\| gradient: (\S+)", out) < 1e-12
    assert _number(r"SGD\| weights after 1 update: (\S+)", out) < 1e-12


def _check_losses(out: str) -> None:
    before = _number(r"loss before: (\S+)", out)
    after = _number(r"loss after \d+ steps: (\S+)", out)
    assert after < 1e-6 * before


def _check_jitter(out: str) -> None:
    _check_losses(out)
    for name, true in (("brightness", 0.1), ("contrast", 0.8), ("saturation", 1.5)):
        assert _number(rf"{name}: recovered (\S+),", out) == pytest.approx(true, abs=1e-3)
        assert _number(rf"{name}: recovered \S+, true (\S+)", out) == true


def _check_homography(out: str) -> None:
    _check_losses(out)
    assert _number(r"max corner error: (\S+) px", out) < 1e-3
    assert "true H:" in out and "recovered H:" in out


def _check_depth(out: str) -> None:
    _check_losses(out)
    assert _number(r"at the control points: (\S+)", out) < 5e-4
    assert _number(r"mean relative depth error: (\S+)", out) < 1e-4


@pytest.mark.parametrize(("script", "check"), [
    ("backprop_from_scratch.py", _check_backprop),
    ("kornia_colour_jitter.py", _check_jitter),
    ("kornia_homography.py", _check_homography),
    ("kornia_depth.py", _check_depth),
])
def test_script_runs_as_written(script: str, check: Callable[[str], None]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, f"examples/{script}"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    check(proc.stdout)
