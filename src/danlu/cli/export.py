"""``danlu export``: write a checkpoint's detector as an ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path

import typer

from danlu.cli._common import info, print_json


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="A danlu checkpoint (best.pt) or run "
                                          "folder."),
        fmt: str = typer.Option(None, "--to", help="onnx (default) or torchscript.",
                                show_default=False),
        fmt_old: str = typer.Option(None, "--format", hidden=True),
        out: Path = typer.Option(None, "--out", help="The file to write (default: beside the "
                                 "checkpoint, suffix .onnx or .torchscript)."),
        opset: int = typer.Option(17, "--opset", help="ONNX opset (18 and later: torch's "
                                  "dynamo exporter; 17 and earlier: its TorchScript-based "
                                  "one)."),
        as_json: bool = typer.Option(False, "--json", help="Print {path, format, inputs, "
                                     "outputs, metadata} on stdout."),
    ) -> None:
        """Export a trained FCOS, RetinaNet or SSDLite checkpoint to ONNX or TorchScript.

        The file takes images already letterboxed to the model's square (float32
        [B, 3, S, S] in [0, 1], any batch size) and returns every anchor's decoded box and
        per-class score (FCOS also loc_scores); thresholds, top-k and NMS stay in danlu,
        which reads the file's metadata. `danlu predict` and `Predictor` take the file in
        place of the checkpoint. Faster R-CNN does not export. See docs/export.md.

        Example: danlu export runs/shapes/best.pt --to onnx --out model.onnx
        """
        from danlu.cli._common import renamed_option

        fmt = renamed_option(fmt, fmt_old, "--format", "--to") or "onnx"
        from danlu.models.export import (
            default_export_path,
            export_model,
            read_metadata,
            signature,
        )

        target = out if out is not None else default_export_path(checkpoint, fmt)
        path = export_model(checkpoint, target, fmt, opset=opset)
        meta = read_metadata(path)
        inputs, outputs = signature(meta)
        if as_json:
            print_json({"path": str(path), "format": fmt, "inputs": inputs,
                        "outputs": outputs, "metadata": meta})
            return
        shape = ", ".join(str(d) for d in inputs[0]["shape"])
        info(f"wrote {path} ({meta['model']}, {fmt}"
             + (f" opset {opset}" if fmt == "onnx" else "") + f"; input images float32 "
             f"[{shape}] in [0, 1], letterboxed; outputs {', '.join(meta['outputs'])})")
        info(f"use it: danlu predict {path} images/ --out preds   "
             f"(Python: danlu.Predictor({str(path)!r}))")
