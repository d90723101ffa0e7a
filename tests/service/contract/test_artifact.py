from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.contract import (
    ArtifactError,
    CharTokenizerSpec,
    IOSpec,
    ModelManifest,
    StateTensor,
    load_artifact,
    save_artifact,
)


def _manifest(**over: object) -> ModelManifest:
    fields: dict[str, object] = {
        "name": "toy",
        "task": "next_token",
        "cell": "lstm",
        "num_layers": 2,
        "hidden_size": 4,
        "tokenizer": CharTokenizerSpec(vocab=list("ab")),
        "io": IOSpec(
            states=[
                StateTensor(
                    name="h", input="h_in", output="h_out", shape=[2, "batch", 4], batch_axis=1
                ),
                StateTensor(
                    name="c", input="c_in", output="c_out", shape=[2, "batch", 4], batch_axis=1
                ),
            ]
        ),
        "onnx_sha256": "0" * 64,
    }
    fields.update(over)
    return ModelManifest.model_validate(fields)


def test_roundtrip_sets_checksum(tmp_path: Path) -> None:
    saved = save_artifact(tmp_path, b"graph-bytes", _manifest())
    manifest, onnx_path = load_artifact(tmp_path)
    assert manifest == saved
    assert onnx_path.read_bytes() == b"graph-bytes"
    assert manifest.onnx_sha256 != "0" * 64


def test_swapped_graph_is_refused(tmp_path: Path) -> None:
    save_artifact(tmp_path, b"graph-bytes", _manifest())
    (tmp_path / "model.onnx").write_bytes(b"other")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    save_artifact(tmp_path, b"x", _manifest())
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        load_artifact(tmp_path)


def test_missing_and_garbled_manifests(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_artifact(tmp_path)


def test_state_shapes_and_init() -> None:
    m = _manifest()
    h, _c = m.init_states(3)
    assert h.shape == (2, 3, 4) and h.dtype == np.float32 and not h.any()
    assert m.state_nbytes_per_row() == 2 * 2 * 4 * 4
    pool = StateTensor(
        name="m", input="m_in", output="m_out", shape=["batch", 4], batch_axis=0, init=float("-inf")
    )
    assert np.isneginf(pool.zeros(2)).all()


def test_invalid_manifests_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="labels"):
        _manifest(task="classify")
    with pytest.raises(ValidationError, match="batch"):
        StateTensor(name="h", input="a", output="b", shape=[1, 2], batch_axis=1)
    with pytest.raises(ValidationError, match="unique"):
        IOSpec(
            states=[
                StateTensor(name="h", input="tokens", output="h_out", shape=["batch"], batch_axis=0)
            ]
        )
