"""`Runner`: the onnxruntime session it builds (threads, spinning) on a fixture model."""

from __future__ import annotations

import os

from service.contract import load_artifact
from service.engine.runner import Runner, auto_intra_op_threads
from tests.conftest import FIXTURE_MODELS


def test_auto_threads_leave_a_core_to_the_event_loop() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert auto_intra_op_threads() == max(1, cpus - 1)
    m, onnx = load_artifact(FIXTURE_MODELS / "tiny-char-gru")
    opts = Runner(m, onnx).session.get_session_options()
    assert opts.intra_op_num_threads == auto_intra_op_threads()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (
        Runner(m, onnx, intra_op_threads=3).session.get_session_options().intra_op_num_threads == 3
    )
