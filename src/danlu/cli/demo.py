"""``danlu demo``: the embedded default, from synthetic data to an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from danlu.cli import _common
from danlu.cli._common import print_json, show_progress


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder."),
        num_images: int = typer.Option(1000, "--num-images", help="Shapes images to "
                                       "synthesize (80/10/10 train/val/test)."),
        epochs: int = typer.Option(15, "--epochs", help="Most epochs to train."),
        time: float = typer.Option(6.5, "--time", help="Training time budget in minutes "
                                   "(0: none)."),
        img_size: int = typer.Option(256, "--img-size", help="Image side in pixels."),
        batch: int = typer.Option(16, "--batch", help="Images per step."),
        seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps."),
        workers: int = typer.Option(0, "--workers", help="DataLoader processes."),
        as_json: bool = typer.Option(False, "--json", help="Print metrics.json on stdout."),
    ) -> None:
        """The embedded default: synthesize shapes, train, evaluate, report.

        Synthesize shapes, train fcos-tiny, evaluate best.pt on a held-out split, and write
        OUT/report.html (curves, metrics, pictures) and OUT/metrics.json.

        About 10 minutes on 2 CPU cores.

        Example: danlu demo --out runs/demo
        """
        from danlu.demo import run_demo

        doc = run_demo(out, num_images=num_images, epochs=epochs,
                       time_minutes=time if time > 0 else None, img_size=img_size,
                       batch=batch, seed=seed, device=device, workers=workers,
                       progress=show_progress(), verbose=not _common._quiet["on"])
        if as_json:
            print_json(doc)
