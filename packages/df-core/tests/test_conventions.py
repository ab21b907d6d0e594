"""The 1 + k n latent-frame layout: groups tile the video frames exactly once, in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from df_core import group_first_frame, latent_frames_covering, video_span


@given(k=st.integers(1, 8), frames=st.integers(1, 200))
def test_groups_tile_the_video_frames_in_order(k, frames):
    n = latent_frames_covering(frames, k)
    covered = [f for j in range(n) for f in range(*video_span(j, k))]
    # Every video frame exactly once, in order; only the last group may run past the end.
    assert covered[:frames] == list(range(frames))
    assert len(covered) - frames < k
    assert latent_frames_covering(frames, k) == n and (n == 1 or video_span(n - 1, k)[0] < frames)


def test_the_wan_layout():
    assert [video_span(j, 4) for j in range(3)] == [(0, 1), (1, 5), (5, 9)]
    assert group_first_frame(0, 4) == -3  # the group of frame 0: frames -3 .. 0
    assert latent_frames_covering(9, 4) == 3 and latent_frames_covering(10, 4) == 4
    assert [video_span(j, 1) for j in range(3)] == [(0, 1), (1, 2), (2, 3)]
    assert latent_frames_covering(0, 4) == 0 and latent_frames_covering(7, 1) == 7


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="latent_frame"):
        video_span(-1, 4)
    with pytest.raises(ValueError, match="frames_per_latent"):
        latent_frames_covering(3, 0)
