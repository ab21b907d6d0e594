"""Scheduling matrices for autoregressive sampling: frame-wise, chunk-wise and staggered
schedules, their invariants, and the structure-first schedule.

Legend: T frames, K denoising steps, I iterations (the matrices have I + 1 rows).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core.schedules import flow_sigmas, struct_sigmas
from df_core.scheduling import (
    active_frames,
    finished_frames,
    scheduling_matrix,
    scheduling_steps,
)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """``(T, K, chunk_size, stagger)`` with ``0 <= stagger <= K``."""
    T = draw(st.integers(1, 10), label="T")
    K = draw(st.integers(1, 6), label="K")
    chunk = draw(st.integers(1, 4), label="chunk_size")
    stagger = draw(st.integers(0, K), label="stagger")
    return T, K, chunk, stagger


def reference_steps(T: int, K: int, chunk: int, stagger: int) -> list[list[int]]:
    """The matrix built by simulation: chunk c starts at iteration c * stagger and then
    advances one step per iteration until it is clean."""
    num_chunks = -(-T // chunk)
    iterations = (num_chunks - 1) * stagger + K
    rows = [[0] * T]
    for i in range(iterations):
        row = list(rows[-1])
        for t in range(T):
            if i >= (t // chunk) * stagger and row[t] < K:
                row[t] += 1
        rows.append(row)
    return rows


# --- invariants ------------------------------------------------------------------------------


@given(layout=layouts(), sigma_start=st.floats(0.05, 1.0), shift=st.floats(0.5, 5.0))
def test_scheduling_invariants(
    layout: tuple[int, int, int, int], sigma_start: float, shift: float
) -> None:
    T, K, chunk, stagger = layout
    steps_IT = scheduling_steps(T, K, chunk_size=chunk, stagger=stagger)
    I = steps_IT.shape[0] - 1
    num_chunks = -(-T // chunk)

    # Step 1: the documented shape and dtype, and equality with a step-by-step simulation.
    assert steps_IT.shape == ((num_chunks - 1) * stagger + K + 1, T)
    assert steps_IT.dtype == torch.int64
    reference = reference_steps(T, K, chunk, stagger)
    assert steps_IT.tolist() == reference

    # Step 2: everything starts noisy and ends clean.
    assert bool((steps_IT[0] == 0).all())
    assert bool((steps_IT[-1] == K).all())

    # Step 3: each iteration advances a frame by 0 or 1 step.
    d_col = steps_IT.diff(dim=0)
    assert bool(((d_col == 0) | (d_col == 1)).all())

    # Step 4: an earlier frame is never noisier than a later one.
    assert bool((steps_IT.diff(dim=1) <= 0).all())

    # Step 5: every frame is updated exactly K times, every iteration updates some frame, and
    # every frame becomes clean exactly once, earlier frames no later than later ones.
    active_IT = torch.stack([active_frames(steps_IT, i) for i in range(I)])
    finished_IT = torch.stack([finished_frames(steps_IT, i, K) for i in range(I)])
    assert active_IT.dtype == torch.bool and active_IT.shape == (I, T)
    assert bool((active_IT.sum(dim=0) == K).all())
    assert bool(active_IT.any(dim=1).all())
    assert bool((finished_IT.sum(dim=0) == 1).all())
    assert bool((finished_IT <= active_IT).all())
    finish_at_T = finished_IT.long().argmax(dim=0)
    assert bool((finish_at_T.diff() >= 0).all())
    # Frame t is clean from the row after its finishing iteration on, and not before.
    for t in range(T):
        f = int(finish_at_T[t])
        assert int(steps_IT[f, t]) == K - 1 and int(steps_IT[f + 1, t]) == K

    # Step 6: frames of one chunk share their column.
    chunk_T = torch.arange(T) // chunk
    for c in range(num_chunks):
        cols = steps_IT[:, chunk_T == c]
        assert torch.equal(cols, cols[:, :1].expand_as(cols))

    # Step 7: with 0 < stagger < K, chunks overlap: at some iteration several chunks are in
    # flight at different levels, and the clip takes fewer iterations than chunk-wise sampling.
    levels_in_flight = max(steps_IT[i][active_IT[i]].unique().numel() for i in range(I))
    if stagger == K or num_chunks == 1:
        assert levels_in_flight == 1  # one chunk at a time
    elif stagger == 0:
        assert levels_in_flight == 1  # all chunks together, at one level
        assert I == K
    else:
        assert levels_in_flight >= 2
        assert num_chunks * K > I

    # Step 8: the matrix of levels indexes the schedule with the step matrix.
    sigmas_K1 = flow_sigmas(K, sigma_start=sigma_start, shift=shift, dtype=torch.float64)
    sigma_IT = scheduling_matrix(T, sigmas_K1, chunk_size=chunk, stagger=stagger)
    assert sigma_IT.dtype == torch.float64
    levels = sigmas_K1.tolist()
    assert sigma_IT.tolist() == [[levels[k] for k in row] for row in reference]
    assert bool((sigma_IT[0] == sigma_start).all()) and bool((sigma_IT[-1] == 0).all())
    assert bool((sigma_IT.diff(dim=0) <= 0).all())  # levels only go down in time
    assert bool((sigma_IT.diff(dim=1) >= 0).all())  # earlier frames are cleaner


# --- the three regimes -----------------------------------------------------------------------


@pytest.mark.parametrize(("T", "K"), [(1, 1), (3, 4), (5, 2)])
def test_frame_wise_denoises_one_frame_at_a_time(T: int, K: int) -> None:
    steps_IT = scheduling_steps(T, K)  # chunk 1, stagger K
    assert steps_IT.shape == (T * K + 1, T)
    for i in range(T * K):
        active = active_frames(steps_IT, i)
        # Frame i // K is the only one in flight, at step i % K.
        assert active.nonzero().flatten().tolist() == [i // K]
        assert int(steps_IT[i, i // K]) == i % K
        finished = finished_frames(steps_IT, i, K).nonzero().flatten().tolist()
        assert finished == ([i // K] if i % K == K - 1 else [])
    # Before a frame starts every earlier frame is clean and every later one pure noise.
    for t in range(T):
        row = steps_IT[t * K]
        assert row[:t].tolist() == [K] * t and row[t:].tolist() == [0] * (T - t)


def test_frame_wise_known_matrix() -> None:
    expected = [[0, 0], [1, 0], [2, 0], [2, 1], [2, 2]]
    assert scheduling_steps(2, 2).tolist() == expected


def test_chunk_wise_frames_of_a_chunk_move_together() -> None:
    T, K, chunk = 5, 3, 2  # chunks {0, 1}, {2, 3}, {4}
    steps_IT = scheduling_steps(T, K, chunk_size=chunk)
    assert steps_IT.shape == (3 * K + 1, T)
    assert torch.equal(steps_IT[:, 0], steps_IT[:, 1])
    assert torch.equal(steps_IT[:, 2], steps_IT[:, 3])
    assert not torch.equal(steps_IT[:, 1], steps_IT[:, 2])
    for i in range(3 * K):
        assert (
            active_frames(steps_IT, i).nonzero().flatten().tolist() == [[0, 1], [2, 3], [4]][i // K]
        )
    assert finished_frames(steps_IT, K - 1, K).tolist() == [True, True, False, False, False]
    assert finished_frames(steps_IT, 3 * K - 1, K).tolist() == [False, False, False, False, True]


def test_staggered_has_several_chunks_in_flight_at_different_levels() -> None:
    T, K, stagger = 4, 4, 1
    steps_IT = scheduling_steps(T, K, stagger=stagger)
    assert steps_IT.shape == ((T - 1) * stagger + K + 1, T)
    assert steps_IT[3].tolist() == [3, 2, 1, 0]
    assert active_frames(steps_IT, 3).tolist() == [True, True, True, True]
    in_flight = [
        steps_IT[i][active_frames(steps_IT, i)].unique().numel() for i in range(len(steps_IT) - 1)
    ]
    assert max(in_flight) == 4


def test_stagger_zero_is_full_sequence_sampling() -> None:
    steps_IT = scheduling_steps(6, 3, chunk_size=2, stagger=0)
    assert torch.equal(steps_IT, torch.arange(4)[:, None].expand(4, 6))


# --- structure first -------------------------------------------------------------------------


@pytest.mark.parametrize(("K", "finish_step"), [(4, 2), (6, 5), (3, 1)])
@pytest.mark.parametrize("stagger", [None, 1])
def test_struct_finishes_before_video(K: int, finish_step: int, stagger: int | None) -> None:
    T = 4
    sigma_v_IT = scheduling_matrix(T, flow_sigmas(K), stagger=stagger)
    sigma_s_IT = scheduling_matrix(T, struct_sigmas(K, finish_step=finish_step), stagger=stagger)
    assert sigma_v_IT.shape == sigma_s_IT.shape
    assert bool((sigma_s_IT <= 0.7 + 1e-6).all())
    # Wherever video is clean, structure is too, and every frame's structure is clean strictly
    # before its video.
    assert bool((sigma_s_IT[sigma_v_IT == 0] == 0).all())
    first_clean_v = (sigma_v_IT == 0).long().argmax(dim=0)
    first_clean_s = (sigma_s_IT == 0).long().argmax(dim=0)
    assert bool((first_clean_s < first_clean_v).all())
    assert torch.equal(first_clean_v - first_clean_s, torch.full((T,), K - finish_step))


def test_struct_without_finish_step_finishes_with_video() -> None:
    sigma_v_IT = scheduling_matrix(3, flow_sigmas(4))
    sigma_s_IT = scheduling_matrix(3, struct_sigmas(4))
    assert torch.equal(sigma_v_IT == 0, sigma_s_IT == 0)


def test_scheduling_matrix_keeps_dtype_and_device() -> None:
    sigma_IT = scheduling_matrix(2, flow_sigmas(3, dtype=torch.bfloat16, device="cpu"))
    assert sigma_IT.dtype == torch.bfloat16 and sigma_IT.device.type == "cpu"


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        ({"stagger": 5}, "stagger"),
        ({"stagger": -1}, "stagger"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -2}, "chunk_size"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_steps": 0}, "num_steps"),
    ],
)
def test_scheduling_steps_rejects_bad_arguments(kwargs: dict, argname: str) -> None:
    args = {"num_frames": 3, "num_steps": 4, **kwargs}
    with pytest.raises(ValueError, match=argname):
        scheduling_steps(args.pop("num_frames"), args.pop("num_steps"), **args)


@pytest.mark.parametrize(
    ("sigmas", "kwargs", "argname"),
    [
        (torch.zeros(2, 3), {}, "sigmas_K1"),
        (torch.zeros(1), {}, "sigmas_K1"),
        (torch.tensor([1.5, 0.0]), {}, "sigmas_K1"),
        (torch.tensor([1.0, -0.1]), {}, "sigmas_K1"),
        (flow_sigmas(3), {"stagger": 4}, "stagger"),
        (flow_sigmas(3), {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_scheduling_matrix_rejects_bad_arguments(
    sigmas: torch.Tensor, kwargs: dict, argname: str
) -> None:
    with pytest.raises(ValueError, match=argname):
        scheduling_matrix(3, sigmas, **kwargs)
