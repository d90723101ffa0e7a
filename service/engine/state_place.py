"""Where a decode batch's recurrent state lives between steps: on the host, or on the device the
model computes on.

- `HostState`: numpy arrays handed to every `run()`. On the CPU provider onnxruntime computes on
  them in place, so there is nothing to move; on a GPU it would copy the whole batch's state to
  the device and back at every step.
- `DeviceState`: `OrtValue`s on the execution provider's device, bound to each step with IO
  binding (`Runner.run_bound`, which the scheduler calls for a batch held here): a step moves its tokens in and its logits out, nothing else. Rows
  join (Concat) and leave (Gather) on the device too (`device_graphs.py`); only the rows a
  prefill made come up, and only a finished row's state comes back (to commit a session).

Both give bit-identical results: the tensors are the same and the extra graphs only copy rows
(tests/service/engine/test_state_place.py runs every decode path both ways on the CPU provider).
`RNNSERVE_STATE_ON_DEVICE` chooses; by default (`auto`) the state is on the device exactly when
the model is not on the CPU provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.engine import holes as holes_
from service.engine.device_graphs import graph
from service.engine.prefill import StateRows
from service.engine.runner import Runner

# one entry per state tensor: np.ndarray (HostState) or onnxruntime.OrtValue (DeviceState)
Held = list[Any]
StateOnDevice = Literal["auto", "on", "off"]


class HostState:
    on_device = False

    def __init__(self, axes: Sequence[int]) -> None:
        self.axes = list(axes)  # each state tensor's batch axis

    def join(self, held: Held, new: Sequence[StateRows]) -> Held:
        """`held`'s rows, then each of `new`'s (one row per stream), in one copy per tensor."""
        return [
            np.concatenate([*([held[k]] if held else []), *(rows[k] for rows in new)], ax)
            for k, ax in enumerate(self.axes)
        ]

    def leave(self, held: Held, holes: np.ndarray, movers: np.ndarray, m: int) -> Held:
        """Rows leaving (`holes.plan`): the batch's own arrays (the last step's outputs),
        rows moved in place and cut to m rows."""
        return [holes_.fill(s, holes, movers, m, ax) for s, ax in zip(held, self.axes, strict=True)]

    def rows(self, held: Held, idx: Sequence[int]) -> list[StateRows]:
        """Rows `idx` as host arrays, one row each (a finished stream's state)."""
        return [
            [np.take(s, [i], axis=ax) for s, ax in zip(held, self.axes, strict=True)] for i in idx
        ]


class DeviceState:
    on_device = True

    def __init__(self, runner: Runner) -> None:
        self.device = runner.device
        specs = runner.manifest.io.states
        self.axes = [s.batch_axis for s in specs]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1  # copies: one thread is plenty, and spins on no core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(op: Literal["Gather", "Concat"], dtype: str, axis: int) -> Any:
            model = graph(op, dtype, axis)
            return ort.InferenceSession(model, sess_options=opts, providers=runner.providers)

        self._gather = [session("Gather", s.dtype, s.batch_axis) for s in specs]
        self._concat = [session("Concat", s.dtype, s.batch_axis) for s in specs]

    def join(self, held: Held, new: Sequence[StateRows]) -> Held:
        """The new rows go up as one block per tensor and are appended on the device."""
        up = [
            ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(np.concatenate([rows[k] for rows in new], ax)), self.device
            )
            for k, ax in enumerate(self.axes)
        ]
        if not held:
            return up
        return [
            self._call(c, {"a": a, "b": b}) for c, a, b in zip(self._concat, held, up, strict=True)
        ]

    def leave(self, held: Held, holes: np.ndarray, movers: np.ndarray, m: int) -> Held:
        """Rows leaving: the same order as on the host, gathered on the device."""
        return self.take(held, holes_.order(holes, movers, m))

    def take(self, held: Held, idx: np.ndarray) -> Held:
        if not len(idx):
            return []
        idx = np.asarray(idx, np.int64)
        return [self._call(g, {"x": v}, idx) for g, v in zip(self._gather, held, strict=True)]

    def rows(self, held: Held, idx: Sequence[int]) -> list[StateRows]:
        """The rows `idx` gathered on the device and copied down once, then split per row."""
        host = [v.numpy() for v in self.take(held, np.asarray(idx, np.int64))]
        return [
            [np.take(h, [j], axis=ax) for h, ax in zip(host, self.axes, strict=True)]
            for j in range(len(idx))
        ]

    def _call(self, session: Any, inputs: dict[str, Any], idx: np.ndarray | None = None) -> Any:
        io = session.io_binding()
        for name, value in inputs.items():
            io.bind_ortvalue_input(name, value)
        if idx is not None:
            io.bind_cpu_input("idx", idx)
        io.bind_output("y", self.device)
        session.run_with_iobinding(io)
        return io.get_outputs()[0]


StatePlace = HostState | DeviceState


def place_for(runner: Runner, mode: StateOnDevice = "auto") -> StatePlace:
    """`on`: on the device whatever the provider (the CPU provider included: how the tests run
    the device path without a GPU); `auto`: on the device unless the model is on the CPU."""
    if mode == "on" or (mode == "auto" and runner.device != "cpu"):
        return DeviceState(runner)
    return HostState([s.batch_axis for s in runner.manifest.io.states])
