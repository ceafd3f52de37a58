"""A new user's mistakes, through the real console script (issue 11): each gets one clear
line, exit 2, and leaves nothing half-made behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests._cli import danlu


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("first_hour")
    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "6",
              "--image-size", "96", "--scale", "16,40", cwd=root)
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.parametrize("args, says", [
    (("--model", "fcos-tyni"), "unknown model"),
    (("--device", "cuda"), "CUDA is not available"),
])
def test_a_run_that_fails_to_set_up_leaves_no_folder(data, args, says):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = danlu("train", "--data", "d", "--project", "runs_fail", "--name", "x", *args,
              cwd=data)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
    assert not (data / "runs_fail").exists()


def test_an_existing_run_names_exist_ok(data):
    base = ("train", "--data", "d", "--project", "runs_ok", "--name", "a", "--epochs", "1",
            "--img-size", "64", "--batch", "2")
    assert danlu(*base, cwd=data).returncode == 0
    r = danlu(*base, cwd=data)
    assert r.returncode == 2 and "already exists" in r.stderr and "--exist-ok" in r.stderr
    assert (data / "runs_ok" / "a" / "best.pt").is_file()  # the first run is untouched


@pytest.mark.parametrize("size", ["33", "8", "5000"])
def test_img_size_is_validated_before_training(data, size):
    r = danlu("train", "--data", "d", "--project", "runs_size", "--img-size", size, cwd=data)
    assert r.returncode == 2 and "img-size" in r.stderr and "multiple of 32" in r.stderr
    assert f"got {size}" in r.stderr and not (data / "runs_size").exists()


def test_stats_check_images_lists_the_broken_ones(tmp_path):
    import json

    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "5",
              "--image-size", "96", "--scale", "16,40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    images = sorted(p for p in (tmp_path / "d").rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(images) == 5
    cut, text, resized = images[0], images[1], images[2]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    text.write_text("not an image at all\n")
    from PIL import Image

    Image.new("RGB", (50, 40)).save(resized, format=Image.open(images[3]).format)
    plain = danlu("data", "stats", "d", "--json", cwd=tmp_path)
    assert plain.returncode == 0 and "broken_images" not in json.loads(plain.stdout)
    r = danlu("data", "stats", "d", "--json", "--check-images", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bad = json.loads(r.stdout)["broken_images"]
    named = {Path(b["image"]).name: b["error"] for b in bad}
    assert set(named) == {cut.name, text.name, resized.name}
    assert "truncated" in named[cut.name] and "not an image" in named[text.name]
    assert "50x40" in named[resized.name]
    assert "3 broken" in r.stderr and cut.name in r.stderr


def test_train_skips_a_broken_image_and_counts_it(tmp_path):
    import json

    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "6",
              "--image-size", "96", "--scale", "16,40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    images = sorted(p for p in (tmp_path / "d").rglob("*") if p.suffix in (".jpg", ".png"))
    broken = images[2]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    base = ("train", "--data", "d", "--epochs", "1", "--img-size", "64", "--batch", "2",
            "--val-split", "0", "--project", "runs")
    r = danlu(*base, "--name", "skip", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["skipped_images"] == 1
    assert r.stderr.count("skipped a training image") == 1 and broken.name in r.stderr
    assert "skipped 1 training image" in r.stderr
    history = (tmp_path / "runs" / "skip" / "history.jsonl").read_text()
    assert "image_skipped" in history and broken.name in history
    r = danlu(*base, "--name", "strict", "--strict", cwd=tmp_path)
    assert r.returncode == 2 and broken.name in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "strict").exists()


def test_eval_reads_the_folder_predict_wrote_and_names_unpredicted_classes(tmp_path):
    import json

    from tests._data_fixtures import train_tiny_checkpoint

    ckpt = train_tiny_checkpoint(tmp_path)
    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "4",
              "--image-size", "64", "--scale", "12,28", "--to", "coco", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    images = sorted(str(p) for p in (tmp_path / "d").rglob("*") if p.suffix in (".jpg", ".png"))
    r = danlu("predict", str(ckpt), *images, "--out", "preds", "--save-images", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    gt = next((tmp_path / "d").rglob("*.json"))
    r = danlu("eval", "--gt", str(gt), "--pred", "preds", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "AP" in json.loads(r.stdout)
    # predictions of one class only: the others are named
    doc = json.loads(gt.read_text())
    one = [{"image_id": doc["images"][0]["id"], "category_id": doc["categories"][0]["id"],
            "bbox": [1, 1, 10, 10], "score": 0.9}]
    (tmp_path / "one.json").write_text(json.dumps(one))
    r = danlu("eval", "--gt", str(gt), "--pred", "one.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    present = {a["category_id"] for a in doc["annotations"]} - {doc["categories"][0]["id"]}
    names = [c["name"] for c in doc["categories"] if c["id"] in present]
    assert "no predictions for" in r.stderr and all(n in r.stderr for n in names)


def test_training_ends_with_where_everything_went(tmp_path):
    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "12",
              "--image-size", "96", "--scale", "16,40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = danlu("train", "--data", "d", "--name", "w", "--project", "runs", "--epochs", "1",
              "--img-size", "64", "--batch", "4", "--val-split", "0.25", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = Path("runs") / "w"
    for text in (f"run folder: {run}", str(run / "best.pt"), str(run / "eval" / "report.html"),
                 f"tensorboard --logdir {run}", "danlu predict", "GT boxes", "circle"):
        assert text in r.stderr, text


def test_ctrl_c_says_how_to_resume(tmp_path):
    import signal
    import time

    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "16",
              "--image-size", "96", "--scale", "16,40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, "-m", "danlu", "train", "--data", "d", "--name",
                             "c", "--project", "runs", "--epochs", "1000", "--img-size", "64",
                             "--batch", "2", "--val-split", "0", "--save-every-steps", "1"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored (as CI may run
                            # us): give the child the default, as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "runs" / "c" / "last.pt"
    for _ in range(6000):  # the first checkpoint: then interrupt
        if last.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert f"continue with: danlu train --resume {Path('runs') / 'c'}" in err
    assert "Traceback" not in err


def test_resume_extends_a_finished_run_and_time_alone_sets_the_length(tmp_path):
    import json

    import yaml

    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "8",
              "--image-size", "96", "--scale", "16,40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    base = ("--img-size", "64", "--batch", "4", "--val-split", "0")
    r = danlu("train", "--data", "d", "--name", "e", "--project", "runs", "--epochs", "1",
              *base, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = danlu("train", "--resume", "runs/e", "--epochs", "3", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == 3
    r = danlu("train", "--resume", "runs/e", "--epochs", "2", cwd=tmp_path)
    assert r.returncode == 2 and "done 3 epochs already" in r.stderr
    r = danlu("train", "--data", "d", "--name", "t", "--project", "runs", "--time", "0.02",
              "--json", *base, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stop_reason"] == "time"
    cfg = yaml.safe_load((tmp_path / "runs" / "t" / "config.yaml").read_text())
    assert cfg["epochs"] > 10 and "until the budget" in r.stderr


def test_one_skip_invalid_policy_for_every_command_that_reads_a_dataset(tmp_path):
    import re

    r = danlu("data", "synth", "--preset", "shapes", "--out", "d", "--num-images", "8",
              "--image-size", "96", "--scale", "16,40", "--to", "voc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    xml = sorted((tmp_path / "d").rglob("*.xml"))[1]
    xml.write_text(re.sub(r"<bndbox>.*?</bndbox>", "", xml.read_text(), count=1, flags=re.S))
    train = ("train", "--data", "d", "--epochs", "1", "--img-size", "64", "--batch", "4",
             "--val-split", "0", "--project", "runs")
    for args in (train + ("--name", "a"), ("data", "stats", "d"),
                 ("eval", "--gt", "d", "--pred", "d")):
        r = danlu(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert "bndbox" in r.stderr and "--skip-invalid" in r.stderr, (args, r.stderr)
    for args in (train + ("--name", "b"), ("data", "stats", "d"),
                 ("eval", "--gt", "d", "--pred", "d")):
        r = danlu(*args, "--skip-invalid", cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
        assert "skipped" in r.stderr and xml.name in r.stderr, (args, r.stderr)


def test_global_flags_work_after_the_command(tmp_path):
    r = danlu("train", "--data", "nowhere", "--debug", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr  # --debug shows it
    r = danlu("train", "--data", "nowhere", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = danlu("data", "synth", "--out", "d", "--num-images", "2", "--image-size", "96",
              "--scale", "16,40", "-q", cwd=tmp_path)
    assert r.returncode == 0 and "No such option" not in r.stderr


@pytest.mark.parametrize("size", ["64", "40x30", "256"])
def test_synth_default_scale_fits_small_images(tmp_path, size):
    from danlu.cli.data_prep import default_scale

    assert default_scale((256, 256)) == (16, 80)  # the default scenes keep their bytes
    r = danlu("data", "synth", "--out", "d", "--num-images", "2", "--image-size", size,
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
