"""Helper of tests/test_ddp.py (not a test): one tiny training run, single- or multi-process.

Run alone for one process, or under ``python -m torch.distributed.run --nproc-per-node 2``.
The model and loss are chosen so that DDP equals the single process run up to floating point:

* the tiny backbone's BatchNorm is replaced by identity (BatchNorm statistics over
  ``batch / world_size`` images differ from those over ``batch`` images — inherent to DDP
  without SyncBatchNorm, which gloo/CPU lacks);
* the loss is the mean over images of each image's FCOS loss (torchvision's FCOS normalises by
  the number of positive locations of the whole batch, which DDP's gradient average does not
  reproduce when the ranks hold different numbers of positives).

Usage: python tests/_ddp_train.py OUT [--max-steps N] [--resume]
"""

from __future__ import annotations

import sys

from torch import nn

import danlu
from danlu.data.synth import synthesize
from danlu.train.trainer import Trainer


def data():
    train = synthesize("shapes", num_images=16, seed=3, image_size=(64, 64),
                       scale_range=(12, 28), encode=False)
    val = synthesize("shapes", num_images=4, seed=4, image_size=(64, 64),
                     scale_range=(12, 28), encode=False)
    return train, val


def _no_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _no_batchnorm(child)


class NoBNTrainer(Trainer):
    def build_model(self) -> nn.Module:
        model = super().build_model()
        _no_batchnorm(model)
        return model


def per_image_mean(trainer, images, targets, batch):
    """The mean over images of each image's summed FCOS losses."""
    total = 0.0
    for img, t in zip(images, targets, strict=True):
        total = total + sum(trainer.model([img], [t]).values())
    return {"loss_per_image": total / len(images)}


OPTIONS = dict(model="fcos-tiny", epochs=2, batch=4, img_size=64, device="cpu", seed=1,
               deterministic=True, augment="none", plots=False, final_eval=False,
               warmup_epochs=0.5, ema=True, optimizer="sgd", lr=0.01)


def run(out: str, max_steps: int = 0, resume: bool = False):
    train, val = data()
    if resume:
        return danlu.train(train, val=val, resume=out, max_steps=0, loss_fn=per_image_mean,
                           trainer_cls=NoBNTrainer, verbose=False, progress=False)
    return danlu.train(train, val=val, out=out, max_steps=max_steps, loss_fn=per_image_mean,
                       trainer_cls=NoBNTrainer, verbose=False, progress=False, exist_ok=True,
                       **OPTIONS)


if __name__ == "__main__":
    args = sys.argv[1:]
    steps = int(args[args.index("--max-steps") + 1]) if "--max-steps" in args else 0
    result = run(args[0], max_steps=steps, resume="--resume" in args)
    # one write per rank, so the two ranks' lines cannot interleave mid-line
    sys.stdout.write(f"RESULT {result.steps} {result.stop_reason}\n")
    sys.stdout.flush()
