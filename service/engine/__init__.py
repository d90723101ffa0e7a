"""The engine: runner (pure onnxruntime), registry, scheduler, sampling and session operations."""
