"""What the supervisor and the processes it runs say to each other: the messages on the engine
process's control pipe, the signal that tells an API worker the engine died, and the kernel
names that tell the processes apart."""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import dataclass

# what the supervisor sends each API worker when the engine process died (`RemoteClient.engine_gone`)
ENGINE_GONE_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Ready:
    """Engine -> supervisor: serving, with these models."""

    models: list[str]


@dataclass(frozen=True)
class Forget:
    """Supervisor -> engine: the worker with this pid died; cancel its calls, free its slots."""

    pid: int


@dataclass(frozen=True)
class Stop:
    """Supervisor -> engine: the workers have drained; close."""


def name_process(name: str) -> None:
    """Set the kernel's name of this process (`ps -o comm`, `top`, /proc/PID/comm; 15 bytes), so
    an operator and `bench/workers.py` can tell the engine from the workers."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME
