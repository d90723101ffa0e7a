"""A pure wrapper around one `onnxruntime.InferenceSession`: arrays in, arrays out, no locks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract import ArtifactError, ModelManifest
from service.engine import cuda_libs

_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}


def auto_intra_op_threads() -> int:
    """onnxruntime intra-op threads when not set: one fewer than the CPUs this process may run
    on (at least 1). The event loop needs a core of its own for HTTP while the engine thread
    computes; on 2 cores, 1 thread beat onnxruntime's default (one per core) in every workload
    measured side by side: generation +7-12 %, session step +15 %, classification +17 %
    (docs/benchmarks.md)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Runner:
    """`run(tokens, lengths, states) -> (logits, states)` on numpy arrays.

    tokens int64[B, T], lengths int32[B], states as the manifest describes them (batch on each
    tensor's `batch_axis`); logits float32[B, K] at each row's last real token.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        onnx_path: Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # No spin-waiting in the intra-op pool: the scheduler overlaps per-stream bookkeeping and
        # HTTP with the call, and on a small shared CPU spinning threads steal that time
        # (docs/benchmarks.md: 1.4-2.8x decode tokens/s at 64-256 streams on 2 cores, at a
        # ~10 % cost to a lone stream).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.intra_op_num_threads = intra_op_threads or auto_intra_op_threads()
        providers = list(providers or default_providers())
        if "CUDAExecutionProvider" in providers:
            cuda_libs.preload()  # the wheels' CUDA libraries (GPU image), before the session
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        check_graph(manifest, self.session)
        self.providers: list[str] = list(self.session.get_providers())
        io = manifest.io
        self._inputs = io.input_names()
        self._outputs = io.output_names()

    @property
    def provider(self) -> str:
        return self.providers[0] if self.providers else "unknown"

    @property
    def device(self) -> str:
        """Where this session's tensors live: onnxruntime's device name for `OrtValue`s."""
        return "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    def run(
        self, tokens: np.ndarray, lengths: np.ndarray, states: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = dict(zip(self._inputs, (tokens, lengths, *states), strict=True))
        out = self.session.run(self._outputs, feed)
        return out[0], list(out[1:])

    def run_bound(
        self, tokens: np.ndarray, lengths: np.ndarray, states: Sequence[ort.OrtValue]
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """`run` with the state as `OrtValue`s where this session computes (IO binding): only
        the tokens go in and the logits come out; the new state stays on the device. A fresh
        binding each call, so every output is a new buffer (the last step's outputs are this
        step's inputs and must not be written over)."""
        io = self.session.io_binding()
        io.bind_cpu_input(self._inputs[0], tokens)
        io.bind_cpu_input(self._inputs[1], lengths)
        for name, value in zip(self._inputs[2:], states, strict=True):
            io.bind_ortvalue_input(name, value)
        io.bind_output(self._outputs[0], "cpu")
        for name in self._outputs[1:]:
            io.bind_output(name, self.device)
        self.session.run_with_iobinding(io)
        out = io.get_outputs()
        return out[0].numpy(), list(out[1:])


def check_graph(manifest: ModelManifest, session: ort.InferenceSession) -> None:
    """Refuse a graph whose inputs/outputs differ from the manifest's io contract."""
    io = manifest.io
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    want_in = {io.tokens: "tensor(int64)", io.lengths: "tensor(int32)"}
    want_in |= {s.input: _ORT_TYPES[s.dtype] for s in io.states}
    want_out = {io.logits: "tensor(float)"} | {s.output: _ORT_TYPES[s.dtype] for s in io.states}
    if set(inputs) != set(want_in):
        raise ArtifactError(f"graph inputs {sorted(inputs)} != manifest {sorted(want_in)}")
    missing = set(want_out) - set(outputs)
    if missing:
        raise ArtifactError(f"graph lacks outputs {sorted(missing)} named by the manifest")
    for name, t in want_in.items():
        if inputs[name].type != t:
            raise ArtifactError(f"graph input {name!r} is {inputs[name].type}, manifest says {t}")
    for name, t in want_out.items():
        if outputs[name].type != t:
            raise ArtifactError(f"graph output {name!r} is {outputs[name].type}, manifest says {t}")
    for s in io.states:
        shape = inputs[s.input].shape
        if len(shape) != len(s.shape):
            raise ArtifactError(f"state {s.name!r}: graph rank {len(shape)} != {len(s.shape)}")
        for got, want in zip(shape, s.shape, strict=True):
            if isinstance(got, int) and isinstance(want, int) and got != want:
                raise ArtifactError(f"state {s.name!r}: graph shape {shape} != {s.shape}")
