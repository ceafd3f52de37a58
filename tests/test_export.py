"""Export: an ONNX or TorchScript file predicts what its checkpoint predicts."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest
import torch

from danlu.cli import main as cli_main
from danlu.errors import ConfigError, ModelError
from danlu.infer.exported import ExportedBackend
from danlu.infer.predictor import Predictor
from danlu.models import build_model
from danlu.models.checkpoint import save_checkpoint
from danlu.models.export import checkpoint_of, export_model, read_metadata
from danlu.structures import Detections
from danlu.testing import assert_detections_close

CLASSES = ["circle", "square", "triangle"]
# name -> input side: 80 is padded to 96 inside the model, which the export must copy
MODELS = {"fcos-tiny": 80, "retinanet-tiny": 64, "ssdlite-mobilenet_v3_large": 96}
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
SCORE = 0.05


def _spread_scores(det: torch.nn.Module) -> None:
    """Untrained heads score every anchor within 1e-6 of the others (tiny initial weights):
    runtimes' rounding then reorders near-ties. He-initialized classification convs make the
    scores depend on the image, as a trained model's do."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, m in det.model.head.classification_head.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if "cls_logits" in name:
                    m.weight.mul_(0.1)
                    m.bias.normal_(-2.0, 1.0)


def _checkpoint(folder: Path, name: str, size: int) -> Path:
    torch.manual_seed(0)
    det = build_model(name, num_classes=len(CLASSES), img_size=size)
    _spread_scores(det)
    path = folder / f"{name}.pt"
    save_checkpoint(checkpoint_of(det, CLASSES), path)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """name -> {"pt": checkpoint, "onnx": file, "torchscript": file}."""
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for name, size in MODELS.items():
        ckpt = _checkpoint(folder, name, size)
        out[name] = {"pt": ckpt, **{f: export_model(ckpt, ckpt.with_suffix(s), f)
                                    for f, s in FORMATS.items()}}
    return out


@pytest.fixture(scope="module")
def references(exports) -> dict[str, Predictor]:
    """name -> the Predictor of its checkpoint (built once: SSDLite takes seconds)."""
    return {name: Predictor(exports[name]["pt"], device="cpu", score_threshold=SCORE)
            for name in MODELS}


def _images(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Noise images of the model's square: no letterbox padding, whose identical pixels
    would give exactly tied scores that two runtimes may order differently."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _assert_same_candidates(a: Detections, b: Detections, atol: float = 1e-4) -> None:
    """``a`` and ``b`` equal up to the order of candidates whose scores are within ``atol``
    of each other: the best-first order of near-ties (a float rounding apart) is the
    runtime's to choose."""
    assert len(a) == len(b), (len(a), len(b))
    np.testing.assert_allclose(a.scores, b.scores, atol=atol, rtol=0)
    # runs of consecutive candidates whose scores stay within atol: compared as sets
    breaks = np.flatnonzero(np.abs(np.diff(b.scores)) > atol) + 1
    for run in np.split(np.arange(len(b)), breaks):
        x, y = a[run], b[run]
        kx = np.lexsort((*np.round(x.xyxy.T, 3), x.labels))
        ky = np.lexsort((*np.round(y.xyxy.T, 3), y.labels))
        assert_detections_close(x[kx], y[ky], atol=atol)
        for name in b.extra:
            np.testing.assert_allclose(x.extra[name][kx], y.extra[name][ky], atol=atol, rtol=0)
    assert sorted(a.extra) == sorted(b.extra)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(MODELS))
def test_export_predicts_what_the_checkpoint_predicts(exports, references, name: str,
                                                      fmt: str) -> None:
    size = MODELS[name]
    ref = references[name]
    exp = Predictor(exports[name][fmt], device="cpu", score_threshold=SCORE)
    assert exp.class_names == CLASSES and exp.img_size == size
    assert exp.postprocess.iou_threshold == ref.postprocess.iou_threshold
    assert exp.postprocess.max_detections == ref.postprocess.max_detections
    for batch in (1, 3):  # the batch axis is dynamic
        images = _images(size, batch, seed=batch)
        got = exp.predict(images)
        want = ref.predict(images)
        assert sum(len(d) for d in want) > 0
        for a, b in zip(got, want, strict=True):
            assert_detections_close(a, b)
        x = torch.stack([exp.transform.image(im)[0] for im in images])
        for a, b in zip(exp.candidates(x), ref.candidates(x), strict=True):
            _assert_same_candidates(a, b)


