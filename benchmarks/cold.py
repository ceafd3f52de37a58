"""Cold start: each command end to end in a fresh process, as a user runs it.

Every tool runs in a new Python process, from files on disk, the same way: ``danlu eval`` is
the real console script (``--json``); each peer is a small script doing load + evaluate +
accumulate + summarize with its own API. A small launcher process (~8 MB, the floor every
peak shares: Linux counts what a process held before ``exec``, so the benchmark's own memory
must not be the parent) forks each run and reports its wall time from fork to exit
(interpreter start and shutdown included), its peak resident memory (``ru_maxrss`` from
``wait4``) and its CPU time. Each tool first runs once untimed (numba's on-disk cache is built,
the files sit in the page cache), then the runs of all tools are interleaved and the medians
are reported.

Data, generated here into a temporary folder:

* COCO scale: 5,000 images of 640x480, ~35k ground-truth boxes (1% crowd, COCO ``area`` below
  the box area as a segment's would be), ~447k scored detections (jittered copies of the
  ground truth, relabelled or random ones), 80 categories with COCO's ids; boxes rounded to 3
  decimals and scores to 5, as Ultralytics writes its JSON. ``quick``: 500 images.
* a 300-image set drawn the same way, with ~10 detections per image (a detector's output
  after a score threshold: the small evaluation a user runs after each change);
* a 1,000-image VOC folder (XML with ``<size>``, tiny single-colour JPEGs of the declared size:
  ``danlu data stats`` never decodes pixels). ``quick``: 200 images.
* the first ``batched_nms`` call on 1,000 random float32 boxes (80 classes) in a fresh process
  that has just imported it; the peer is ``torchvision.ops.batched_nms`` the same way.

``agree``: COCO, the 12 summary numbers within 1e-12 (danlu evaluates the file's own float64
boxes, so they come out identical); stats, the image and box counts of the generated folder;
NMS, the same kept indices.

Run: ``danlu bench cold`` (``--quick`` for a smoke run, ``--json`` for one document).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks._cold_data import write_coco_files, write_voc_folder

TITLE = "cold start"
_AGREE_TOL = 1e-12


# --- the tools ----------
_PEER_SCRIPTS = {
    "hotcoco": """
import contextlib, io, json, sys
import hotcoco
with contextlib.redirect_stdout(io.StringIO()):
    gt = hotcoco.COCO(sys.argv[1])
    dt = gt.load_res(sys.argv[2])
    ev = hotcoco.COCOeval(gt, dt, "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(json.dumps([float(v) for v in ev.stats]))
""",
    "faster-coco-eval": """
import contextlib, io, json, sys
from faster_coco_eval import COCO, COCOeval_faster
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1])
    dt = gt.loadRes(sys.argv[2])
    ev = COCOeval_faster(gt, dt, "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(json.dumps([float(v) for v in ev.stats]))
""",
    "pycocotools": """
import contextlib, io, json, sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1])
    dt = gt.loadRes(sys.argv[2])
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(json.dumps([float(v) for v in ev.stats]))
""",
}

# The first batched NMS call in a fresh process: ``{"import_s", "first_s", "keep"}``.
_NMS_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
import numpy as np
rng = np.random.default_rng(0)
n = 1000
c = rng.uniform(0, 4096, (n, 2)); wh = rng.uniform(10, 200, (n, 2))
boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
scores = rng.random(n).astype(np.float32)
labels = rng.integers(0, 80, n)
{prepare}
t2 = time.perf_counter()
keep = {call}
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_s": t3 - t2, "keep": [int(k) for k in keep]}}))
"""
_NMS = {
    "danlu": ("from danlu.boxes import batched_nms", "",
              "batched_nms(boxes, scores, labels, 0.5)"),
    "torchvision": ("import torch, torchvision", "tb, ts, tl = (torch.from_numpy(boxes), "
                    "torch.from_numpy(scores), torch.from_numpy(labels))",
                    "torchvision.ops.batched_nms(tb, ts, tl, 0.5).tolist()"),
}


