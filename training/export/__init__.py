"""ONNX export with explicit recurrent state, verified before it is written."""

from __future__ import annotations

from training.export.graph import OPSET, build_graph
from training.export.io import build_io
from training.export.quantize import add_int8_variant, classify_accuracy, lm_loss
from training.export.run import export_command, export_model, export_run, load_run
from training.export.verify import ExportCheckError, verify_export

__all__ = [
    "OPSET",
    "ExportCheckError",
    "add_int8_variant",
    "build_graph",
    "build_io",
    "classify_accuracy",
    "export_command",
    "export_model",
    "export_run",
    "lm_loss",
    "load_run",
    "verify_export",
]
