"""Export a checkpoint's dense detector to ONNX or TorchScript: the network and the box
decoding in the file, the letterbox and the suppression left to danlu.

:func:`export_model` wraps the detector in a module (:class:`DenseExport`) whose input is a
``float32 [B, 3, S, S]`` batch in ``[0, 1]``: images already letterboxed (or stretched) by the
checkpoint's :class:`~danlu.models.transform.InputTransform`, ``S`` its ``img_size``, the batch
axis dynamic. The module normalizes exactly as torchvision's detector does at ``S x S`` (mean /
std; zero padding of the normalized image to the backbone's size multiple; no resize), runs the
backbone, FPN and head, and decodes every anchor against anchors computed once at export time
(they depend only on ``S``) and stored as constants. Its outputs, per image:

* ``boxes [B, N, 4]``: every anchor's decoded box, ``xyxy`` in the ``S x S`` square, clipped;
* ``scores [B, N, C]``: the per-class score torchvision thresholds (FCOS
  ``sqrt(sigmoid(cls) * sigmoid(centerness))``, RetinaNet ``sigmoid(cls)``, SSDLite the softmax
  with the background column dropped), one column per **dataset** label;
* ``loc_scores [B, N]`` (FCOS only): ``sigmoid(centerness)``.

The score threshold, the per-level top-k and the suppression stay in danlu
(:class:`danlu.infer.exported.ExportedBackend`), which reads the file's metadata
(:func:`export_metadata`): one JSON document under the ONNX ``metadata_props`` key ``danlu``
and the TorchScript extra file ``danlu.json``.

Faster R-CNN does not export: its second stage crops a data-dependent number of proposals per
image (RPN top-k, NMS, RoIAlign), which a fixed graph of per-anchor outputs cannot express.

Example:
    >>> import tempfile, pathlib
    >>> from danlu.models import build_model
    >>> from danlu.models.checkpoint import save_checkpoint
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> det = build_model("fcos-tiny", num_classes=2, img_size=64)
    >>> save_checkpoint(checkpoint_of(det, ["cat", "dog"]), d / "m.pt")
    >>> path = export_model(d / "m.pt", d / "m.torchscript", format="torchscript")
    >>> meta = read_metadata(path)
    >>> meta["family"], meta["img_size"], meta["outputs"], meta["level_sizes"]
    ('fcos', 64, ['boxes', 'scores', 'loc_scores'], [64, 16, 4, 1, 1])
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import clip_boxes_to_image

from danlu.errors import ConfigError, ModelError

#: the ``format`` / ``version`` of the metadata document
FORMAT = "danlu-export"
VERSION = 1
#: the export formats and the suffix each gets by default
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
#: the families :func:`export_model` exports
EXPORTABLE_FAMILIES = ("fcos", "retinanet", "ssdlite")
#: the ONNX metadata key and the TorchScript extra file holding the metadata JSON
METADATA_KEY = "danlu"
TORCHSCRIPT_EXTRA = "danlu.json"
INPUT_NAME = "images"
#: the lowest opset the dynamo ONNX exporter writes; the range export_model accepts
_DYNAMO_MIN_OPSET = 18
_MIN_OPSET, _MAX_OPSET = 11, 23


def _family_of(model: nn.Module) -> str:
    """The danlu family of a torchvision detector, or a ModelError for one that cannot export."""
    if isinstance(model, FCOS):
        return "fcos"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, SSD):
        return "ssdlite"
    exportable = ", ".join(EXPORTABLE_FAMILIES)
    if isinstance(model, FasterRCNN):
        raise ModelError(
            "Faster R-CNN cannot be exported: its second stage crops a data-dependent number "
            "of region proposals per image (RPN top-k, NMS, RoIAlign), which a fixed graph of "
            "per-anchor boxes and scores cannot express",
            hint=f"the dense families export: {exportable}")
    raise ModelError(f"cannot export a {type(model).__name__}",
                     hint=f"the dense families export: {exportable}")


def _padded(size: int, divisible: int) -> int:
    """``size`` rounded up to a multiple of ``divisible`` (torchvision's ``batch_images``)."""
    return -(-size // divisible) * divisible


def _anchors_at(model: nn.Module, size: int) -> tuple[Tensor, list[int]]:
    """The anchors ``[N, 4]`` (pixels of the padded square) of ``model`` for ``size x size``
    images, computed as its own forward does, and the number of anchors on each level."""
    with torch.inference_mode():
        images, _ = model.transform([torch.zeros(3, size, size)])
        features = model.backbone(images.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        features = list(features.values())
        anchors = model.anchor_generator(images, features)[0]
    per_location = model.anchor_generator.num_anchors_per_location()
    levels = [int(f.shape[-2] * f.shape[-1]) * int(a)
              for f, a in zip(features, per_location, strict=True)]
    if sum(levels) != anchors.shape[0]:
        raise ModelError(f"{anchors.shape[0]} anchors do not split into levels of {levels}")
    return anchors.clone(), levels


class DenseExport(nn.Module):
    """A dense torchvision detector as ``images [B, 3, S, S] -> boxes, scores(, loc_scores)``
    (see the module docstring); the model's backbone and head are shared, not copied.

    Args:
        model: an FCOS, RetinaNet or SSD model (eval mode).
        size: ``S``, the square input side it was trained at.
    """

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.family = _family_of(model)
        t = model.transform
        self.size = int(size)
        divisible = int(getattr(t, "size_divisible", 32))
        self.pad = _padded(self.size, divisible) - self.size
        self.backbone = model.backbone
        self.head = model.head
        self.box_coder = model.box_coder
        anchors, self.level_sizes = _anchors_at(model, self.size)
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(t.image_std).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def output_names(self) -> list[str]:
        """The names of :meth:`forward`'s outputs, in order."""
        return ["boxes", "scores"] + (["loc_scores"] if self.family == "fcos" else [])

    def _decode(self, codes: Tensor) -> Tensor:
        """Regression codes ``[B, N, 4]`` -> boxes ``[B, N, 4]`` clipped to the square."""
        if self.family == "fcos":
            boxes = self.box_coder.decode(codes, self.anchors)
        else:  # decode_single takes [K, 4]: every image's anchors side by side
            flat = self.anchors.expand(codes.shape[0], -1, -1).reshape(-1, 4)
            boxes = self.box_coder.decode_single(codes.reshape(-1, 4), flat)
            boxes = boxes.reshape(codes.shape[0], -1, 4)
        return clip_boxes_to_image(boxes, (self.size, self.size))

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """``float32 [B, 3, S, S]`` in ``[0, 1]`` -> ``(boxes, scores)`` or, for FCOS,
        ``(boxes, scores, loc_scores)``."""
        x = (images - self.mean) / self.std
        if self.pad:  # torchvision pads the normalized batch with zeros, right and bottom
            x = F.pad(x, (0, self.pad, 0, self.pad))
        features = self.backbone(x)
        if isinstance(features, Tensor):
            features = {"0": features}
        out = self.head(list(features.values()))
        boxes = self._decode(out["bbox_regression"])
        logits = out["cls_logits"]
        if self.family == "fcos":
            loc = torch.sigmoid(out["bbox_ctrness"])
            return boxes, torch.sqrt(torch.sigmoid(logits) * loc), loc.squeeze(-1)
        if self.family == "ssdlite":
            return boxes, F.softmax(logits, dim=-1)[..., 1:]
        return boxes, torch.sigmoid(logits)


def checkpoint_of(detector: nn.Module, class_names: Sequence[str], *,
                  resize: str = "letterbox") -> dict[str, Any]:
    """A weights-only danlu checkpoint dict of a built :class:`~danlu.models.Detector` (what
    :func:`~danlu.models.checkpoint.save_checkpoint` writes), for exporting a live model."""
    from danlu.models.checkpoint import FORMAT as CKPT_FORMAT
    from danlu.models.checkpoint import VERSION as CKPT_VERSION

    config = dict(detector.config)
    return {"format": CKPT_FORMAT, "version": CKPT_VERSION, "model_config": config,
            "class_names": list(class_names), "img_size": int(config["img_size"]),
            "resize": resize, "model": detector.state_dict()}


def export_metadata(ckpt: dict[str, Any], wrapper: DenseExport, model: nn.Module,
                    fmt: str, opset: int | None) -> dict[str, Any]:
    """The metadata document written into an export (see docs/export.md)."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed distribution's version: no import of the package root (and train)
        __version__ = version("danlu")
    except PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
        __version__ = "unknown"

    config = dict(ckpt["model_config"])
    return {
        "format": FORMAT, "version": VERSION, "danlu_version": __version__,
        "export_format": fmt, "opset": opset if fmt == "onnx" else None,
        "model": config.get("name"), "family": wrapper.family,
        "class_names": list(ckpt["class_names"]), "num_classes": len(ckpt["class_names"]),
        "img_size": wrapper.size, "resize": str(ckpt.get("resize", "letterbox")),
        "label_offset": 1 if wrapper.family == "ssdlite" else 0,
        "level_sizes": list(wrapper.level_sizes),
        "selection": "per-class" if wrapper.family == "ssdlite" else "per-level",
        "topk_candidates": int(model.topk_candidates),
        "score_thresh": float(model.score_thresh), "nms_thresh": float(model.nms_thresh),
        "detections_per_img": int(model.detections_per_img),
        "inputs": [INPUT_NAME], "outputs": wrapper.output_names,
    }


@contextlib.contextmanager
def _atomic_target(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write into; renamed over ``out`` on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    from danlu.data._atomic import temp_sibling

    fd, tmp = temp_sibling(out)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _example(wrapper: DenseExport, batch: int = 2) -> Tensor:
    return torch.rand(batch, 3, wrapper.size, wrapper.size,
                      generator=torch.Generator().manual_seed(0))


def _export_onnx(wrapper: DenseExport, meta: dict[str, Any], target: Path, opset: int) -> None:
    """``torch.onnx.export`` with a dynamic batch axis, the metadata added, checked with
    ``onnx.checker``. The dynamo exporter writes opset 18 and later (its down-conversion to
    17 fails on ``Pad``); an older opset goes through the TorchScript-based exporter."""
    try:
        import onnx
    except ImportError as e:
        raise ConfigError("ONNX export needs the onnx package (and onnxscript for opset >= 18)",
                          hint="pip install onnx onnxscript") from e
    names = {"input_names": [INPUT_NAME], "output_names": meta["outputs"]}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if opset >= _DYNAMO_MIN_OPSET:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.onnx.export(
                wrapper, (_example(wrapper),), dynamo=True, opset_version=opset,
                dynamic_shapes={INPUT_NAME: {0: batch}}, external_data=False, **names)
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                wrapper, (_example(wrapper),), buffer, dynamo=False, opset_version=opset,
                dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *meta["outputs"]]},
                **names)
            proto = onnx.load_model_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(target))


def _export_torchscript(wrapper: DenseExport, meta: dict[str, Any], target: Path) -> None:
    """``torch.jit.trace`` (the batch axis stays symbolic), saved with the metadata."""
    with warnings.catch_warnings():  # tracer notes, and torch.jit's deprecation notice
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, _example(wrapper), check_trace=False)
        torch.jit.save(traced, str(target), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta)})


def default_export_path(checkpoint: str | Path, fmt: str = "onnx") -> Path:
    """Where :func:`export_model` writes by default: beside the checkpoint (a run folder:
    its ``best.pt``), with the format's suffix."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", hint="use onnx or torchscript")
    path = Path(checkpoint)
    if path.is_dir():
        path = path / ("best.pt" if (path / "best.pt").is_file() else "last.pt")
    return path.with_suffix(FORMATS[fmt])


def export_model(checkpoint: str | Path, out: str | Path, format: str = "onnx", *,
                 opset: int = 17) -> Path:
    """Export a checkpoint's dense detector (FCOS, RetinaNet, SSDLite) to ONNX or TorchScript.

    Args:
        checkpoint: a danlu checkpoint (``.pt``) or a run folder (its ``best.pt``).
        out: the file to write (atomically: a temporary sibling, then renamed).
        format: ``onnx`` (``torch.onnx.export``) or ``torchscript`` (``torch.jit.trace``).
        opset: the ONNX opset, 11 to 23: from 18 torch's dynamo exporter writes it (with
            ``onnxscript``), below 18 its TorchScript-based exporter (the dynamo exporter's
            conversion down to 17 fails on ``Pad``).

    Returns:
        ``out`` as a Path. The file takes ``images float32 [B, 3, S, S]`` in ``[0, 1]`` and
        returns ``boxes``, ``scores`` (and FCOS ``loc_scores``), see the module docstring;
        its metadata is :func:`read_metadata`.

    Raises:
        ModelError: a family that cannot export (Faster R-CNN), an unreadable checkpoint, or
            an exporter failure.
        ConfigError: an unknown format; ONNX without the onnx packages.
    """
    from danlu.models.checkpoint import build_model_from_checkpoint, load_checkpoint

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}", hint="use onnx or torchscript")
    if not isinstance(opset, int) or not _MIN_OPSET <= opset <= _MAX_OPSET:
        raise ConfigError(f"opset must be an integer from {_MIN_OPSET} to {_MAX_OPSET}, "
                          f"got {opset!r}")
    ckpt = load_checkpoint(checkpoint)
    detector = build_model_from_checkpoint(ckpt).eval()
    model = getattr(detector, "model", detector)
    wrapper = DenseExport(model, int(ckpt["img_size"])).eval()
    _check_sizes(model, wrapper.size)
    meta = export_metadata(ckpt, wrapper, model, format, opset)
    out = Path(out)
    with _atomic_target(out) as target:
        try:
            if format == "onnx":
                _export_onnx(wrapper, meta, target, opset)
            else:
                _export_torchscript(wrapper, meta, target)
        except (ModelError, ConfigError):
            raise
        except Exception as e:  # the exporters fail in many types
            raise ModelError(f"{checkpoint}: {format} export of {meta['model']!r} failed "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                             hint="the other format may work; report the model name") from e
    return out


def _check_sizes(model: nn.Module, size: int) -> None:
    """The model's own transform must keep ``size x size`` images as they are (no resize)."""
    t = model.transform
    fixed = getattr(t, "fixed_size", None)
    keeps = (tuple(fixed) == (size, size)) if fixed is not None else (
        t.min_size[-1] == size and t.max_size == size)
    if not keeps:
        raise ModelError(f"the model resizes {size}x{size} inputs (min_size={t.min_size}, "
                         f"max_size={t.max_size}): its img_size does not match the checkpoint's")


def signature(meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs and outputs of an export, from its metadata: ``[{"name", "dtype",
    "shape"}]`` each, ``"batch"`` standing for the dynamic axis.

    Example:
        >>> ins, outs = signature({"img_size": 64, "level_sizes": [64, 16],
        ...                        "class_names": ["a", "b"], "outputs": ["boxes", "scores"]})
        >>> ins[0]["shape"], [o["shape"] for o in outs]
        (['batch', 3, 64, 64], [['batch', 80, 4], ['batch', 80, 2]])
    """
    s, n = int(meta["img_size"]), int(sum(meta["level_sizes"]))
    shapes = {"boxes": ["batch", n, 4], "scores": ["batch", n, len(meta["class_names"])],
              "loc_scores": ["batch", n]}
    inputs = [{"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, s, s]}]
    outputs = [{"name": k, "dtype": "float32", "shape": shapes[k]} for k in meta["outputs"]]
    return inputs, outputs


def parse_metadata(text: str | None, path: str | Path) -> dict[str, Any]:
    """Check the metadata JSON ``text`` found in the export at ``path`` (None: none found).

    Raises:
        ModelError: no danlu metadata, bad JSON, or a newer version than this danlu reads.
    """
    try:
        meta = None if text is None else json.loads(text)
    except ValueError as e:
        raise ModelError(f"{path}: the danlu metadata is not JSON ({e})",
                         hint="re-export it with `danlu export CHECKPOINT`") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: no danlu metadata in this file",
                         hint="only files written by `danlu export` carry it")
    if int(meta.get("version", 0)) > VERSION:
        raise ModelError(f"{path}: export version {meta.get('version')} is newer than this "
                         f"danlu reads ({VERSION})", hint="upgrade danlu")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{path}: the danlu metadata lacks {', '.join(missing)}")
    return meta


_REQUIRED = ("family", "class_names", "img_size", "resize", "level_sizes", "selection",
             "topk_candidates", "score_thresh", "nms_thresh", "detections_per_img", "outputs")


def _metadata_text(path: Path) -> str | None:
    """The metadata JSON inside a TorchScript archive (a zip) or an ONNX file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith(f"extra/{TORCHSCRIPT_EXTRA}")),
                        None)
            return None if name is None else z.read(name).decode()
    try:
        import onnx
    except ImportError:  # onnxruntime reads the metadata too
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
        return session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    proto = onnx.load_model(str(path), load_external_data=False)
    return next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata document of an export (an ``.onnx`` or a TorchScript file).

    Raises:
        ModelError: the file is missing, unreadable, or carries no danlu metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: exported model not found")
    try:
        text = _metadata_text(path)
    except Exception as e:  # noqa: BLE001 - a protobuf, zip or runtime error: a bad file
        raise ModelError(f"{path}: cannot read the exported model ({type(e).__name__}: {e})",
                         hint="re-export it with `danlu export CHECKPOINT`") from e
    return parse_metadata(text, path)


__all__ = ["export_model", "read_metadata", "parse_metadata", "signature", "default_export_path",
           "checkpoint_of", "DenseExport", "export_metadata", "FORMATS", "EXPORTABLE_FAMILIES",
           "FORMAT", "VERSION", "METADATA_KEY", "TORCHSCRIPT_EXTRA", "INPUT_NAME"]
