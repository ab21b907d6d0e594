"""Tests of df_train.weighting: fixed weights add in order, learned weights find the log of
fixed losses."""

from __future__ import annotations

import math

import pytest
import torch

from df_train.weighting import UncertaintyWeighting, weighted_sum


def test_uncertainty_weighting_finds_log_of_fixed_losses():
    losses = {"video": torch.tensor(4.0), "struct": torch.tensor(0.25), "lip": torch.tensor(1.5)}
    uw = UncertaintyWeighting(["video", "struct", "lip", "aux"])
    total, w = uw(losses)
    assert total.item() == pytest.approx(sum(v.item() for v in losses.values()))  # s = 0
    assert set(w) == set(losses)

    opt = torch.optim.Adam(uw.parameters(), lr=0.05)
    for _ in range(600):
        total, _ = uw(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
    for i, name in enumerate(uw.names):
        if name in losses:  # exp(-s) L = 1 at the optimum
            assert uw.log_vars[i].item() == pytest.approx(math.log(losses[name].item()), abs=0.02)
        else:  # an absent term gets no gradient and stays at its initial value
            assert uw.log_vars[i].item() == 0.0

    total, w = uw(losses)
    assert total.item() == pytest.approx(
        3 + sum(math.log(v.item()) for v in losses.values()), abs=0.05
    )
    assert w["video"].item() == pytest.approx(0.25, rel=0.05)


def test_uncertainty_weighting_gradient_and_clamp():
    uw = UncertaintyWeighting(["a", "b"], min_log_var=-1.0)
    la = torch.tensor(2.0, requires_grad=True)
    total, _ = uw({"a": la, "b": torch.tensor(0.5)})
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - L at s = 0; d/dL = exp(-s) = 1
    assert uw.log_vars.grad.tolist() == pytest.approx([1 - 2.0, 1 - 0.5])
    assert la.grad.item() == pytest.approx(1.0)

    with torch.no_grad():
        uw.log_vars.fill_(-5.0)
    uw.zero_grad()
    total, w = uw({"a": torch.tensor(0.01)})
    total.backward()
    assert w["a"].item() == pytest.approx(math.e)  # clamped at s = -1
    assert uw.log_vars.grad[0].item() == 0.0
    with pytest.raises(ValueError):
        uw({"c": torch.tensor(1.0)})
    with pytest.raises(ValueError):
        UncertaintyWeighting(["a", "a"])


def test_weighted_sum():
    losses = {"video": torch.tensor(2.0), "lip": torch.tensor(3.0)}
    assert weighted_sum(losses, {"video": 1.0, "lip": 0.1, "aux": 5.0}).item() == pytest.approx(2.3)
    with pytest.raises(ValueError, match="lip"):
        weighted_sum(losses, {"video": 1.0})


def test_weighted_sum_adds_left_to_right_from_start():
    """In float32 ``(1e8 + -1e8) + 1 = 1`` but ``1e8 + (-1e8 + 1) = 0``: the order is part of
    the result, and ``start`` continues a total instead of adding a separate sum to it."""
    big, minus, one = torch.tensor(1e8), torch.tensor(-1e8), torch.tensor(1.0)
    ones = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert weighted_sum({"a": big, "b": minus, "c": one}, ones).item() == 1.0
    assert weighted_sum({"b": minus, "c": one}, ones, start=big).item() == 1.0
    assert (big + weighted_sum({"b": minus, "c": one}, ones)).item() == 0.0
