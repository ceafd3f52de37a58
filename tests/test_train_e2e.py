"""Train -> checkpoint -> evaluate -> predict -> demo, end to end on tiny data (seconds each)."""

from __future__ import annotations

import importlib.util

import orjson
import pytest
import torch
import yaml

import danlu
from danlu.cli.main import main
from danlu.data.io import save_dataset
from danlu.data.synth import synthesize
from danlu.errors import ConfigError
from danlu.train.callbacks import Callback
from danlu.train.results import read_results

pytest.importorskip("danlu.models")

TINY = {"batch": 4, "img_size": 64, "device": "cpu", "seed": 0}


def _shapes(n=16, size=64):
    return synthesize("shapes", num_images=n, seed=5, image_size=(size, size),
                      scale_range=(12, 28), encode=False)


def _events(run):
    return [orjson.loads(line) for line in (run / "history.jsonl").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    steps = []

    class Count(Callback):
        def on_step(self, trainer, logs):
            steps.append(logs["lr"])

    result = danlu.train(_shapes(), model="fcos-tiny", epochs=2, out=out, val_split=0.25,
                         callbacks=[Count()], verbose=False, **TINY)
    return out, result, steps


def test_library_train_writes_the_run_folder(run):
    out, result, steps = run
    assert result.best == out / "best.pt" and result.last == out / "last.pt"
    assert result.epochs == 2 and result.steps == len(steps) == 6
    assert result.stop_reason == "completed"
    assert {"AP", "AP50"} <= set(result.metrics)
    rows = read_results(out / "results.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"loss", "lr", "AP50", "AP", "epoch_time"} <= set(rows[0])
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["img_size"] == 64 and cfg["model"] == "fcos-tiny"
    for name in ("plots/loss.png", "plots/pr_curves.png", "plots/per_class_ap.png",
                 "eval/metrics.json", "eval/report.html"):
        assert (out / name).is_file(), name
    kinds = [e["event"] for e in _events(out)]
    assert kinds[0] == "start" and kinds[-1] == "end" and "checkpoint" in kinds
    if importlib.util.find_spec("tensorboard") is not None:
        assert list(out.glob("events.out.tfevents.*"))
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    assert "train" in last and "train" not in best
    assert best["class_names"] == ["circle", "square", "triangle", "star"]
    assert best["img_size"] == 64 and best["model_config"]["num_classes"] == 4
    # the evaluation of best.pt is what the result reports
    ev = orjson.loads((out / "eval" / "metrics.json").read_bytes())
    assert ev["AP50"] == pytest.approx(result.metrics["AP50"])


def test_an_existing_run_is_not_overwritten(run):
    out, _, _ = run
    with pytest.raises(ConfigError, match="already exists"):
        danlu.train(_shapes(4), epochs=1, out=out, verbose=False, **TINY)


def test_time_budget_and_early_stopping(tmp_path):
    r = danlu.train(_shapes(8), epochs=5, out=tmp_path / "t", time=1e-6, val_split=0,
                    plots=False, verbose=False, **TINY)
    assert r.stop_reason == "time" and r.steps == 1 and r.best.is_file()
    r = danlu.train(_shapes(8), epochs=5, out=tmp_path / "p", lr=0.0, patience=1, workers=1,
                    val_split=0.25, plots=False, final_eval=False, verbose=False, **TINY)
    assert r.stop_reason == "early_stopping" and r.epochs == 2


def test_cli_train_with_config_file_where_options_win(tmp_path, capsys):
    data = save_dataset(_shapes(8), tmp_path / "data", "yolo")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"data": str(data), "epochs": 1, "batch": 4, "img_size": 64, "device": "cpu",
         "max_steps": 1, "plots": False, "final_eval": False, "val_split": 0.25}))
    code = main(["--quiet", "train", "--config", str(tmp_path / "run.yaml"), "--img-size",
                 "32", "--project", str(tmp_path / "runs"), "--name", "c", "--json"])
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["stop_reason"] == "max_steps" and doc["steps"] == 1
    cfg = yaml.safe_load((tmp_path / "runs" / "c" / "config.yaml").read_text())
    assert cfg["img_size"] == 32 and cfg["epochs"] == 1 and cfg["batch"] == 4
    assert main(["--quiet", "train", "--data", str(data), "--schedule", "nope"]) == 2
    assert main(["--quiet", "train", "--epochs", "1"]) == 2  # no data
    err = capsys.readouterr().err
    assert "error: option schedule" in err and "error: no training data" in err


