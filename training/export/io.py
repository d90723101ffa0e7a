"""The graph's tensor names, derived once from the model config.

`build_io(cfg)` is the single source of every tensor name: the graph builder reads the names from
the `IOSpec` it returns, and the manifest stores that same object. State names come from
`training.model.state_layout`, which also defines the torch model's state tuple.
"""

from __future__ import annotations

from service.contract.manifest import BATCH, IOSpec, StateTensor
from training.model import ModelConfig, state_layout


def build_io(cfg: ModelConfig) -> IOSpec:
    states = [
        StateTensor(
            name=slot.name,
            input=f"{slot.name}_in",
            output=f"{slot.name}_out",
            shape=[BATCH if d is None else d for d in slot.dims],
            batch_axis=slot.batch_axis,
            init=slot.init,
        )
        for slot in state_layout(cfg)
    ]
    return IOSpec(states=states)
