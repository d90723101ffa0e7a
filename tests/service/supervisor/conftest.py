from __future__ import annotations

from typing import Any

from tests.conftest import LONG

# how the supervisor tests run a server: JSON logs (they read them), a short drain, and long
# generations allowed
CLUSTER: dict[str, Any] = {
    "log_json": True,
    "shutdown_timeout_s": "5",
    "max_tokens_limit": str(LONG),
}