def _danlu_command() -> list[str]:
    """The console script beside this interpreter, else ``python -m danlu``."""
    script = Path(sys.executable).with_name("danlu")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "danlu"]


@dataclass
class _Run:
    seconds: float
    peak_mb: float
    stdout: str
    cpu_s: float = 0.0


# A small process that starts each tool and reports its wall time and peak memory. The
# benchmark itself holds hundreds of MB, and a process it forked would carry them in its
# peak (Linux counts the memory a process had before exec); this one holds ~8 MB, the floor
# every tool's peak shares.
_LAUNCHER = r"""
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.execve(job["cmd"][0], job["cmd"], job["env"])
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    os.close(out)
    os.close(err)
    print(json.dumps({"seconds": seconds, "maxrss_kb": usage.ru_maxrss,
                      "cpu": usage.ru_utime + usage.ru_stime,
                      "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Launcher:
    """Runs commands in fresh processes through :data:`_LAUNCHER` (see there).

    Use as a context manager; :meth:`run` returns the wall time from fork to exit, the peak
    resident memory (``ru_maxrss``) and the stdout of one run.
    """

    def __enter__(self) -> Launcher:
        self._tmp = tempfile.TemporaryDirectory(prefix="danlu-cold-run-")
        self._proc = subprocess.Popen([sys.executable, "-S", "-E", "-c", _LAUNCHER],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.stdin.close()  # type: ignore[union-attr]
        self._proc.wait()
        self._tmp.cleanup()

    def run(self, cmd: list[str]) -> _Run:
        """Run ``cmd`` once. Raises RuntimeError when it fails (with its stderr)."""
        out, err = Path(self._tmp.name) / "stdout", Path(self._tmp.name) / "stderr"
        env = os.environ | {"PYTHONWARNINGS": "ignore"}
        job = {"cmd": cmd, "env": env, "stdout": str(out), "stderr": str(err)}
        self._proc.stdin.write(orjson.dumps(job).decode() + "\n")  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]
        report = orjson.loads(self._proc.stdout.readline())  # type: ignore[union-attr]
        if report["code"] != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {report['code']}: "
                               f"{err.read_text()[-2000:]}")
        return _Run(report["seconds"], report["maxrss_kb"] / 1024.0, out.read_text(),
                    report["cpu"])


def _last_json(text: str) -> object:
    return orjson.loads(text.strip().splitlines()[-1])


# --- measuring ----------
@dataclass
class Measured:
    """The median of several fresh-process runs of one tool on one case."""

    tool: str
    seconds: float
    peak_mb: float
    result: object  # the tool's answer (COCO stats, stats document, kept indices)
    runs: int
    first_call_s: float | None = None  # NMS: the first call alone, inside the process
    cpu_s: float = 0.0  # user + system time


def measure_tools(launcher: Launcher, commands: dict[str, list[str]], repeat: dict[str, int],
                  parse: dict[str, object]) -> dict[str, Measured]:
    """Warm each tool once (untimed) when it runs more than once, then interleave
    ``repeat[tool]`` timed runs of each; the medians."""
    runs: dict[str, list[_Run]] = {t: [] for t in commands}
    for tool, cmd in commands.items():
        if repeat[tool] > 1:
            launcher.run(cmd)
    for k in range(max(repeat.values())):
        for tool, cmd in commands.items():
            if k < repeat[tool]:
                runs[tool].append(launcher.run(cmd))
    out = {}
    for tool, rs in runs.items():
        answer = parse[tool](rs[-1].stdout)  # type: ignore[operator]
        first = None
        if isinstance(answer, dict) and "first_s" in answer:
            first = statistics.median(parse[tool](r.stdout)["first_s"]  # type: ignore
                                      for r in rs)
        out[tool] = Measured(tool, statistics.median(r.seconds for r in rs),
                             statistics.median(r.peak_mb for r in rs), answer, len(rs), first,
                             statistics.median(r.cpu_s for r in rs))
    return out


@dataclass
class ColdRow:
    """One comparison: our command against one peer (or a fixed goal) in fresh processes.

    ``goal_time`` / ``goal_memory`` are ratio limits (ours / peer); ``goal_seconds`` is an
    absolute limit on ``ours_s``. ``met`` is None when the row has no goal.
    """

    case: str
    ours_s: float
    ours_mb: float
    peer: str
    peer_s: float | None
    peer_mb: float | None
    agree: bool
    goal: str = ""
    goal_time: float | None = None
    goal_memory: float | None = None
    goal_seconds: float | None = None
    note: str = ""
    ours_cpu_s: float | None = None  # user + system time of the process
    peer_cpu_s: float | None = None

    @property
    def time_ratio(self) -> float | None:
        """ours / peer wall time (below 1.0: ours is faster)."""
        return None if not self.peer_s else self.ours_s / self.peer_s

    @property
    def memory_ratio(self) -> float | None:
        """ours / peer peak resident memory."""
        return None if not self.peer_mb else self.ours_mb / self.peer_mb

    @property
    def met(self) -> bool | None:
        checks = []
        if self.goal_time is not None and self.time_ratio is not None:
            checks.append(self.time_ratio <= self.goal_time)
        if self.goal_memory is not None and self.memory_ratio is not None:
            checks.append(self.memory_ratio <= self.goal_memory)
        if self.goal_seconds is not None:
            checks.append(self.ours_s <= self.goal_seconds)
        return None if not checks else all(checks)


def _stats_agree(a: object, b: object) -> bool:
    x, y = np.asarray(a, float), np.asarray(b, float)
    return x.shape == y.shape == (12,) and bool(np.all(np.abs(x - y) <= _AGREE_TOL))


_Goals = dict[str, tuple[float | None, float | None]]  # peer -> (time, memory) ratio limits


def _coco_rows(launcher: Launcher, folder: Path, num_images: int, goals: _Goals,
               repeat: dict[str, int], dets_per_image: float = 89.4) -> list[ColdRow]:
    gt, res, n_gt, n_dt = write_coco_files(folder, num_images, dets_per_image=dets_per_image)
    commands = {"danlu": [*_danlu_command(), "eval", "--gt", str(gt), "--pred", str(res),
                          "--json"]}
    parse = {"danlu": lambda s: orjson.loads(s)["stats"]}
    for peer, script in _PEER_SCRIPTS.items():
        path = folder / f"{peer.replace('-', '_')}_eval.py"
        path.write_text(script)
        commands[peer] = [sys.executable, str(path), str(gt), str(res)]
        parse[peer] = _last_json
    got = measure_tools(launcher, commands, repeat, parse)
    ours = got.pop("danlu")
    case = f"danlu eval, {num_images:,} images, {n_gt:,} GT, {n_dt:,} dets"
    rows = []
    for peer, m in got.items():
        t, mem = goals.get(peer, (None, None))
        goal = " and ".join(f"{name} <= {v:g}x" for name, v in (("time", t), ("memory", mem))
                            if v is not None)
        rows.append(ColdRow(case, ours.seconds, ours.peak_mb, peer + _runs(m), m.seconds,
                            m.peak_mb, _stats_agree(ours.result, m.result), goal, t, mem,
                            note=f"AP {ours.result[0]:.4f} vs {m.result[0]:.4f}; CPU "
                                 f"{ours.cpu_s:.2f} s vs {m.cpu_s:.2f} s",
                            ours_cpu_s=ours.cpu_s, peer_cpu_s=m.cpu_s))
    return rows


def _runs(m: Measured) -> str:
    return f" ({m.runs} run{'s' if m.runs > 1 else ''})"


def _stats_row(launcher: Launcher, folder: Path, num_images: int, repeat: int) -> ColdRow:
    boxes = write_voc_folder(folder, num_images)
    cmd = [*_danlu_command(), "data", "stats", str(folder), "--json"]
    m = measure_tools(launcher, {"danlu": cmd}, {"danlu": repeat},
                      {"danlu": orjson.loads})["danlu"]
    doc = m.result
    agree = doc["num_images"] == num_images and doc["num_boxes"] == boxes  # type: ignore
    return ColdRow(f"danlu data stats, VOC folder, {num_images:,} images, {boxes:,} boxes",
                   m.seconds, m.peak_mb, "(absolute goal)", None, None, agree, "<= 1.0 s",
                   goal_seconds=1.0)


def _nms_row(launcher: Launcher, folder: Path, repeat: int) -> ColdRow:
    commands, parse = {}, {}
    for tool, (imports, prepare, call) in _NMS.items():
        path = folder / f"nms_{tool}.py"
        path.write_text(_NMS_SCRIPT.format(imports=imports, prepare=prepare, call=call))
        commands[tool] = [sys.executable, str(path)]
        parse[tool] = _last_json
    got = measure_tools(launcher, commands, {t: repeat for t in commands}, parse)
    ours, peer = got["danlu"], got["torchvision"]
    agree = ours.result["keep"] == peer.result["keep"]  # type: ignore[index]
    row = ColdRow("first batched_nms call, 1,000 boxes, 80 classes, fresh process",
                  ours.first_call_s or 0.0, ours.peak_mb, "torchvision.ops.batched_nms",
                  peer.first_call_s, peer.peak_mb, agree, "<= 20 ms", goal_seconds=0.020)
    row.note = (f"import {ours.result['import_s'] * 1e3:.0f} ms vs "  # type: ignore[index]
                f"{peer.result['import_s'] * 1e3:.0f} ms; process {ours.seconds:.2f} s vs "
                f"{peer.seconds:.2f} s")
    return row


def run(quick: bool = False) -> list[ColdRow]:
    """Every row (smaller sets and fewer runs with ``quick``)."""
    reps = 2 if quick else 5
    big = 500 if quick else 5000
    rows: list[ColdRow] = []
    with tempfile.TemporaryDirectory(prefix="danlu-bench-cold-") as tmp, Launcher() as run:
        root = Path(tmp)
        slow = 1 if not quick else reps
        rows += _coco_rows(run, root / "coco-big", big, {"hotcoco": (1.5, 1.5)},
                           {"danlu": reps, "hotcoco": reps, "faster-coco-eval": min(reps, 3),
                            "pycocotools": slow})
        rows += _coco_rows(run, root / "coco-300", 300, {"pycocotools": (1.0, None)},
                           {t: reps for t in ("danlu", "hotcoco", "faster-coco-eval",
                                              "pycocotools")}, dets_per_image=10)
        rows.append(_stats_row(run, root / "voc", 200 if quick else 1000, reps))
        rows.append(_nms_row(run, root, reps))
    return rows


# --- the table ----------
def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}"


def _verdict(row: ColdRow) -> str:
    return {None: "", True: "yes", False: "MISSED"}[row.met]


def report(rows: list[ColdRow], *, as_json: bool = False) -> None:
    """Print the table (or one JSON document with ``as_json``)."""
    from benchmarks._common import _console, machine

    if as_json:
        doc = {"benchmark": TITLE, "machine": machine(), "rows": [
            asdict(r) | {"time_ratio": r.time_ratio, "memory_ratio": r.memory_ratio,
                         "met": r.met} for r in rows]}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    table = Table(title=f"{TITLE} — {machine()}")
    for col in ("case", "ours", "ours peak", "peer", "peer time", "peer peak", "time ratio",
                "memory ratio", "agree", "goal", "met", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.case, _fmt_s(r.ours_s), f"{r.ours_mb:.0f} MB", r.peer, _fmt_s(r.peer_s),
                      "" if r.peer_mb is None else f"{r.peer_mb:.0f} MB",
                      _fmt_ratio(r.time_ratio), _fmt_ratio(r.memory_ratio),
                      "yes" if r.agree else "NO", r.goal, _verdict(r), r.note)
    _console().print(table)


#: ``danlu bench`` prints this module's rows with :func:`report`.
REPORT = report

if __name__ == "__main__":
    report(run(quick="--quick" in sys.argv))
