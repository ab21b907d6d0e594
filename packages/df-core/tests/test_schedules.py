"""Sampling schedules: endpoints, monotonicity, the SD3/Wan shift and the structure schedule.

Legend: K denoising steps; ``sigmas_K1`` has K + 1 levels from the start level down to 0.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core.schedules import flow_sigmas, shift_sigma, struct_sigmas, unshift_sigma

steps = st.integers(1, 64)
starts = st.floats(1e-3, 1.0)
shifts = st.floats(0.1, 10.0)


def close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 0.0) -> bool:
    """``torch.allclose`` with explicit tolerances (cheaper than ``assert_close`` in
    property tests that run hundreds of examples)."""
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=rtol)


def f32(value: float) -> float:
    """``value`` as float32 stores it, so exact comparisons with float32 schedules are fair."""
    return torch.tensor(value, dtype=torch.float32).item()


# --- shift_sigma / unshift_sigma -------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.05, 0.5, 1.0, 3.0, 20.0])
def test_shift_fixes_the_endpoints_and_is_increasing(shift: float) -> None:
    s = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    out = shift_sigma(s, shift)
    assert out[0].item() == 0.0
    assert out[-1].item() == pytest.approx(1.0, abs=1e-15)
    assert bool((out.diff() > 0).all())
    assert bool(((out >= 0) & (out <= 1 + 1e-15)).all())


def test_shift_matches_the_formula_on_known_values() -> None:
    # a = 3: shift(0.5) = 1.5 / 2 = 0.75, shift(0.25) = 0.75 / 1.5 = 0.5.
    s = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(shift_sigma(s, 3.0), torch.tensor([0.5, 0.75], dtype=torch.float64))


def test_shift_one_is_the_identity() -> None:
    s = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shift_sigma(s, 1.0), s)
    assert torch.equal(unshift_sigma(s, 1.0), s)


@pytest.mark.parametrize("fn", [shift_sigma, unshift_sigma])
@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_shift_functions_reject_non_positive_shift(fn, shift: float) -> None:
    with pytest.raises(ValueError, match="shift"):
        fn(torch.tensor([0.5]), shift)


# --- flow_sigmas -----------------------------------------------------------------------------


@given(num_steps=steps, sigma_start=starts, shift=shifts)
def test_flow_sigmas_invariants_and_shift_round_trip(
    num_steps: int, sigma_start: float, shift: float
) -> None:
    # Step 0: unshift inverts shift on a dense grid of [0, 1], and is the shift by 1 / a.
    grid = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)
    assert close(unshift_sigma(shift_sigma(grid, shift), shift), grid, atol=1e-12)
    assert close(shift_sigma(unshift_sigma(grid, shift), shift), grid, atol=1e-12)
    assert close(unshift_sigma(grid, shift), shift_sigma(grid, 1.0 / shift), atol=1e-12)

    # Step 1: the default float32 schedule: shape, exact endpoints, strictly decreasing.
    sigmas = flow_sigmas(num_steps, sigma_start=sigma_start, shift=shift)
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas.dtype == torch.float32
    assert sigmas[0].item() == f32(sigma_start)
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas.diff() < 0).all()), sigmas

    # Step 2: in float64 the first level is sigma_start bit for bit.
    sigmas64 = flow_sigmas(num_steps, sigma_start=sigma_start, shift=shift, dtype=torch.float64)
    assert sigmas64[0].item() == sigma_start
    assert sigmas64[-1].item() == 0.0
    assert bool((sigmas64.diff() < 0).all())

    # Step 3: the steps are uniform in the unshifted variable, so a schedule that starts below 1
    # is the tail of the full shifted curve.
    u = unshift_sigma(sigmas64, shift)
    expected_u = torch.linspace(u[0].item(), 0.0, num_steps + 1, dtype=torch.float64)
    assert close(u, expected_u, atol=1e-12, rtol=1e-9)

    # Step 4: shift 1 is the identity (a linspace), and a > 1 puts every interior level higher,
    # a < 1 lower.
    plain = flow_sigmas(num_steps, sigma_start=sigma_start, dtype=torch.float64)
    linspace = torch.linspace(sigma_start, 0.0, num_steps + 1, dtype=torch.float64)
    assert close(plain, linspace, atol=1e-12)
    if shift > 1.0 + 1e-6:
        assert bool((sigmas64[1:-1] > plain[1:-1]).all())
    elif shift < 1.0 - 1e-6:
        assert bool((sigmas64[1:-1] < plain[1:-1]).all())


@pytest.mark.parametrize("num_steps", [1, 2, 7])
def test_flow_sigmas_start_zero_is_all_zero(num_steps: int) -> None:
    sigmas = flow_sigmas(num_steps, sigma_start=0.0, shift=3.0)
    assert torch.equal(sigmas, torch.zeros(num_steps + 1))


def test_flow_sigmas_shift_above_one_spends_more_steps_at_high_noise() -> None:
    # Half of the 10 steps: the plain schedule is at 0.5, shift 3 is at 0.75.
    plain = flow_sigmas(10)
    shifted = flow_sigmas(10, shift=3.0)
    assert plain[5].item() == pytest.approx(0.5)
    assert shifted[5].item() == pytest.approx(0.75)
    assert int((shifted > 0.5).sum()) > int((plain > 0.5).sum())


def test_flow_sigmas_known_values() -> None:
    # K = 2, a = 3, start 1: u = [1, 0.5, 0] -> [1, 0.75, 0].
    sigmas = flow_sigmas(2, shift=3.0, dtype=torch.float64)
    assert sigmas.tolist() == pytest.approx([1.0, 0.75, 0.0], abs=1e-15)


def test_flow_sigmas_honours_dtype_and_device() -> None:
    sigmas = flow_sigmas(4, dtype=torch.bfloat16, device="cpu")
    assert sigmas.dtype == torch.bfloat16 and sigmas.device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": -3}, "num_steps"),
        ({"num_steps": 2.0}, "num_steps"),
        ({"num_steps": 4, "sigma_start": -0.1}, "sigma_start"),
        ({"num_steps": 4, "sigma_start": 1.5}, "sigma_start"),
        ({"num_steps": 4, "sigma_start": math.nan}, "sigma_start"),
        ({"num_steps": 4, "shift": 0.0}, "shift"),
        ({"num_steps": 4, "shift": -2.0}, "shift"),
    ],
)
def test_flow_sigmas_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    num_steps = kwargs.pop("num_steps")
    with pytest.raises(ValueError, match=argname):
        flow_sigmas(num_steps, **kwargs)


# --- struct_sigmas ---------------------------------------------------------------------------


def test_struct_sigmas_defaults_start_at_point_seven() -> None:
    sigmas = struct_sigmas(8)
    assert sigmas[0].item() == f32(0.7)
    assert sigmas[-1].item() == 0.0
    assert torch.equal(sigmas, flow_sigmas(8, sigma_start=0.7))


@given(k=st.integers(1, 16), extra=st.integers(0, 16), sigma_start=starts, shift=shifts)
def test_struct_sigmas_finish_step(k: int, extra: int, sigma_start: float, shift: float) -> None:
    num_steps = k + extra
    sigmas = struct_sigmas(num_steps, sigma_start=sigma_start, shift=shift, finish_step=k)
    assert sigmas.shape == (num_steps + 1,)
    assert sigmas[0].item() == f32(sigma_start)
    assert bool((sigmas[k:] == 0).all())
    assert bool((sigmas[:k] > 0).all())
    assert bool((sigmas.diff() <= 0).all())
    # The head is the full k-step schedule from the same start.
    head = flow_sigmas(k, sigma_start=sigma_start, shift=shift)
    assert close(sigmas[: k + 1], head, atol=1e-6)
    # No finish_step means finishing at the last step.
    default = struct_sigmas(num_steps, sigma_start=sigma_start, shift=shift)
    explicit = struct_sigmas(num_steps, sigma_start=sigma_start, shift=shift, finish_step=num_steps)
    assert torch.equal(default, explicit)
    assert bool((default[:-1] > 0).all())


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": -1}, "num_steps"),
        ({"num_steps": 4, "finish_step": 0}, "finish_step"),
        ({"num_steps": 4, "finish_step": 5}, "finish_step"),
        ({"num_steps": 4, "finish_step": -1}, "finish_step"),
        ({"num_steps": 4, "sigma_start": 1.1}, "sigma_start"),
        ({"num_steps": 4, "sigma_start": -0.5}, "sigma_start"),
        ({"num_steps": 4, "shift": 0.0}, "shift"),
    ],
)
def test_struct_sigmas_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    num_steps = kwargs.pop("num_steps")
    with pytest.raises(ValueError, match=argname):
        struct_sigmas(num_steps, **kwargs)
