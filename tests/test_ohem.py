"""Online hard example mining: the selection against a plain loop, the NMS switch, and a real
training step of Faster R-CNN / RetinaNet whose gradient reaches only the selected examples."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError
from danlu.models import build_model
from danlu.train.heads import MiningRoIHeads, install_mining
from danlu.train.sampling import ohem_select


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def oracle(boxes, losses, batch, nms_iou):
    """Rank by loss (ties: lower index), drop any RoI overlapping a kept one by > nms_iou."""
    order = sorted(range(len(losses)), key=lambda i: (-losses[i], i))
    kept = []
    for i in order:
        if nms_iou is None or all(_iou(boxes[i], boxes[j]) <= nms_iou for j in kept):
            kept.append(i)
        if len(kept) == batch:
            break
    return kept


BOXES = [[0, 0, 10, 10], [0, 0, 10, 9.5], [1, 0, 11, 10], [20, 20, 30, 30], [20, 20, 29, 30],
         [40, 0, 50, 10], [0, 40, 10, 50], [5, 5, 15, 15]]
LOSSES = [5.0, 4.9, 4.8, 3.0, 2.9, 1.0, 0.5, 2.0]


@pytest.mark.parametrize("nms_iou", [0.7, 0.3, None])
@pytest.mark.parametrize("batch", [1, 3, 5, 20])
def test_selection_is_top_b_after_nms(batch, nms_iou):
    got = ohem_select(torch.tensor(BOXES), torch.tensor(LOSSES), batch, nms_iou)
    assert got.tolist() == oracle(BOXES, LOSSES, batch, nms_iou)


def test_nms_switch_changes_the_selection_with_near_duplicates():
    with_nms = ohem_select(torch.tensor(BOXES), torch.tensor(LOSSES), 4, 0.7).tolist()
    without = ohem_select(torch.tensor(BOXES), torch.tensor(LOSSES), 4, None).tolist()
    assert without == [0, 1, 2, 3]  # three near-copies of one box fill the batch
    assert with_nms == [0, 3, 7, 5]  # one of them, then distinct RoIs
    assert with_nms != without


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 20),
                          st.integers(1, 20), st.integers(0, 50)), min_size=1, max_size=25),
       st.integers(1, 10), st.sampled_from([0.5, 0.7, None]))
def test_selection_matches_the_loop_on_random_rois(rows, batch, nms_iou):
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in rows]
    losses = [float(v) / 7 for *_, v in rows]
    got = ohem_select(torch.tensor(boxes, dtype=torch.float32), torch.tensor(losses), batch,
                      nms_iou)
    assert got.tolist() == oracle(boxes, losses, batch, nms_iou)


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 34.0], [36.0, 30.0, 60.0, 58.0]]),
                "labels": torch.tensor([0, 1])} for _ in range(n)]
    return images, targets


def test_faster_rcnn_step_back_propagates_only_the_selected_rois():
    torch.manual_seed(0)
    model = install_mining(build_model("fasterrcnn-tiny", num_classes=2, img_size=64),
                           ohem=True, ohem_batch=16, ohem_nms=0.7)
    heads = model.model.roi_heads
    assert isinstance(heads, MiningRoIHeads)
    pooled = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        pooled["x"] = output

    hook = heads.box_roi_pool.register_forward_hook(keep)
    images, targets = _batch()
    losses = model(images, targets)
    hook.remove()
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = pooled["x"].grad.flatten(1).abs().sum(dim=1)
    counts = [len(c) for c in heads.last_candidates]
    assert len(grads) == sum(counts)  # every candidate RoI was scored
    selected = torch.zeros(len(grads), dtype=torch.bool)
    offset = 0
    for sel, n in zip(heads.last_selection, counts, strict=True):
        assert 0 < len(sel) <= 16
        selected[sel + offset] = True
        offset += n
    assert (grads[~selected] == 0).all()  # no gradient from the RoIs left out
    assert (grads[selected] > 0).sum() >= selected.sum() * 0.9
    params = [p for p in model.parameters() if p.grad is not None]
    assert params and all(torch.isfinite(p.grad).all() for p in params)
    model.eval()  # evaluation is torchvision's own path
    out = model(images)
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_faster_rcnn_selection_is_the_loss_ranking_of_its_candidates():
    torch.manual_seed(1)
    model = install_mining(build_model("fasterrcnn-tiny", num_classes=2, img_size=64),
                           ohem=True, ohem_batch=8, ohem_nms=None)
    heads = model.model.roi_heads
    seen = {}
    original = heads.box_predictor.forward

    def record(x):
        out = original(x)
        if not torch.is_grad_enabled():  # the read-only pass over every candidate
            seen["logits"], seen["boxes"] = out
        return out

    heads.box_predictor.forward = record
    images, targets = _batch(1)
    model(images, targets)
    rois = heads.last_candidates[0]
    gt = targets[0]["boxes"]
    # plain per-RoI losses: label by IoU >= 0.5, cross-entropy + smooth-L1 (beta 1/9)
    losses = []
    for i, roi in enumerate(rois.tolist()):
        ious = [_iou(roi, g) for g in gt.tolist()]
        j = max(range(len(ious)), key=ious.__getitem__)
        label = int(targets[0]["labels"][j]) + 1 if ious[j] >= 0.5 else 0
        logits = seen["logits"][i]
        loss = float(torch.logsumexp(logits, 0) - logits[label])
        if label:
            target = heads.box_coder.encode([gt[j:j + 1]], [rois[i:i + 1]])[0][0]
            diff = (seen["boxes"][i].reshape(-1, 4)[label] - target).abs()
            beta = 1 / 9
            loss += float(torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum())
        losses.append(loss)
    expected = sorted(range(len(losses)), key=lambda i: -losses[i])[:8]
    assert heads.last_selection[0].tolist() == expected


def test_retinanet_negative_mining_keeps_positives_and_hardest_negatives():
    torch.manual_seed(0)
    plain = build_model("retinanet-tiny", num_classes=2, img_size=64)
    mined = build_model("retinanet-tiny", num_classes=2, img_size=64)
    mined.load_state_dict(plain.state_dict())
    images, targets = _batch(1)
    base = plain(images, targets)
    # with an unlimited ratio every negative is kept: torchvision's loss exactly
    install_mining(mined, ohem=True, neg_ratio=1e9)
    same = mined(images, targets)
    torch.testing.assert_close(same["classification"], base["classification"])
    torch.testing.assert_close(same["bbox_regression"], base["bbox_regression"])
    mined.model.head.neg_ratio = 3.0
    hard = mined(images, targets)
    assert torch.isfinite(hard["classification"])
    assert hard["classification"] < base["classification"]  # fewer (easy) negatives summed
    hard["classification"].backward()


def test_ohem_on_fcos_is_refused_with_a_reason():
    with pytest.raises(ConfigError, match="fcos"):
        install_mining(build_model("fcos-tiny", num_classes=2, img_size=64), ohem=True)


def test_trainer_runs_faster_rcnn_with_ohem(tmp_path):
    import danlu
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=4, seed=0, image_size=(64, 64), scale_range=(16, 28),
                    encode=False)
    result = danlu.train(ds, model="fasterrcnn-tiny", epochs=1, out=tmp_path / "run", batch=2,
                         img_size=64, device="cpu", val_split=0, ohem=True, ohem_batch=16,
                         ohem_nms=False, plots=False, final_eval=False, verbose=False)
    assert result.steps == 2
    from danlu.infer.predictor import Predictor

    Predictor(result.best, device="cpu").predict(ds[0].load_image())  # plain heads load it
