"""Checks of a deep-learning machine, each one run for real: what `danlu doctor` reports.

Example:
    >>> from danlu.doctor import run_checks, cpu_path_works
    >>> checks = run_checks(devices=False)
    >>> any(c.name == "python" for c in checks)
    True
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import import_module
from typing import Any

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass
class Check:
    """One line of the report.

    ``status`` is ``ok``, ``info`` (present or absent by choice), ``warn`` (works, but a
    feature is unavailable) or ``fail`` (broken); every warn/fail line carries a ``hint``.
    """

    name: str
    status: str
    value: str
    hint: str = ""
    data: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _python() -> Check:
    v = platform.python_version()
    if sys.version_info >= (3, 11):  # noqa: UP036 - the check is the point
        return Check("python", OK, f"{v} ({sys.executable})")
    return Check("python", FAIL, v, "danlu needs Python >= 3.11; create the venv with a newer one")


def _package(name: str, hint: str) -> Check:
    try:
        module = import_module(name)
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        return Check(name, FAIL, f"import failed: {type(e).__name__}: {e}", hint)
    return Check(name, OK, str(getattr(module, "__version__", "?")))


def _cuda_checks(torch: Any) -> list[Check]:
    out: list[Check] = []
    if not torch.cuda.is_available():
        built = torch.version.cuda
        value = f"not available (torch built with CUDA {built})" if built else "CPU-only torch"
        out.append(Check("cuda", INFO, value,
                         "no NVIDIA GPU visible: training runs on the CPU. With a GPU, check "
                         "`nvidia-smi` and that the driver supports this torch's CUDA version"))
        return out
    out.append(Check("cuda", OK, f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"))
    cudnn = torch.backends.cudnn
    if cudnn.is_available():
        out.append(Check("cudnn", OK, str(cudnn.version())))
    else:
        out.append(Check("cudnn", WARN, "not available",
                         "install a torch build that bundles cuDNN (the default pip wheels do)"))
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(Check(f"gpu {i}", OK,
                         f"{p.name}, {p.total_memory / 2**30:.1f} GiB, "
                         f"compute capability {p.major}.{p.minor}",
                         data={"name": p.name, "memory_bytes": p.total_memory,
                               "capability": f"{p.major}.{p.minor}"}))
    return out


def _driver() -> Check:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return Check("nvidia driver", INFO, "nvidia-smi not found",
                      "only needed with an NVIDIA GPU: install the NVIDIA driver")
    try:
        res = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError) as e:
        return Check("nvidia driver", FAIL, f"nvidia-smi failed: {e}",
                     "the driver is installed but not working: reboot or reinstall it")
    versions = sorted({v.strip() for v in res.stdout.splitlines() if v.strip()})
    return Check("nvidia driver", OK, ", ".join(versions) or "?")


def _mps(torch: Any) -> Check:
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("mps", OK, "available (Apple GPU)")
    return Check("mps", INFO, "not available", "only on Apple silicon with macOS >= 12.3")


def _threads(torch: Any) -> Check:
    n, cpus = torch.get_num_threads(), os.cpu_count() or 1
    value = f"torch uses {n} of {cpus} CPU threads"
    if n < cpus // 2:
        return Check("cpu threads", WARN, value,
                     "OMP_NUM_THREADS or torch.set_num_threads limits torch; unset it")
    return Check("cpu threads", OK, value, data={"torch_threads": n, "cpu_count": cpus})


def conv_smoke(device: str) -> float:
    """Seconds for a tiny conv forward + backward on ``device`` (after one warm-up)."""
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(device)
    x = torch.randn(2, 3, 64, 64, device=device, requires_grad=True)

    def step() -> None:
        loss = conv(x).square().mean()
        loss.backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            raise RuntimeError("gradient missing or not finite")

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _device_checks(torch: Any) -> list[Check]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    out = []
    for dev in devices:
        try:
            dt = conv_smoke(dev)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            hint = ("reinstall torch for this machine" if dev == "cpu"
                    else f"{dev} is visible but cannot run a kernel: check the driver / "
                    "that this torch build supports the GPU's compute capability")
            out.append(Check(f"conv {dev}", FAIL, f"{type(e).__name__}: {e}", hint))
        else:
            out.append(Check(f"conv {dev}", OK, f"forward + backward in {dt * 1e3:.2f} ms",
                             data={"seconds": dt}))
    return out


def _program(name: str, version_args: list[str], hint: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, WARN, "not on PATH", hint)
    try:
        res = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=30)
        first = (res.stdout or res.stderr).strip().splitlines()
        return Check(name, OK, f"{first[0] if first else '?'} ({path})")
    except (subprocess.SubprocessError, OSError) as e:
        return Check(name, FAIL, f"{path} does not run: {e}", hint)


def run_checks(*, devices: bool = True) -> list[Check]:
    """Run every check; ``devices=False`` skips the conv smoke tests."""
    checks = [_python()]
    torch_check = _package("torch", "pip install torch (see README for the build to choose)")
    checks.append(torch_check)
    checks.append(_package("torchvision", "pip install a torchvision matching your torch"))
    checks.append(_package("kornia", "pip install kornia"))
    if torch_check.status == OK:
        import torch

        checks += _cuda_checks(torch)
        checks.append(_driver())
        checks.append(_mps(torch))
        checks.append(_threads(torch))
        if devices:
            checks += _device_checks(torch)
    checks.append(_program("redis-server", ["--version"],
                           "apt-get install redis-server (multi-machine serving and its tests)"))
    checks.append(_program("chromium", ["--version"],
                           "apt-get install chromium (the web page tests)"))
    return checks


def cpu_path_works(checks: list[Check]) -> bool:
    """True when Python, torch, torchvision and the CPU conv smoke test all pass."""
    needed = {"python", "torch", "torchvision", "conv cpu"}
    by_name = {c.name: c for c in checks}
    return all(by_name.get(n) is not None and by_name[n].status == OK for n in needed)
