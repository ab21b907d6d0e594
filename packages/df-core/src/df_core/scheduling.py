"""The schedule of autoregressive sampling (Diffusion Forcing, Chen et al. 2024, §3.3).

Frames are grouped into chunks; chunk ``c`` starts ``c * stagger`` iterations after chunk 0
and then takes one of its K denoising steps per iteration until it is clean. As a matrix over
iterations ``i`` and chunks ``c`` (Diffusion Forcing's scheduling matrix), the number of steps
chunk ``c`` has taken before iteration ``i`` is

    step[i, c] = clamp(i - c * stagger, 0, K),

so at iteration ``i`` chunk ``c`` takes step ``k = i - c * stagger`` when ``0 <= k < K``: it
starts (from noise) at ``k = 0`` and is clean after ``k = K - 1``.

- ``stagger = K``: chunk-wise sampling, one chunk after another (frame-wise for one-frame
  chunks);
- ``stagger < K``: staggered ("pyramid") sampling, several chunks in flight at once, each
  noisier than the one before it, which only a model trained with independent per-frame noise
  can do.

:func:`chunk_steps` gives one iteration's row without knowing how many chunks there will be,
so a streaming sampler whose audio never ends asks it one iteration at a time.
"""

from __future__ import annotations

from df_core.checks import non_negative_int, positive_int


def chunk_steps(iteration: int, *, num_steps: int, stagger: int) -> dict[int, int]:
    """The chunks that take a step at ``iteration``, and the step each takes.

    Args:
        iteration: ``i``, counted from 0.
        num_steps: ``K``, denoising steps per chunk.
        stagger: iterations between the starts of consecutive chunks, in ``[1, K]``.

    Returns:
        ``{chunk: k}``, oldest chunk first: every chunk ``c >= 0`` with
        ``0 <= k = i - c * stagger < K``. The chunk with ``k = 0`` starts at this iteration,
        the one with ``k = K - 1`` becomes clean. Chunks are not bounded above: a caller
        with ``C`` chunks ignores those ``>= C``.
    """
    non_negative_int("iteration", iteration)
    positive_int("num_steps", num_steps)
    positive_int("stagger", stagger)
    if stagger > num_steps:
        raise ValueError(
            f"stagger must be at most num_steps={num_steps} (a later chunk would wait for "
            f"iterations with nothing in flight), got {stagger}"
        )
    first = max(0, -(-(iteration - num_steps + 1) // stagger))
    last = iteration // stagger
    return {c: iteration - c * stagger for c in range(first, last + 1)}
