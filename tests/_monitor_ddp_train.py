"""Helper of tests/test_monitor_ddp.py (not a test): one run under torchrun with a
:class:`~danlu.monitor.Monitor` on every rank (rank 0 alone serves it).

Each rank prints, in one write: ``RESULT rank steps reason lr eval_every`` and
``STEPS rank t1,t2,...`` (the wall-clock end of each of its steps).

Usage: python -m torch.distributed.run --nproc-per-node 2 tests/_monitor_ddp_train.py OUT
"""

from __future__ import annotations

import sys
import time

import danlu
from danlu.data.synth import synthesize
from danlu.monitor import Monitor
from danlu.train.callbacks import Callback


class Report(Callback):
    """What the rank did, printed at the end."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lines = ""

    def on_step(self, trainer, logs):
        self.times.append(time.time())

    def on_train_end(self, trainer, result):
        group = trainer.optimizer.param_groups[0]
        lr = group["lr"] / group.get("lr_scale", 1.0)
        self.lines = (f"RESULT {trainer.rank} {result.steps} {result.stop_reason} {lr:.6g} "
                      f"{trainer.eval_every}\n"
                      f"STEPS {trainer.rank} {','.join(f'{t:.4f}' for t in self.times)}\n")


if __name__ == "__main__":
    data = synthesize("shapes", num_images=16, seed=3, image_size=(64, 64),
                      scale_range=(12, 28), encode=False)
    report = Report()
    mon = Monitor(port=0).start()
    try:
        danlu.train(data, epochs=500, out=sys.argv[1], model="fcos-tiny", batch=4, img_size=64,
                    device="cpu", val_split=0, plots=False, final_eval=False, augment="none",
                    schedule="constant", warmup_epochs=0, verbose=False, progress=False,
                    callbacks=[mon, report])
    finally:
        mon.close()
    sys.stdout.write(report.lines)
    sys.stdout.flush()
