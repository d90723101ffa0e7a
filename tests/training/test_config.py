from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (
    CONFIG_DIR,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_value,
    to_toml,
)


def test_every_committed_config_parses() -> None:
    paths = sorted(CONFIG_DIR.glob("*.toml"))
    assert {p.stem for p in paths} >= {"sentiment-lstm", "sentiment-gru", "char-lstm", "char-gru"}
    for p in paths:
        cfg = load_config(p)
        assert cfg.name == p.stem


def test_shipped_sentiment_models_are_unidirectional() -> None:
    for name in ("sentiment-lstm", "sentiment-gru"):
        assert load_config(name).model.bidirectional is False


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'model\.hiden_size'"):
        load_config("char-lstm", ["model.hiden_size=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'colour'"):
        config_from_dict({"colour": "red"})


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.hidden_size=big", "model.hidden_size"),
        ("model.hidden_size=1.5", "model.hidden_size"),
        ("model.hidden_size=true", "model.hidden_size"),
        ("optim.lr=fast", "optim.lr"),
        ("model.cell=transformer", "model.cell"),
        ("train.amp=1", "train.amp"),
        ("optim.betas=[0.9, 'x']", "optim.betas[1]"),
    ],
)
def test_wrong_type_is_named(override: str, key: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"'{key.replace('.', '.').replace('[', '.').replace(']', '.')}'"
    ):
        load_config("char-lstm", [override])


def test_a_table_where_a_value_belongs() -> None:
    with pytest.raises(ConfigError, match="'model'"):
        config_from_dict({"model": 3})


def test_overrides_parse_toml_values_and_nest() -> None:
    cfg = load_config(
        "char-lstm",
        ["model.hidden_size=64", "--optim.lr=1e-3", "train.amp=false", "model.cell=gru", "name=x"],
    )
    assert (cfg.model.hidden_size, cfg.optim.lr, cfg.train.amp, cfg.model.cell, cfg.name) == (
        64,
        1e-3,
        False,
        "gru",
        "x",
    )
    assert parse_value("[1, 2]") == [1, 2] and parse_value("lstm") == "lstm"
    assert isinstance(load_config("char-lstm", ["optim.lr=1"]).optim.lr, float)  # int -> float ok
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["model.hidden_size"])


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="bidirectional"):
        load_config("char-lstm", ["model.bidirectional=true"])
    with pytest.raises(ConfigError, match=r"data\.dataset"):
        load_config("sentiment-lstm", ["data.dataset=text"])


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = load_config("sentiment-gru", ['name=with "quotes"'])
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg.to_dict()))
    assert load_config(p) == cfg