@pytest.mark.parametrize("threshold", [0.01, 0.3])
def test_candidates_follow_the_requested_threshold_both_sides_of_the_models_own(
        exports, threshold: float) -> None:
    # fcos-tiny's own score_thresh is 0.2: below it the model's threshold is lowered, above
    # it the candidates are filtered after the top-k
    ref = Predictor(exports["fcos-tiny"]["pt"], device="cpu")
    exp = Predictor(exports["fcos-tiny"]["onnx"], device="cpu")
    x = torch.stack([exp.transform.image(im)[0] for im in _images(80, 2, seed=7)])
    for a, b in zip(exp.candidates(x, threshold), ref.candidates(x, threshold), strict=True):
        assert len(b) and (b.scores >= threshold).all()
        _assert_same_candidates(a, b)


def test_metadata_round_trips(exports) -> None:
    for name, size in MODELS.items():
        ts = read_metadata(exports[name]["torchscript"])
        ox = read_metadata(exports[name]["onnx"])
        assert {k: v for k, v in ts.items() if k not in ("export_format", "opset")} == \
               {k: v for k, v in ox.items() if k not in ("export_format", "opset")}
        family = name.split("-")[0]
        assert ox["format"] == "danlu-export" and ox["version"] == 1
        assert ox["family"] == family and ox["model"] == name
        assert ox["class_names"] == CLASSES and ox["img_size"] == size
        assert ox["resize"] == "letterbox" and ox["export_format"] == "onnx"
        assert ox["opset"] == 17 and ts["opset"] is None
        assert ox["label_offset"] == (1 if family == "ssdlite" else 0)
        assert ox["selection"] == ("per-class" if family == "ssdlite" else "per-level")
        assert ox["outputs"] == (["boxes", "scores", "loc_scores"] if family == "fcos"
                                 else ["boxes", "scores"])
        for key in ("topk_candidates", "score_thresh", "nms_thresh", "detections_per_img"):
            assert key in ox
        # the level sizes add up to the anchors the file returns, in every format
        backend = ExportedBackend(exports[name]["onnx"], device="cpu")
        out = backend._run(torch.zeros(1, 3, size, size))
        assert list(out) == ox["outputs"]
        assert out["boxes"].shape == (1, sum(ox["level_sizes"]), 4)
        assert out["scores"].shape == (1, sum(ox["level_sizes"]), len(CLASSES))
    # stored as one JSON string under the ONNX metadata key "danlu"
    proto = onnx.load(str(exports["fcos-tiny"]["onnx"]))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["danlu"]) == read_metadata(exports["fcos-tiny"]["onnx"])
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim][:1] != [""]
    # and as the TorchScript extra file danlu.json
    extra = {"danlu.json": ""}
    with warnings.catch_warnings():  # torch.jit's deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(exports["fcos-tiny"]["torchscript"]), _extra_files=extra)
    assert json.loads(extra["danlu.json"]) == read_metadata(exports["fcos-tiny"]["torchscript"])


def test_onnx_metadata_reads_without_the_onnx_package(exports, monkeypatch) -> None:
    want = read_metadata(exports["retinanet-tiny"]["onnx"])
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnxruntime reads it then
    assert read_metadata(exports["retinanet-tiny"]["onnx"]) == want


def test_fcos_exports_with_the_dynamo_exporter_at_opset_18(exports, references,
                                                           tmp_path) -> None:
    path = export_model(exports["fcos-tiny"]["pt"], tmp_path / "m18.onnx", opset=18)
    assert read_metadata(path)["opset"] == 18
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain == "") == 18
    ref = references["fcos-tiny"]
    exp = Predictor(path, device="cpu", score_threshold=SCORE)
    images = _images(80, 3, seed=5)
    for batch in (1, 3):
        for a, b in zip(exp.predict(images[:batch]), ref.predict(images[:batch]), strict=True):
            assert_detections_close(a, b)


