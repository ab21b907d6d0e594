"""The autoregressive schedule (:func:`chunk_steps`): every chunk starts once, takes its K steps
on consecutive iterations and finishes in order; chunk-wise, frame-wise and staggered
sampling; structure first.

Legend: T frames, C chunks, K denoising steps, I iterations.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from df_core.schedules import flow_sigmas, struct_sigmas
from df_core.scheduling import chunk_steps


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """``(T, K, chunk_size, stagger)`` with ``1 <= stagger <= K``."""
    T = draw(st.integers(1, 12), label="T")
    K = draw(st.integers(1, 6), label="K")
    chunk = draw(st.integers(1, 4), label="chunk_size")
    stagger = draw(st.integers(1, K), label="stagger")
    return T, K, chunk, stagger


def run_schedule(C: int, K: int, stagger: int) -> list[dict[int, int]]:
    """Asks the schedule one iteration at a time, as a streaming sampler does, until all ``C``
    chunks are clean; the plan of each iteration restricted to the ``C`` chunks."""
    plans, clean, i = [], set(), 0
    while len(clean) < C:
        plan = {c: k for c, k in chunk_steps(i, num_steps=K, stagger=stagger).items() if c < C}
        plans.append(plan)
        clean |= {c for c, k in plan.items() if k == K - 1}
        i += 1
        assert i <= C * K, "the schedule does not finish"
    return plans


def steps_matrix(T: int, K: int, chunk: int, stagger: int) -> torch.Tensor:
    """Diffusion Forcing's scheduling matrix of frames, built from the plans: steps taken by
    frame t before iteration i, ``[I + 1, T]``."""
    plans = run_schedule(-(-T // chunk), K, stagger)
    rows = [[0] * T]
    for plan in plans:
        rows.append([rows[-1][t] + (t // chunk in plan) for t in range(T)])
    return torch.tensor(rows)


# --- invariants ------------------------------------------------------------------------------


@given(layout=layouts())
def test_every_chunk_starts_once_takes_k_steps_and_finishes_in_order(
    layout: tuple[int, int, int, int],
) -> None:
    T, K, chunk, stagger = layout
    C = -(-T // chunk)
    plans = run_schedule(C, K, stagger)

    # Step 1: chunk c takes steps 0, 1, ..., K - 1 on consecutive iterations, starting at
    # iteration c * stagger, and no other steps.
    for c in range(C):
        taken = [(i, plan[c]) for i, plan in enumerate(plans) if c in plan]
        assert taken == [(c * stagger + k, k) for k in range(K)]

    # Step 2: the whole clip takes (C - 1) * stagger + K iterations, none of them idle, and
    # fewer than chunk-wise sampling when chunks overlap.
    assert len(plans) == (C - 1) * stagger + K
    assert all(plans)
    if stagger < K and C > 1:
        assert len(plans) < C * K

    # Step 3: chunks finish in order, at most one per iteration, and the oldest chunk in flight
    # is always the furthest along (the plans are ordered oldest first).
    finish = [next(i for i, p in enumerate(plans) if p.get(c) == K - 1) for c in range(C)]
    assert finish == sorted(finish) and len(set(finish)) == C
    for plan in plans:
        assert list(plan) == sorted(plan)
        ks = list(plan.values())
        assert ks == sorted(ks, reverse=True) and len(set(ks)) == len(ks)

    # Step 4: chunks in flight at once: one chunk-wise, ceil(K / stagger) at most staggered.
    in_flight = max(len(p) for p in plans)
    if stagger == K:
        assert in_flight == 1
    else:
        assert in_flight == min(C, -(-K // stagger))

    # Step 5: the frames' matrix is the closed form clamp(i - (t // chunk) * stagger, 0, K):
    # starts at 0, ends at K, steps 0 or 1 per iteration, earlier frames never noisier, and
    # the frames of one chunk move together.
    steps_IT = steps_matrix(T, K, chunk, stagger)
    i_I, chunk_T = torch.arange(len(plans) + 1), torch.arange(T) // chunk
    closed = (i_I[:, None] - chunk_T[None, :] * stagger).clamp(0, K)
    assert torch.equal(steps_IT, closed)
    assert bool((steps_IT[0] == 0).all()) and bool((steps_IT[-1] == K).all())
    assert set(steps_IT.diff(dim=0).unique().tolist()) <= {0, 1}
    assert bool((steps_IT.diff(dim=1) <= 0).all())


@given(
    i=st.integers(0, 200),
    K=st.integers(1, 8),
    data=st.data(),
)
def test_a_plan_is_the_row_of_its_iteration_alone(i: int, K: int, data: st.DataObject) -> None:
    """Incremental use: iteration i's plan needs no other iteration and no clip length, and it
    holds exactly the chunks with 0 <= i - c * stagger < K."""
    stagger = data.draw(st.integers(1, K), label="stagger")
    plan = chunk_steps(i, num_steps=K, stagger=stagger)
    expected = {c: i - c * stagger for c in range(i + 1) if 0 <= i - c * stagger < K}
    assert plan == expected
    assert list(plan) == sorted(plan)


# --- the regimes -----------------------------------------------------------------------------


def test_frame_wise_denoises_one_frame_at_a_time() -> None:
    T, K = 3, 4
    plans = run_schedule(T, K, K)  # chunk 1, stagger K
    assert plans == [{i // K: i % K} for i in range(T * K)]


def test_chunk_wise_frames_of_a_chunk_move_together() -> None:
    T, K, chunk = 5, 3, 2  # chunks {0, 1}, {2, 3}, {4}
    steps_IT = steps_matrix(T, K, chunk, K)
    assert steps_IT.shape == (3 * K + 1, T)
    assert torch.equal(steps_IT[:, 0], steps_IT[:, 1])
    assert torch.equal(steps_IT[:, 2], steps_IT[:, 3])
    assert not torch.equal(steps_IT[:, 1], steps_IT[:, 2])
    assert steps_IT[K].tolist() == [K, K, 0, 0, 0]


def test_staggered_has_several_chunks_in_flight_at_different_steps() -> None:
    assert chunk_steps(3, num_steps=4, stagger=1) == {0: 3, 1: 2, 2: 1, 3: 0}
    assert chunk_steps(5, num_steps=4, stagger=2) == {1: 3, 2: 1}
    assert chunk_steps(0, num_steps=4, stagger=2) == {0: 0}
    assert steps_matrix(2, 2, 1, 2).tolist() == [[0, 0], [1, 0], [2, 0], [2, 1], [2, 2]]


# --- structure first -------------------------------------------------------------------------


@pytest.mark.parametrize(("K", "finish_step"), [(4, 2), (6, 5), (3, 1)])
@pytest.mark.parametrize("stagger", [None, 1])
def test_struct_finishes_before_video(K: int, finish_step: int, stagger: int | None) -> None:
    T = 4
    steps_IT = steps_matrix(T, K, 1, K if stagger is None else stagger)
    sigma_v_IT = flow_sigmas(K)[steps_IT]
    sigma_s_IT = struct_sigmas(K, finish_step=finish_step)[steps_IT]
    assert bool((sigma_s_IT <= 0.7 + 1e-6).all())
    # Wherever video is clean, structure is too, and every frame's structure is clean strictly
    # before its video.
    assert bool((sigma_s_IT[sigma_v_IT == 0] == 0).all())
    first_clean_v = (sigma_v_IT == 0).long().argmax(dim=0)
    first_clean_s = (sigma_s_IT == 0).long().argmax(dim=0)
    assert torch.equal(first_clean_v - first_clean_s, torch.full((T,), K - finish_step))


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "argname"),
    [
        ((-1, 4, 2), "iteration"),
        ((0, 0, 1), "num_steps"),
        ((0, 4, 0), "stagger"),
        ((0, 4, 5), "stagger"),
        ((0, 4, 1.0), "stagger"),
    ],
)
def test_chunk_steps_rejects_bad_arguments(args: tuple, argname: str) -> None:
    i, K, stagger = args
    with pytest.raises(ValueError, match=argname):
        chunk_steps(i, num_steps=K, stagger=stagger)
