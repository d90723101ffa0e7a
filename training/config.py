"""Experiment configuration: one dataclass tree, parsed from a TOML file plus `key=value` overrides.

    cfg = load_config("training/configs/char-lstm.toml", ["model.hidden_size=256", "seed=3"])

Every key is checked against the dataclass: an unknown key or a value of the wrong type raises
`ConfigError` naming the full dotted key, so a typo never silently trains the default. The whole
tree (`cfg.to_dict()`) is saved inside the checkpoint and as `config.toml` in the run folder.

This module imports no torch (the CLI parses configs before deciding to import it).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_DATA_ROOT = (REPO_ROOT / ".." / "shared" / "datasets").resolve()


class ConfigError(ValueError):
    """A config key that does not exist, or a value of the wrong type (the message names the key)."""


@dataclass
class DataConfig:
    # imdb | sst2 | table (any CSV/TSV/JSONL) | text (plain text for the LM)
    dataset: Literal["imdb", "sst2", "table", "text"] = "text"
    path: str = "tinyshakespeare/input.txt"  # relative paths resolve against `root`
    val_path: str = ""  # an explicit validation file; "" = split `path` by `val_fraction`
    root: str = ""  # "" = ../shared/datasets next to the repository
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: float = 0.1
    split_seed: int = 0  # the train/val split has its own seed: runs with other seeds compare
    limit: int = 0  # keep only the first N examples / characters (0 = all); smoke tests use it
    # classification
    max_len: int = 400  # tokens per example after truncation
    keep: Literal["end", "start"] = "end"  # which part of a long example survives truncation
    vocab_size: int = 20000  # word vocabulary cap, [PAD] and [UNK] included
    min_freq: int = 2
    # language model
    char_unk: bool = False  # add an unk entry for unseen characters (default: unseen = error)


@dataclass
class ModelSection:
    """The architecture knobs; vocab_size / num_classes / pad_id / task come from the data."""

    cell: Literal["lstm", "gru", "rnn", "peephole_lstm"] = "lstm"
    embed_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers and before the head
    embed_dropout: float = 0.0
    bidirectional: bool = False  # classification only; a streaming session needs False
    pooling: Literal["last", "max", "mean", "last_max"] = "last"
    forget_bias: float = 0.0  # LSTM cells only: initial forget-gate bias (1.0 helps early training)


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "rmsprop"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    alpha: float = 0.95  # RMSProp smoothing
    momentum: float = 0.0  # RMSProp momentum
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    plateau_factor: float = 0.5
    plateau_patience: int = 1  # evaluations without improvement before the LR drops
    clip_norm: float = 1.0  # 0 = off; clip the global L2 norm of all gradients
    clip_value: float = 0.0  # 0 = off; clamp every gradient element to [-v, v]
    weight_noise: float = 0.0  # std of Gaussian noise added to weights for each step (0 = off)


@dataclass
class TrainConfig:
    batch_size: int = 64
    seq_len: int = 128  # LM: truncated-BPTT window
    epochs: int = 10
    max_steps: int = 0  # 0 = epochs * steps_per_epoch; otherwise the schedule length
    max_minutes: float = 0.0  # wall-clock budget (0 = none); stops early, schedule unchanged
    eval_every: int = 0  # steps between evaluations (0 = once per epoch)
    eval_batch_size: int = 128
    patience: int = 0  # early stopping: evaluations without improvement (0 = off)
    log_every: int = 20
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    num_threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    progress: Literal["auto", "on", "off"] = "auto"  # auto = only on a TTY and outside CI
    # fine-tuning: a run folder whose checkpoint.pt gives the starting weights and the tokenizer
    # (same architecture and labels); "" = train from scratch
    init_from: str = ""


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    task: Literal["classify", "next_token"] = "next_token"
    seed: int = 1337
    out_dir: str = ""  # "" = runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_root(self) -> Path:
        return Path(self.data.root).expanduser() if self.data.root else DEFAULT_DATA_ROOT

    def resolve(self, path: str) -> Path:
        """A data path from the config: absolute, or relative to the data root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.data_root() / p

    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else REPO_ROOT / "runs" / self.name


# ---------------------------------------------------------------------------------------------
# Parsing with type checks
# ---------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (inner,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r} (known in {where}: {', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r}: expected a table, got {value!r}")
            kwargs[name] = _build(tp, value, key + ".")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """An override's value as TOML (`3`, `1e-3`, `true`, `[0.9, 0.99]`, `"x"`), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (`model.hidden_size=256`, a leading `--` is allowed) in a nested dict."""
    for item in overrides:
        body = item[2:] if item.startswith("--") else item
        if "=" not in body:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = body.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {p!r} is not a table (override {item!r})")
            node = child
        node[parts[-1]] = parse_value(text.strip())
    return raw


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    cfg: ExperimentConfig = _build(ExperimentConfig, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks a type cannot express."""
    if cfg.task == "next_token" and cfg.data.dataset != "text":
        raise ConfigError("config key 'data.dataset': a next_token task needs dataset = 'text'")
    if cfg.task == "classify" and cfg.data.dataset == "text":
        raise ConfigError("config key 'data.dataset': a classify task needs labelled data")
    if cfg.model.bidirectional and cfg.task == "next_token":
        raise ConfigError(
            "config key 'model.bidirectional': only classification can be bidirectional"
        )
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError("config key 'data.val_fraction': must be in [0, 1)")
    if len(cfg.optim.betas) != 2:
        raise ConfigError("config key 'optim.betas': expected two numbers")
    for key, v in (
        ("train.batch_size", cfg.train.batch_size),
        ("train.seq_len", cfg.train.seq_len),
    ):
        if v < 1:
            raise ConfigError(f"config key {key!r}: must be >= 1")


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Parse a TOML config (a bare name like `char-lstm` is looked up in training/configs/)."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{p.name}.toml").exists():
        p = CONFIG_DIR / f"{p.name}.toml"
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return config_from_dict(apply_overrides(raw, list(overrides or [])))


def to_toml(data: dict[str, Any]) -> str:
    """Write the (flat-tables-only) config tree back as TOML, for `RUN_DIR/config.toml`."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = [f"{k} = {fmt(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]", *(f"{kk} = {fmt(vv)}" for kk, vv in v.items())]
    return "\n".join(lines) + "\n"
