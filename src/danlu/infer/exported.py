"""The backend of an exported model (:func:`danlu.models.export.export_model`): an ``.onnx``
file run by onnxruntime, or a TorchScript file (``.torchscript`` / ``.ts``) run by torch.

The file computes every anchor's box and per-class score; :class:`ExportedBackend` then picks
the candidates exactly as the torch model does before its suppression
(:mod:`danlu.models.candidates`), so a :class:`~danlu.infer.predictor.Predictor` on the export
and one on the checkpoint return the same detections:

* FCOS / RetinaNet (``selection: per-level``): per feature level, the flattened
  ``[anchors x classes]`` scores above ``min(model's score_thresh, requested)``, the
  ``topk_candidates`` best of them (label = index mod C), levels concatenated in order;
* SSDLite (``per-class``): per class, the scores above that threshold, the
  ``topk_candidates`` best, all classes ordered by score as torchvision's NMS leaves them;

then the candidates under the requested threshold are dropped. Labels are dataset labels (the
exported score columns already are: SSD's background column is not exported).

Example:
    >>> import tempfile, pathlib, torch
    >>> from danlu.models import build_model
    >>> from danlu.models.checkpoint import save_checkpoint
    >>> from danlu.models.export import checkpoint_of, export_model
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> save_checkpoint(checkpoint_of(build_model("fcos-tiny", 2, img_size=64), ["a", "b"]),
    ...                 d / "m.pt")
    >>> b = ExportedBackend(export_model(d / "m.pt", d / "m.ts", "torchscript"), device="cpu")
    >>> b.transform.size, b.class_names, b.default_iou
    (64, ['a', 'b'], 0.6)
    >>> sorted(b.candidates(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), 0.05)[0].extra)
    ['loc_scores']
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from danlu.errors import ConfigError, ModelError
from danlu.models.export import TORCHSCRIPT_EXTRA, parse_metadata
from danlu.models.transform import InputTransform
from danlu.structures import Detections

#: the suffixes read as an exported model (by `danlu.infer.backend.open_backend` too)
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".torchscript", ".ts")

#: outputs name -> tensor, on the CPU
Runner = Callable[[Tensor], dict[str, Tensor]]


def _onnx_device(device: str | torch.device) -> tuple[torch.device, list[Any]]:
    """The device an ONNX model runs on and onnxruntime's providers for it: CUDA when asked
    for (or ``auto``) and onnxruntime has it, else the CPU."""
    import onnxruntime

    name = str(device).strip().lower()
    try:
        spec = torch.device("cuda" if name == "auto" else name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}", hint="use auto, cpu or cuda[:N]") from e
    if spec.type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            provider = ("CUDAExecutionProvider", {"device_id": spec.index or 0})
            return spec, [provider, "CPUExecutionProvider"]
        if name != "auto":
            warnings.warn("onnxruntime has no CUDAExecutionProvider: running on the CPU "
                          "(pip install onnxruntime-gpu)", RuntimeWarning, stacklevel=3)
    return torch.device("cpu"), ["CPUExecutionProvider"]


def _open_onnx(path: Path, device: str | torch.device
               ) -> tuple[Runner, dict[str, Any], torch.device]:
    try:
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"{path}: running an ONNX model needs onnxruntime",
                          hint="pip install onnxruntime (onnxruntime-gpu for CUDA)") from e
    where, providers = _onnx_device(device)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # idle pool threads sleep instead of spinning: between batches the Predictor letterboxes
    # and suppresses on the same cores (no slower measured on 2 cores, batch 1 and 16)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise ModelError(f"{path}: cannot load the ONNX model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})",
                         hint="re-export it with `danlu export CHECKPOINT`") from e
    if "CUDAExecutionProvider" not in session.get_providers():  # the CUDA libraries failed
        where = torch.device("cpu")
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map.get("danlu"), path)
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name

    def run(x: Tensor) -> dict[str, Tensor]:
        outs = session.run(names, {input_name: x.cpu().numpy()})
        return {n: torch.from_numpy(np.asarray(o)) for n, o in zip(names, outs, strict=True)}

    return run, meta, where


def _open_torchscript(path: Path, device: str | torch.device
                      ) -> tuple[Runner, dict[str, Any], torch.device]:
    from danlu.models.device import resolve_device

    where = resolve_device(device)
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location=where, _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError or others on bad files
        raise ModelError(f"{path}: cannot load the TorchScript model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})",
                         hint="re-export it with `danlu export CHECKPOINT --to "
                              "torchscript`") from e
    text = extra[TORCHSCRIPT_EXTRA]
    meta = parse_metadata(text.decode() if isinstance(text, bytes) else text or None, path)
    module.eval()
    names = list(meta["outputs"])

    def run(x: Tensor) -> dict[str, Tensor]:
        # the profiling executor re-optimizes the graph for each new batch size (seconds
        # per size on a CPU) and runs slower after it; the plain interpreter does not
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            outs = module(x.to(where))
        return {n: o.float().cpu() for n, o in zip(names, outs, strict=True)}

    return run, meta, where


def _best(scores: Tensor, threshold: float, k: int) -> tuple[Tensor, Tensor]:
    """The at most ``k`` values of ``scores`` above ``threshold`` and their indices, best
    first (the selection of :mod:`danlu.models.candidates`)."""
    index = torch.nonzero(scores > threshold).squeeze(1)
    values, order = scores[index].topk(min(k, index.numel()))
    return values, index[order]


def select_per_level(scores: Tensor, levels: Sequence[int], threshold: float, k: int
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """FCOS / RetinaNet: one image's ``scores [N, C]`` -> ``(anchor, label, score)`` of the
    candidates: per level, the flattened scores above ``threshold``, the ``k`` best; levels
    in order."""
    num_classes = scores.shape[1]
    anchors, labels, values = [], [], []
    start = 0
    for n in levels:
        v, flat = _best(scores[start:start + n].flatten(), threshold, k)
        anchors.append(start + torch.div(flat, num_classes, rounding_mode="floor"))
        labels.append(flat % num_classes)
        values.append(v)
        start += n
    return torch.cat(anchors), torch.cat(labels), torch.cat(values)


def select_per_class(scores: Tensor, threshold: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """SSD: one image's ``scores [N, C]`` -> ``(anchor, label, score)``: per class the scores
    above ``threshold``, the ``k`` best; then all of them by score, best first."""
    anchors, labels, values = [], [], []
    for c in range(scores.shape[1]):
        v, index = _best(scores[:, c], threshold, k)
        anchors.append(index)
        labels.append(torch.full_like(index, c))
        values.append(v)
    anchor, label, value = torch.cat(anchors), torch.cat(labels), torch.cat(values)
    order = torch.sort(value, descending=True, stable=True).indices
    return anchor[order], label[order], value[order]


class ExportedBackend:
    """A :class:`~danlu.infer.backend.Backend` for a file written by ``danlu export``.

    Args:
        path: the ``.onnx`` or ``.torchscript`` / ``.ts`` file.
        device: ``auto``, ``cpu``, ``cuda`` ... (ONNX: onnxruntime's CUDA provider when it
            has one, else the CPU).

    Raises:
        ModelError: a missing, corrupt or foreign file.
        ConfigError: an ``.onnx`` file without onnxruntime installed.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "auto") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: exported model not found")
        suffix = self.path.suffix.lower()
        if suffix in ONNX_SUFFIXES:
            self._run, meta, self.device = _open_onnx(self.path, device)
            self.format = "onnx"
        elif suffix in TORCHSCRIPT_SUFFIXES:
            self._run, meta, self.device = _open_torchscript(self.path, device)
            self.format = "torchscript"
        else:
            raise ModelError(f"{self.path}: not an exported model (suffix {suffix!r})",
                             hint="use .onnx, .torchscript or .ts")
        self.metadata = meta
        self.class_names = [str(n) for n in meta["class_names"]]
        self.transform = InputTransform(int(meta["img_size"]), str(meta["resize"]))
        self.default_iou = float(meta["nms_thresh"])
        self.default_max_detections = int(meta["detections_per_img"])
        self.family = str(meta["family"])
        self.name = str(meta.get("model") or self.path.name)

    def __repr__(self) -> str:
        return f"ExportedBackend({str(self.path)!r}, {self.format}, device={self.device})"

    def _check(self, images: Tensor) -> None:
        s = self.transform.size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ModelError(f"{self.path}: expects images [B, 3, {s}, {s}], got "
                             f"{list(images.shape)}",
                             hint="pass images through the backend's transform first")

    def candidates(self, images: Tensor, score_threshold: float) -> list[Detections]:
        """``uint8 [B, 3, S, S]`` transformed images -> each image's candidates in the
        ``S x S`` frame, scoring at least ``score_threshold`` (before suppression)."""
        self._check(images)
        out = self._run(images.to(torch.float32).div_(255.0))
        meta = self.metadata
        threshold = min(float(meta["score_thresh"]), float(score_threshold))
        k = int(meta["topk_candidates"])
        loc = out.get("loc_scores")
        dets = []
        for i in range(out["scores"].shape[0]):
            if meta["selection"] == "per-class":
                anchor, label, value = select_per_class(out["scores"][i], threshold, k)
            else:
                anchor, label, value = select_per_level(out["scores"][i], meta["level_sizes"],
                                                        threshold, k)
            extra = None if loc is None else {"loc_scores": loc[i][anchor]}
            det = Detections(out["boxes"][i][anchor], label, scores=value, extra=extra)
            dets.append(det.filter(min_score=score_threshold))
        return dets


__all__ = ["ExportedBackend", "select_per_level", "select_per_class", "ONNX_SUFFIXES",
           "TORCHSCRIPT_SUFFIXES"]
