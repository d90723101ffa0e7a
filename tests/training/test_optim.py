from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.config import OptimConfig  # noqa: E402
from training.optim import Schedule, build_optimizer, clip_gradients, lr_multiplier, weight_noise  # noqa: E402


def _model_with_big_grads() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Linear(8, 4)
    (m(torch.randn(16, 8)) * 100).pow(2).sum().backward()
    return m


def _norm(m: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.parameters()))


def test_clip_by_norm_bounds_the_global_norm() -> None:
    m = _model_with_big_grads()
    before = _norm(m)
    reported = clip_gradients(m.parameters(), OptimConfig(clip_norm=1.0, clip_value=0.0))
    assert reported == pytest.approx(before, rel=1e-5) and before > 10
    assert _norm(m) == pytest.approx(1.0, rel=1e-4)


def test_clip_by_value_bounds_every_element() -> None:
    m = _model_with_big_grads()
    clip_gradients(m.parameters(), OptimConfig(clip_norm=0.0, clip_value=0.5))
    assert max(float(p.grad.abs().max()) for p in m.parameters()) <= 0.5


def test_clip_by_both() -> None:
    m = _model_with_big_grads()
    clip_gradients(m.parameters(), OptimConfig(clip_norm=0.3, clip_value=0.5))
    assert max(float(p.grad.abs().max()) for p in m.parameters()) <= 0.5
    assert _norm(m) <= 0.3 + 1e-5


def test_no_clipping_leaves_gradients() -> None:
    m = _model_with_big_grads()
    before = [p.grad.clone() for p in m.parameters()]
    clip_gradients(m.parameters(), OptimConfig(clip_norm=0.0, clip_value=0.0))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, m.parameters(), strict=True))


def test_warmup_then_cosine() -> None:
    oc = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, oc, 110) == pytest.approx(0.1)
    assert lr_multiplier(9, oc, 110) == pytest.approx(1.0)
    assert lr_multiplier(60, oc, 110) == pytest.approx(0.55)
    assert lr_multiplier(110, oc, 110) == pytest.approx(0.1)
    assert lr_multiplier(50, OptimConfig(schedule="constant", warmup_steps=0), 100) == 1.0


def test_plateau_halves_after_patience() -> None:
    m = torch.nn.Linear(2, 2)
    oc = OptimConfig(
        schedule="plateau", lr=1.0, warmup_steps=0, plateau_patience=1, plateau_factor=0.5
    )
    s = Schedule(build_optimizer(m, oc), oc, 100, "min")
    for v in (1.0, 0.9, 0.95, 0.95):  # two evaluations without improvement > patience 1
        s.on_eval(v)
    assert s.lr() == pytest.approx(0.5)
    s2 = Schedule(build_optimizer(m, oc), oc, 100, "min")
    s2.load_state_dict(s.state_dict())
    assert s2.lr() == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["adamw", "adam", "rmsprop"])
def test_optimizers_build(name: str) -> None:
    opt = build_optimizer(torch.nn.LSTM(3, 4), OptimConfig(name=name))  # type: ignore[arg-type]
    assert type(opt).__name__.lower() == name


def test_weight_noise_is_applied_then_removed() -> None:
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 4)
    clean = m.weight.detach().clone()
    with weight_noise(m, 0.1):
        noisy = m.weight.detach().clone()
    assert not torch.equal(noisy, clean)
    assert float((noisy - clean).std()) == pytest.approx(0.1, rel=0.5)
    assert torch.equal(m.weight, clean)
    with weight_noise(m, 0.0):
        assert torch.equal(m.weight, clean)