def test_cli_predict_writes_predictions_and_pictures(run, tmp_path, capsys):
    out, _, _ = run
    from PIL import Image

    ds = _shapes(3, size=96)
    (tmp_path / "imgs").mkdir()
    for i, s in enumerate(ds.samples):
        Image.fromarray(s.load_image()).save(tmp_path / "imgs" / f"{i}.png")
    code = main(["--quiet", "predict", str(out / "best.pt"), str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "pred"), "--score-threshold", "0.01", "--json"])
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc == orjson.loads((tmp_path / "pred" / "predictions.json").read_bytes())
    assert len(doc["images"]) == 3 and doc["images"][0]["width"] == 96
    assert sorted(p.name for p in (tmp_path / "pred" / "images").iterdir()) == \
        ["0.png", "1.png", "2.png"]
    assert main(["--quiet", "predict", str(out / "best.pt"), str(tmp_path / "none.png"),
                 "--out", str(tmp_path / "x")]) == 2


def test_demo_miniature_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["--quiet", "demo", "--out", str(out), "--num-images", "24", "--epochs", "1",
                 "--img-size", "128", "--time", "0", "--batch", "8", "--device", "cpu",
                 "--json"])
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc == orjson.loads((out / "metrics.json").read_bytes())
    assert doc["split"] == "test" and 0 <= doc["AP50"] <= 1 and 0 <= doc["AP"] <= 1
    page = (out / "report.html").read_text()
    assert "pictures/" in page and "AP50" in page
    for name in ("train/best.pt", "train/results.csv", "eval/report.html",
                 "eval/metrics.json", "eval/pr_curves.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "pictures").glob("*.png"))) == doc["images"]


def test_anchor_models_fit_their_anchors_to_the_training_boxes(tmp_path):
    import numpy as np

    from danlu.models import anchor_sizes_for, build_model
    from danlu.train.checkpoint import load_checkpoint

    data = _shapes(8, size=128)  # boxes 12-28 px at 128, so 6-14 px at img_size 64
    wh = np.concatenate([s.detections.xyxy[:, 2:] - s.detections.xyxy[:, :2]
                         for s in data.samples]) * 0.5
    want = [float(v) for v in anchor_sizes_for("retinanet-tiny", wh)]
    kw = dict(model="retinanet-tiny", epochs=1, max_steps=1, val_split=0, plots=False,
              final_eval=False, verbose=False, **TINY)
    danlu.train(data, out=tmp_path / "auto", **kw)
    got = load_checkpoint(tmp_path / "auto" / "last.pt")["model_config"]["anchor_sizes"]
    assert [level[0] for level in got] == want
    assert any(e["event"] == "anchors" for e in _events(tmp_path / "auto"))
    danlu.train(data, out=tmp_path / "default", anchors="default", **kw)
    default = build_model("retinanet-tiny", num_classes=4, img_size=64).config["anchor_sizes"]
    got = load_checkpoint(tmp_path / "default" / "last.pt")["model_config"]["anchor_sizes"]
    assert got == default and got[0][0] != want[0]
    # a resumed run keeps the anchors it was built with, whatever the data now
    r = danlu.train(resume=tmp_path / "auto", epochs=2, max_steps=2, data=_shapes(8, size=64))
    got = load_checkpoint(r.last)["model_config"]["anchor_sizes"]
    assert [level[0] for level in got] == want


def test_img_size_auto_is_resolved_from_the_data_and_recorded(tmp_path, capsys):
    data = save_dataset(_shapes(8, size=160), tmp_path / "data", "yolo")
    code = main(["--quiet", "train", "--data", str(data), "--img-size", "auto", "--batch", "4",
                 "--max-steps", "1", "--val-split", "0", "--no-plots", "--no-final-eval",
                 "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", "a",
                 "--json"])
    assert code == 0
    cfg = yaml.safe_load((tmp_path / "runs" / "a" / "config.yaml").read_text())
    assert cfg["img_size"] == 160
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--img-size", "big"]) == 2
    assert "--img-size" in capsys.readouterr().err
