"""Fine-tuning (`train.init_from`): a run starts from another run's best weights and tokenizer,
on other data; a different architecture or label set is refused with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training import checkpoint as ck  # noqa: E402
from training.config import load_config  # noqa: E402
from training.experiment import train  # noqa: E402

SST2 = [
    "data.dataset='sst2'",
    "data.path='sst2/train.jsonl.gz'",
    "data.val_path='sst2/dev.jsonl.gz'",
    "data.limit=300",
]


@pytest.fixture(scope="module")
def imdb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("imdb") / "run"
    train(load_config("smoke-sentiment", ["train.epochs=1"]), run)
    return run


def test_fine_tuning_starts_from_the_runs_weights_and_tokenizer(
    imdb_run: Path, tmp_path: Path
) -> None:
    # lr = 0: nothing moves, so the fine-tuned run's best weights are exactly the ones it loaded
    cfg = load_config(
        "smoke-sentiment",
        [*SST2, f"train.init_from='{imdb_run}'", "optim.lr=0", "train.max_steps=2"],
    )
    train(cfg, tmp_path / "sst2")
    base, tuned = ck.load(imdb_run), ck.load(tmp_path / "sst2")
    assert tuned["tokenizer"] == base["tokenizer"]  # IMDB's vocabulary, not one built on SST-2
    assert tuned["model"].keys() == base["model"].keys()
    for k, w in base["model"].items():
        assert torch.equal(tuned["model"][k], w), k
    assert tuned["config"]["train"]["init_from"] == str(imdb_run)


def test_fine_tuning_learns_from_there(imdb_run: Path, tmp_path: Path) -> None:
    cfg = load_config("smoke-sentiment", [*SST2, f"train.init_from='{imdb_run}'"])
    train(cfg, tmp_path / "sst2")
    base, tuned = ck.load(imdb_run), ck.load(tmp_path / "sst2")
    assert any(not torch.equal(tuned["model"][k], w) for k, w in base["model"].items())


def test_another_architecture_is_refused_naming_the_field(imdb_run: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "smoke-sentiment", [*SST2, f"train.init_from='{imdb_run}'", "model.hidden_size=8"]
    )
    with pytest.raises(ValueError, match="hidden_size: 16 there, 8 here"):
        train(cfg, tmp_path / "bad")
