"""Diffusion Forcing training noise: determinism, shapes, bounds, distributions, temporal
structure and the clean-context prefix.

Legend: B batch, T frames. Statistical checks use large samples and a tolerance of
``Z`` standard errors, so a correct implementation fails them with negligible probability and
the seeds are fixed anyway.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core.noise import (
    DISTRIBUTIONS,
    TEMPORAL,
    clean_prefix_lengths,
    sample_base_sigmas,
    sample_dual_sigmas,
    sample_frame_sigmas,
)
from df_core.schedules import shift_sigma

Z = 4.0  # standard errors of tolerance for the statistical checks
N = 200_000  # values per statistical check
F32_EPS = 1e-6  # slack for float32 rounding of sigma_max


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def proportion_tol(p: float, n: int) -> float:
    return Z * math.sqrt(p * (1 - p) / n)


def leading_zeros(sigma_BT: torch.Tensor) -> torch.Tensor:
    """``[B]``: how many frames at the start of each row are exactly 0."""
    return (sigma_BT == 0).long().cumprod(dim=1).sum(dim=1)


# --- determinism and shapes ------------------------------------------------------------------


CALLS = {
    "base": lambda g: sample_base_sigmas((4, 8), generator=g),
    "base_logit_normal": lambda g: sample_base_sigmas(
        (4, 8), generator=g, distribution="logit_normal"
    ),
    "prefix": lambda g: clean_prefix_lengths(64, 10, generator=g, prob=0.5),
    "frame": lambda g: sample_frame_sigmas(4, 8, generator=g, tail_prob=0.2),
    "frame_pyramid": lambda g: sample_frame_sigmas(4, 8, generator=g, temporal="pyramid"),
    "dual": lambda g: torch.stack(sample_dual_sigmas(4, 8, generator=g, clean_prefix_prob=0.5)),
}


@pytest.mark.parametrize("name", CALLS)
def test_same_seed_same_draw_different_seed_different_draw(name: str) -> None:
    call = CALLS[name]
    a, b, c = call(gen(1)), call(gen(1)), call(gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@given(
    batch=st.integers(1, 4),
    frames=st.integers(1, 6),
    distribution=st.sampled_from(DISTRIBUTIONS),
    temporal=st.sampled_from(TEMPORAL),
    shift=st.floats(0.2, 5.0),
    sigma_max=st.floats(0.0, 1.0),
    prefix_prob=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_shape_dtype_and_bounds_without_tail(
    batch: int,
    frames: int,
    distribution: str,
    temporal: str,
    shift: float,
    sigma_max: float,
    prefix_prob: float,
    seed: int,
) -> None:
    g = gen(seed)
    prefix_B = clean_prefix_lengths(batch, frames, generator=g, prob=prefix_prob)
    assert prefix_B.shape == (batch,) and prefix_B.dtype == torch.int64
    assert bool(((prefix_B >= 0) & (prefix_B <= max(frames - 1, 0))).all())
    sigma_BT = sample_frame_sigmas(
        batch,
        frames,
        generator=g,
        distribution=distribution,
        temporal=temporal,
        shift=shift,
        sigma_max=sigma_max,
        prefix_B=prefix_B,
    )
    assert sigma_BT.shape == (batch, frames) and sigma_BT.dtype == torch.float32
    assert bool(((sigma_BT >= 0) & (sigma_BT <= sigma_max + F32_EPS)).all())
    is_ctx_BT = torch.arange(frames)[None, :] < prefix_B[:, None]
    assert bool((sigma_BT[is_ctx_BT] == 0).all())
    if temporal != "independent":
        # Sorted rows and pyramid ramps are non-decreasing in time, a clean prefix included.
        assert bool((sigma_BT.diff(dim=1) >= -F32_EPS).all()), sigma_BT


def test_sample_base_sigmas_keeps_any_shape() -> None:
    assert sample_base_sigmas((2, 3, 4), generator=gen()).shape == (2, 3, 4)
    assert sample_base_sigmas((5,), generator=gen(), distribution="logit_normal").shape == (5,)


# --- distributions ---------------------------------------------------------------------------


@pytest.mark.parametrize("sigma_max", [1.0, 0.7, 0.3])
def test_uniform_mean_and_variance(sigma_max: float) -> None:
    x = sample_frame_sigmas(1000, N // 1000, generator=gen(3), sigma_max=sigma_max).double()
    std = sigma_max / math.sqrt(12)
    assert x.mean().item() == pytest.approx(sigma_max / 2, abs=Z * std / math.sqrt(N))
    assert x.std().item() == pytest.approx(std, rel=0.01)
    assert x.max().item() <= sigma_max + F32_EPS


@pytest.mark.parametrize("sigma_max", [1.0, 0.7])
def test_logit_normal_mean(sigma_max: float) -> None:
    x = sample_frame_sigmas(
        1000, N // 1000, generator=gen(4), distribution="logit_normal", sigma_max=sigma_max
    ).double()
    # sigmoid(N(0, 1)) is symmetric about 0.5 with standard deviation about 0.208.
    assert x.mean().item() == pytest.approx(sigma_max / 2, abs=Z * 0.21 * sigma_max / math.sqrt(N))
    # Less spread than uniform: the logit-normal concentrates mid-range.
    assert x.std().item() < sigma_max / math.sqrt(12)
    assert x.std().item() == pytest.approx(0.208 * sigma_max, rel=0.02)


def test_logit_normal_loc_and_scale() -> None:
    x = sample_base_sigmas((N,), generator=gen(5), distribution="logit_normal", loc=1.0, scale=0.5)
    logit = torch.logit(x.double())
    assert logit.mean().item() == pytest.approx(1.0, abs=Z * 0.5 / math.sqrt(N))
    assert logit.std().item() == pytest.approx(0.5, rel=0.01)


def test_shift_moves_the_mean_to_the_analytic_value() -> None:
    # E[a u / (1 + (a - 1) u)] for u ~ U(0, 1) is a / b * (1 - ln(1 + b) / b) with b = a - 1.
    a, b = 3.0, 2.0
    mean = a / b * (1 - math.log(1 + b) / b)
    x = sample_frame_sigmas(1000, N // 1000, generator=gen(6), shift=a).double()
    assert x.mean().item() == pytest.approx(mean, abs=Z * 0.3 / math.sqrt(N))
    assert x.mean().item() > 0.5 + 0.1


@pytest.mark.parametrize(("sigma_max", "tail_prob"), [(0.6, 0.25), (0.7, 0.05), (0.0, 0.5)])
def test_tail_fraction_and_range(sigma_max: float, tail_prob: float) -> None:
    x = sample_frame_sigmas(
        1000, N // 1000, generator=gen(7), sigma_max=sigma_max, tail_prob=tail_prob
    ).double()
    above = x > sigma_max + F32_EPS
    frac = above.double().mean().item()
    assert frac == pytest.approx(tail_prob, abs=proportion_tol(tail_prob, N))
    tail = x[above]
    assert tail.max().item() <= 1.0
    # The tail is uniform on [sigma_max, 1].
    n_tail = tail.numel()
    width = 1.0 - sigma_max
    assert tail.mean().item() == pytest.approx(
        sigma_max + width / 2, abs=Z * width / math.sqrt(12 * n_tail)
    )


def test_tail_prob_one_puts_every_frame_in_the_tail() -> None:
    x = sample_frame_sigmas(8, 16, generator=gen(8), sigma_max=0.5, tail_prob=1.0)
    assert bool(((x >= 0.5) & (x <= 1.0)).all())


# --- temporal structure ----------------------------------------------------------------------


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize(("shift", "sigma_max"), [(1.0, 1.0), (3.0, 0.7)])
def test_sorted_rows_are_the_sorted_independent_draw(
    distribution: str, shift: float, sigma_max: float
) -> None:
    kwargs = dict(distribution=distribution, shift=shift, sigma_max=sigma_max)
    sorted_BT = sample_frame_sigmas(64, 12, generator=gen(19), temporal="sorted", **kwargs)
    indep_BT = sample_frame_sigmas(64, 12, generator=gen(19), **kwargs)
    assert bool((sorted_BT.diff(dim=1) >= 0).all())
    assert not bool((indep_BT.diff(dim=1) >= 0).all())
    # Sorting only reorders each clip's independent draw.
    assert torch.equal(sorted_BT, indep_BT.sort(dim=1).values)


def test_sorted_with_clean_prefix_stays_non_decreasing() -> None:
    prefix_B = clean_prefix_lengths(64, 8, generator=gen(9), prob=0.7)
    x = sample_frame_sigmas(64, 8, generator=gen(9), temporal="sorted", prefix_B=prefix_B)
    assert bool((x.diff(dim=1) >= 0).all())


@pytest.mark.parametrize("sigma_max", [1.0, 0.8, 0.5])
@pytest.mark.parametrize("slope", [0.1, 0.37])
def test_pyramid_rows_are_clamped_linear_ramps(sigma_max: float, slope: float) -> None:
    B, T = 256, 12
    x = sample_frame_sigmas(
        B, T, generator=gen(10), temporal="pyramid", pyramid_slope=slope, sigma_max=sigma_max
    ).double()
    step = slope * sigma_max
    t_T = torch.arange(T, dtype=torch.float64)
    assert bool((x.diff(dim=1) >= -1e-7).all())
    interior_BT = (x > 1e-6) & (x < sigma_max - 1e-6)
    rows_checked = 0
    for row, interior in zip(x, interior_BT, strict=True):
        if not bool(interior.any()):
            continue
        # Any unclamped frame fixes the ramp; every frame is then clamp(ramp, 0, sigma_max).
        t0 = int(interior.nonzero()[0])
        ramp = row[t0] + step * (t_T - t0)
        torch.testing.assert_close(row, ramp.clamp(0.0, sigma_max), atol=1e-5, rtol=0)
        rows_checked += 1
    assert rows_checked > B // 2
    # Both clamps are reached somewhere.
    assert bool((x == 0).any()) and bool((x >= sigma_max - 1e-6).any())


def test_pyramid_zero_slope_gives_constant_rows() -> None:
    x = sample_frame_sigmas(32, 6, generator=gen(11), temporal="pyramid", pyramid_slope=0.0)
    assert torch.equal(x, x[:, :1].expand_as(x))
    assert x[:, 0].unique().numel() == 32


def test_pyramid_with_shift_is_the_shifted_ramp() -> None:
    x = sample_frame_sigmas(
        64, 10, generator=gen(12), temporal="pyramid", pyramid_slope=0.2, shift=3.0
    ).double()
    unshifted = x / (3.0 - 2.0 * x)  # unshift_sigma by hand
    d = unshifted.diff(dim=1)
    inner = (unshifted[:, 1:] < 1 - 1e-6) & (unshifted[:, :-1] > 1e-6)
    assert bool(inner.any())
    torch.testing.assert_close(d[inner], torch.full_like(d[inner], 0.2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x, shift_sigma(unshifted, 3.0))


# --- clean-context prefix --------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "prob"), [(6, 0.3), (2, 0.8), (10, 1.0)])
def test_clean_prefix_lengths_distribution(frames: int, prob: float) -> None:
    prefix = clean_prefix_lengths(N, frames, generator=gen(13), prob=prob)
    zero_frac = (prefix == 0).double().mean().item()
    assert zero_frac == pytest.approx(1 - prob, abs=proportion_tol(1 - prob, N) + 1e-12)
    nonzero = prefix[prefix > 0]
    assert int(nonzero.min()) >= 1 and int(nonzero.max()) <= frames - 1
    # Uniform on [1, frames - 1].
    counts = torch.bincount(nonzero, minlength=frames)[1:].double() / N
    p_each = prob / (frames - 1)
    assert bool(((counts - p_each).abs() <= proportion_tol(p_each, N)).all()), counts


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_clean_prefix_single_frame_is_never_context(prob: float) -> None:
    assert torch.equal(
        clean_prefix_lengths(50, 1, generator=gen(), prob=prob), torch.zeros(50).long()
    )


def test_clean_prefix_prob_zero_gives_no_context() -> None:
    assert int(clean_prefix_lengths(1000, 8, generator=gen(), prob=0.0).max()) == 0


@given(
    batch=st.integers(1, 4),
    frames=st.integers(1, 8),
    temporal=st.sampled_from(TEMPORAL),
    sigma_ctx=st.sampled_from([0.0, 0.05, 0.3]),
    tail_prob=st.sampled_from([0.0, 0.4]),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_prefix_frames_are_context_and_the_rest_are_untouched(
    batch: int,
    frames: int,
    temporal: str,
    sigma_ctx: float,
    tail_prob: float,
    data: st.DataObject,
    seed: int,
) -> None:
    prefix = data.draw(st.lists(st.integers(0, frames), min_size=batch, max_size=batch))
    prefix_B = torch.tensor(prefix, dtype=torch.long)
    kwargs = dict(temporal=temporal, tail_prob=tail_prob, sigma_max=0.8)
    with_ctx = sample_frame_sigmas(
        batch, frames, generator=gen(seed), prefix_B=prefix_B, sigma_ctx=sigma_ctx, **kwargs
    )
    without = sample_frame_sigmas(batch, frames, generator=gen(seed), **kwargs)
    is_ctx_BT = torch.arange(frames)[None, :] < prefix_B[:, None]
    assert torch.equal(with_ctx[~is_ctx_BT], without[~is_ctx_BT])
    ctx = with_ctx[is_ctx_BT]
    if sigma_ctx == 0.0:
        assert bool((ctx == 0).all())
    else:
        assert bool(((ctx >= 0) & (ctx <= sigma_ctx + F32_EPS)).all())


def test_sigma_ctx_is_uniform_on_its_range() -> None:
    B, T = 1000, N // 1000
    prefix_B = torch.full((B,), T - 1)
    x = sample_frame_sigmas(B, T, generator=gen(14), prefix_B=prefix_B, sigma_ctx=0.1).double()
    ctx = x[:, :-1]
    assert ctx.mean().item() == pytest.approx(0.05, abs=Z * 0.1 / math.sqrt(12 * ctx.numel()))
    assert ctx.max().item() <= 0.1 + F32_EPS


# --- sample_dual_sigmas ----------------------------------------------------------------------


def test_dual_shares_one_prefix_between_video_and_struct() -> None:
    v, s = sample_dual_sigmas(256, 8, generator=gen(15), clean_prefix_prob=1.0)
    prefix_v, prefix_s = leading_zeros(v), leading_zeros(s)
    assert torch.equal(prefix_v, prefix_s)
    assert int(prefix_v.min()) >= 1 and int(prefix_v.max()) <= 7
    assert prefix_v.unique().numel() == 7


def test_dual_prefix_probability() -> None:
    B = 20_000
    v, _ = sample_dual_sigmas(B, 6, generator=gen(16), clean_prefix_prob=0.4)
    frac = (v[:, 0] == 0).double().mean().item()
    assert frac == pytest.approx(0.4, abs=proportion_tol(0.4, B))


@pytest.mark.parametrize("temporal", TEMPORAL)
def test_dual_struct_stays_below_sigma_s_max_without_tail(temporal: str) -> None:
    v, s = sample_dual_sigmas(
        64, 16, generator=gen(17), sigma_s_max=0.6, temporal=temporal, clean_prefix_prob=0.5
    )
    assert v.shape == s.shape == (64, 16)
    assert bool(((s >= 0) & (s <= 0.6 + F32_EPS)).all())
    assert bool(((v >= 0) & (v <= 1)).all())
    assert v.max().item() > 0.9  # video uses the full range


def test_dual_struct_tail_and_means() -> None:
    B, T = 1000, N // 1000
    v, s = sample_dual_sigmas(B, T, generator=gen(18), sigma_s_max=0.7, struct_tail_prob=0.2)
    v, s = v.double(), s.double()
    assert v.mean().item() == pytest.approx(0.5, abs=Z * 0.29 / math.sqrt(N))
    frac = (s > 0.7 + F32_EPS).double().mean().item()
    assert frac == pytest.approx(0.2, abs=proportion_tol(0.2, N))
    # 0.8 * U(0, 0.7) + 0.2 * U(0.7, 1): mean 0.8 * 0.35 + 0.2 * 0.85.
    assert s.mean().item() == pytest.approx(0.8 * 0.35 + 0.2 * 0.85, abs=Z * 0.3 / math.sqrt(N))


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"sigma_max": 1.5}, "sigma_max"),
        ({"sigma_max": -0.1}, "sigma_max"),
        ({"tail_prob": -0.1}, "tail_prob"),
        ({"tail_prob": 1.1}, "tail_prob"),
        ({"temporal": "foo"}, "temporal"),
        ({"distribution": "bar"}, "distribution"),
        ({"batch": 0}, "batch"),
        ({"frames": -1}, "frames"),
        ({"frames": 0}, "frames"),
        ({"sigma_ctx": 2.0}, "sigma_ctx"),
        ({"pyramid_slope": -0.1}, "pyramid_slope"),
        ({"pyramid_slope": math.inf}, "pyramid_slope"),
        ({"scale": 0.0}, "scale"),
        ({"prefix_B": torch.zeros(3, dtype=torch.long)}, "prefix_B"),
    ],
)
def test_sample_frame_sigmas_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    args = {"batch": 2, "frames": 4, **kwargs}
    with pytest.raises(ValueError, match=argname):
        sample_frame_sigmas(args.pop("batch"), args.pop("frames"), generator=gen(), **args)


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"batch": 0}, "batch"),
        ({"frames": -1}, "frames"),
        ({"frames": 0}, "frames"),
        ({"temporal": "foo"}, "temporal"),
        ({"distribution": "bar"}, "distribution"),
        ({"sigma_ctx": -0.5}, "sigma_ctx"),
    ],
)
def test_sample_dual_sigmas_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    args = {"batch": 2, "frames": 4, **kwargs}
    with pytest.raises(ValueError, match=argname):
        sample_dual_sigmas(args.pop("batch"), args.pop("frames"), generator=gen(), **args)


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"sigma_s_max": 1.5}, "sigma_s_max"),
        ({"struct_tail_prob": -0.1}, "struct_tail_prob"),
        ({"clean_prefix_prob": 1.5}, "clean_prefix_prob"),
    ],
)
def test_sample_dual_sigmas_names_its_own_arguments(kwargs: dict, argname: str) -> None:
    with pytest.raises(ValueError, match=argname):
        sample_dual_sigmas(2, 4, generator=gen(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"batch": 0}, "batch"),
        ({"frames": -1}, "frames"),
        ({"prob": 1.5}, "prob"),
        ({"prob": -0.1}, "prob"),
    ],
)
def test_clean_prefix_lengths_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    args = {"batch": 2, "frames": 4, "prob": 0.5, **kwargs}
    with pytest.raises(ValueError, match=argname):
        clean_prefix_lengths(args["batch"], args["frames"], generator=gen(), prob=args["prob"])


@pytest.mark.parametrize(
    ("kwargs", "argname"), [({"distribution": "bar"}, "distribution"), ({"scale": -1.0}, "scale")]
)
def test_sample_base_sigmas_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    with pytest.raises(ValueError, match=argname):
        sample_base_sigmas((2, 3), generator=gen(), **kwargs)


# --- regressions of fixed bugs --------------------------------------------------------------------------


def test_sorted_rows_stay_sorted_with_a_tail() -> None:
    x = sample_frame_sigmas(4, 8, generator=gen(0), temporal="sorted", sigma_max=0.5, tail_prob=0.5)
    assert bool((x.diff(dim=1) >= 0).all()), x


def test_pyramid_tail_keeps_each_row_a_ramp_and_reaches_one() -> None:
    x = sample_frame_sigmas(
        400,
        6,
        generator=gen(13),
        temporal="pyramid",
        sigma_max=0.5,
        tail_prob=0.5,
        pyramid_slope=0.1,
    )
    d = x.diff(dim=1)
    assert bool((d >= -1e-6).all())
    above = (x > 0.5 + 1e-6).any(dim=1).float().mean().item()
    assert 0.2 < above < 0.6
    assert x.max().item() <= 1.0
