"""ONNX export: parity with torch on the shape grid, padded == alone, chunked == whole
(property-based), the manifest matches the graph, and the run-folder entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from service.contract import (  # noqa: E402
    CharTokenizerSpec,
    ModelManifest,
    TrainingSummary,
    load_artifact,
)
from training.export import (  # noqa: E402
    ExportCheckError,
    build_graph,
    build_io,
    export_command,
    export_model,
    export_run,
)
from training.export.verify import (  # noqa: E402
    check_parity,
    chunked_diff,
    make_session,
    padded_diff,
    random_states,
)
from training.model import CELLS, ModelConfig, RNNModel, state_layout  # noqa: E402

V = 11
SPEC = CharTokenizerSpec(vocab=[chr(97 + i) for i in range(V)])
TOL = 1e-5


def make(task: str, cell: str, **kw: Any) -> RNNModel:
    torch.manual_seed(0)
    kw = {"num_layers": 2, "embed_dim": 6, "hidden_size": 12, **kw}
    cfg = ModelConfig(task=task, cell=cell, vocab_size=V, num_classes=3, **kw)
    return RNNModel(cfg).eval()


def session(model: RNNModel) -> tuple[Any, Any]:
    io = build_io(model.cfg)
    proto = build_graph(model, io)
    onnx.checker.check_model(proto, full_check=True)
    return make_session(proto.SerializeToString()), io


VARIANTS = (
    [("next_token", c, {}) for c in CELLS]
    + [("classify", c, {}) for c in CELLS]
    + [
        ("classify", "lstm", {"pooling": "max"}),
        ("classify", "gru", {"pooling": "mean"}),
        ("classify", "peephole_lstm", {"pooling": "last_max"}),
        ("classify", "rnn", {"pooling": "last", "bidirectional": True}),
        ("classify", "peephole_lstm", {"pooling": "max", "bidirectional": True}),
        ("next_token", "lstm", {"num_layers": 1, "tie_weights": True, "embed_dim": 12}),
    ]
)
IDS = [f"{t}-{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for t, c, kw in VARIANTS]


@pytest.mark.parametrize(("task", "cell", "kw"), VARIANTS, ids=IDS)
def test_parity_with_torch_on_the_grid(task: str, cell: str, kw: dict[str, Any]) -> None:
    """batch {1, 3, 8} x length {1, 7, 64}, random lengths per row and random incoming state."""
    model = make(task, cell, **kw)
    sess, io = session(model)
    assert check_parity(sess, model, io, np.random.default_rng(1)) <= TOL


@pytest.mark.parametrize(("task", "cell", "kw"), VARIANTS, ids=IDS)
def test_padded_batch_equals_each_row_alone(task: str, cell: str, kw: dict[str, Any]) -> None:
    model = make(task, cell, **kw)
    sess, io = session(model)
    rng = np.random.default_rng(2)
    lengths = np.array([9, 1, 4, 9, 2], dtype=np.int32)
    tokens = rng.integers(0, V, (5, 9))
    for b, n in enumerate(lengths):
        tokens[b, n:] = 0
    assert padded_diff(sess, io, tokens, lengths, random_states(model, 5, rng)) <= TOL


_SESSIONS: dict[tuple[str, str], tuple[RNNModel, Any, Any]] = {}


def _cached(task: str, cell: str) -> tuple[RNNModel, Any, Any]:
    key = (task, cell)
    if key not in _SESSIONS:
        kw = {"pooling": "last_max"} if task == "classify" else {}
        model = make(task, cell, **kw)
        _SESSIONS[key] = (model, *session(model))
    return _SESSIONS[key]


@settings(max_examples=25, deadline=None)
@given(
    task=st.sampled_from(["next_token", "classify"]),
    cell=st.sampled_from(CELLS),
    length=st.integers(1, 40),
    cuts=st.lists(st.integers(1, 39), max_size=8),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_whole(
    task: str, cell: str, length: int, cuts: list[int], seed: int
) -> None:
    """Any split of a text into chunks, fed with the state carried, equals one pass."""
    model, sess, io = _cached(task, cell)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (2, length))
    states = random_states(model, 2, rng)
    assert chunked_diff(sess, io, tokens, cuts, states, state_layout(model.cfg)) <= TOL


# -- artifacts ---------------------------------------------------------------------------------


def _graph_io(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (
        {i.name: (i.type, i.shape) for i in sess.get_inputs()},
        {o.name: (o.type, o.shape) for o in sess.get_outputs()},
    )


def check_manifest_against_graph(m: ModelManifest, onnx_path: Path) -> None:
    ins, outs = _graph_io(onnx_path)
    assert list(ins) == m.io.input_names()
    assert list(outs) == m.io.output_names()
    assert ins[m.io.tokens][0] == "tensor(int64)"
    assert ins[m.io.lengths][0] == "tensor(int32)"
    assert outs[m.io.logits][1][1] == (len(m.labels) if m.labels else _tokenizer_size(m))
    for s in m.io.states:
        for name, table in ((s.input, ins), (s.output, outs)):
            dtype, shape = table[name]
            assert dtype == "tensor(float)"
            assert [d if isinstance(d, int) else "batch" for d in shape] == s.shape


def _tokenizer_size(m: ModelManifest) -> int:
    tok = m.tokenizer
    return (
        len(tok.vocab)
        if isinstance(tok, CharTokenizerSpec)
        else len(tok.tokenizer_json["model"]["vocab"])
    )


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_export_model_writes_a_verified_artifact(tmp_path: Path, pooling: str) -> None:
    model = make("classify", "gru", pooling=pooling)
    summary = TrainingSummary(dataset="unit", metrics={"val_accuracy": 0.5})
    m = export_model(model, model.cfg, SPEC, ["a", "b", "c"], tmp_path, "unit-gru", summary)
    loaded, path = load_artifact(tmp_path)
    assert loaded == m
    check_manifest_against_graph(loaded, path)
    assert loaded.training.metrics == {"val_accuracy": 0.5}
    extra = loaded.training.model_dump()
    assert extra["model_config"] == model.cfg.to_dict()
    assert extra["parameters"] == model.num_parameters()
    assert all(v <= TOL for v in extra["export_checks"].values())


def test_a_failing_check_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make("next_token", "lstm")
    from training.export import graph, weights

    real = weights.layer_weights

    def broken(*args: Any) -> Any:  # the classic mistake: torch's gate order kept as-is
        w = real(*args)
        w.R = w.R[:, ::-1].copy()
        return w

    monkeypatch.setattr(graph, "layer_weights", broken)
    with pytest.raises(ExportCheckError, match="parity"):
        export_model(model, model.cfg, SPEC, None, tmp_path / "out", "broken")
    assert not (tmp_path / "out").exists()


def test_export_run_from_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make("next_token", "peephole_lstm", num_layers=1)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(
        {
            "model": model.state_dict(),
            "model_config": model.cfg.to_dict(),
            "config": {"train": {"lr": 0.01}},
            "labels": None,
            "tokenizer": SPEC.model_dump(mode="json"),
            "metrics": {"best_val_loss": 1.5, "note": "not a number"},
            "dataset": "tinyshakespeare",
            "git_commit": "abc123",
            "optimizer": {},
        },
        run / "checkpoint.pt",
    )
    m = export_run(run, tmp_path / "art", "unit-peephole", "7")
    assert (m.name, m.version, m.cell, m.task) == (
        "unit-peephole",
        "7",
        "peephole_lstm",
        "next_token",
    )
    assert m.training.metrics == {"best_val_loss": 1.5}
    assert m.training.git_commit == "abc123" and m.training.dataset == "tinyshakespeare"
    assert m.training.config == {"train": {"lr": 0.01}}
    raw = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [s["name"] for s in raw["io"]["states"]] == ["h", "c"]
    check_manifest_against_graph(*load_artifact(tmp_path / "art"))

    export_command(run, tmp_path / "models" / "from-cli", None, "2")  # the CLI's entry point
    cli = load_artifact(tmp_path / "models" / "from-cli")[0]
    assert (cli.name, cli.version) == ("from-cli", "2")
    assert "parity_max_abs_diff" in capsys.readouterr().out