def test_faster_rcnn_does_not_export(tmp_path) -> None:
    det = build_model("fasterrcnn-tiny", num_classes=2, img_size=64)
    save_checkpoint(checkpoint_of(det, ["a", "b"]), tmp_path / "rcnn.pt")
    for fmt in FORMATS:
        with pytest.raises(ModelError, match="Faster R-CNN") as e:
            export_model(tmp_path / "rcnn.pt", tmp_path / f"rcnn.{fmt}", fmt)
        assert "fcos" in (e.value.hint or "")
        assert not (tmp_path / f"rcnn.{fmt}").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rcnn.pt"]  # no temporary left


def test_bad_arguments_and_files(exports, tmp_path) -> None:
    ckpt = exports["fcos-tiny"]["pt"]
    with pytest.raises(ConfigError, match="format"):
        export_model(ckpt, tmp_path / "m.x", "tflite")
    with pytest.raises(ConfigError, match="opset"):
        export_model(ckpt, tmp_path / "m.onnx", opset=5)
    for suffix in (".onnx", ".torchscript"):
        bad = tmp_path / f"corrupt{suffix}"
        bad.write_bytes(b"not a model at all")
        with pytest.raises(ModelError, match=f"corrupt\\{suffix}"):
            Predictor(bad, device="cpu")
        with pytest.raises(ModelError, match=f"corrupt\\{suffix}"):
            read_metadata(bad)
    with pytest.raises(ModelError, match="not found"):
        ExportedBackend(tmp_path / "missing.onnx")
    # a valid ONNX file that danlu did not write
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "foreign.onnx")
    with pytest.raises(ModelError, match="no danlu metadata"):
        ExportedBackend(tmp_path / "foreign.onnx", device="cpu")
    backend = ExportedBackend(exports["fcos-tiny"]["onnx"], device="cpu")
    with pytest.raises(ModelError, match=r"\[B, 3, 80, 80\]"):
        backend.candidates(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 0.1)


def test_onnx_without_onnxruntime_says_what_to_install(exports, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ConfigError) as e:
        ExportedBackend(exports["fcos-tiny"]["onnx"], device="cpu")
    assert "pip install onnxruntime" in (e.value.hint or "")


def test_cli_export_writes_beside_the_checkpoint_and_prints_json(exports, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    monkeypatch.setitem(cli_main.COMMANDS, "export", "export")
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(exports["retinanet-tiny"]["pt"].read_bytes())
    assert cli_main.main(["export", str(ckpt.parent), "--to", "torchscript", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["path"] == str(tmp_path / "run" / "best.torchscript") and doc["format"] == \
        "torchscript"
    n = sum(doc["metadata"]["level_sizes"])
    assert doc["inputs"] == [{"name": "images", "dtype": "float32",
                              "shape": ["batch", 3, 64, 64]}]
    assert [(o["name"], o["shape"]) for o in doc["outputs"]] == [
        ("boxes", ["batch", n, 4]), ("scores", ["batch", n, 3])]
    assert (tmp_path / "run" / "best.torchscript").is_file()
    out = tmp_path / "m.onnx"
    assert cli_main.main(["export", str(ckpt), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"danlu predict {out}" in err and read_metadata(out)["export_format"] == "onnx"
    assert cli_main.main(["export", str(ckpt), "--to", "tflite"]) == 2
    assert "error:" in capsys.readouterr().err


def test_onnx_device_choice(exports) -> None:
    import onnxruntime

    path = exports["fcos-tiny"]["onnx"]
    with pytest.raises(ConfigError, match="unknown device"):
        ExportedBackend(path, device="gpu")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert ExportedBackend(path, device="auto").device.type == "cpu"
        with pytest.warns(RuntimeWarning, match="onnxruntime-gpu"):
            assert ExportedBackend(path, device="cuda").device.type == "cpu"
