"""Child process of ``danlu bench predict``'s memory rows: predict one huge image file and print
one JSON line with the process's peak resident memory.

Usage: ``python benchmarks/_predict_memory.py {ours|sahi} IMAGE CHECKPOINT SLICE BATCH SCORE``

* ``ours``: ``sliced_predict(Predictor(...), IMAGE, slice_size=SLICE, overlap=0.2)`` (the path:
  read window by window through ``danlu.infer.raster``), hard NMS at IoU 0.5 across tiles;
* ``sahi``: ``sahi.predict.get_sliced_prediction(IMAGE, ...)`` with the same model wrapped as a
  SAHI model (``benchmarks/_predict_scene.sahi_model``), the same slices and batch size, its
  NMS/IOU 0.5 merge, no full-image pass.

Peak memory is ``VmHWM`` of this process (its high-water resident set since ``exec``: nothing
of the parent counts), read at the end; ``base_mb`` is the same figure after the imports and
the model load, before the image is opened. A failure (MemoryError, a decoder refusing the
file ...) is reported as ``error`` with the peak reached so far.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> dict:
    which, image, ckpt, slice_size, batch, score = argv
    slice_size, batch, score = int(slice_size), int(batch), float(score)
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    import torch

    from danlu.infer.postprocess import PostProcess
    from danlu.infer.predictor import Predictor
    from danlu.infer.slicing import SliceStats, sliced_predict

    torch.set_num_threads(int(torch.get_num_threads()))
    predictor = Predictor(ckpt, device="cpu", score_threshold=score, batch_size=batch)
    doc: dict = {"which": which}
    if which == "sahi":
        from sahi.predict import get_sliced_prediction

        from benchmarks._predict_scene import sahi_model

        model = sahi_model(predictor, score)
    doc["base_mb"] = vm_hwm_mb()
    t0 = time.perf_counter()
    try:
        if which == "ours":
            stats = SliceStats()
            det = sliced_predict(predictor, image, slice_size=slice_size, overlap=0.2,
                                 merge=PostProcess("hard", iou_threshold=0.5, max_detections=0),
                                 stats=stats)
            doc.update(boxes=len(det), tiles=stats.tiles, seconds_read=stats.seconds_read,
                       seconds_model=stats.seconds_model, seconds_merge=stats.seconds_merge)
        else:
            res = get_sliced_prediction(image, model, slice_height=slice_size,
                                        slice_width=slice_size, overlap_height_ratio=0.2,
                                        overlap_width_ratio=0.2, perform_standard_pred=False,
                                        postprocess_type="NMS", postprocess_match_metric="IOU",
                                        postprocess_match_threshold=0.5, verbose=0,
                                        batch_size=batch)
            doc.update(boxes=len(res.object_prediction_list))
    except BaseException as e:  # noqa: BLE001 - the failure is the measurement
        doc["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    doc["seconds"] = time.perf_counter() - t0
    doc["peak_mb"] = vm_hwm_mb()
    return doc


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])), flush=True)
