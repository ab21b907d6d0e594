"""The project's fixed conventions (DESIGN.md), each stated once; every package imports them."""

FPS = 25  # video frames per second
AUDIO_SAMPLE_RATE = 16_000  # speech encoders' input rate, Hz
AUDIO_FEATURES_PER_VIDEO_FRAME = 2  # 50 Hz features at 25 fps (DESIGN.md, correction 1)
SIGMA_S_MAX = 0.7  # structure is trained up to this level, and sampling starts it there


# Latent frames of temporally compressing codecs (Wan's VAE, df_models' TemporalTinyAutoencoder):
# with k = frames_per_latent, latent frame 0 stands for video frame 0 alone and latent frame
# j >= 1 for video frames (j - 1) k + 1 .. j k. Uniformly, latent frame j's group of k frames
# ends at video frame j k; for j = 0 its k - 1 earlier frames do not exist, which is why frame 0
# is coded alone. With k = 1, latent frame j is video frame j.


def group_first_frame(latent_frame: int, frames_per_latent: int) -> int:
    """The first video frame of latent frame ``j``'s group of ``k`` frames: ``(j - 1) k + 1``
    (negative for ``j = 0`` and ``k > 1``: the group's frames before video frame 0, which audio
    windows read as silence)."""
    return (latent_frame - 1) * frames_per_latent + 1


def video_span(latent_frame: int, frames_per_latent: int) -> tuple[int, int]:
    """The video frames ``[first, stop)`` latent frame ``j`` decodes to: ``[0, 1)`` for ``j =
    0``, else ``[(j - 1) k + 1, j k + 1)``."""
    if latent_frame < 0 or frames_per_latent < 1:
        raise ValueError(
            f"latent_frame must be >= 0 and frames_per_latent >= 1, got {latent_frame} and "
            f"{frames_per_latent}"
        )
    stop = latent_frame * frames_per_latent + 1
    return max(group_first_frame(latent_frame, frames_per_latent), 0), stop


def latent_frames_covering(video_frames: int, frames_per_latent: int) -> int:
    """Latent frames whose groups cover ``video_frames`` frames: ``1 + ceil((T - 1) / k)`` (the
    last group partly past the end when ``T`` is not ``1 + k n``); 0 for no frames."""
    if video_frames < 0 or frames_per_latent < 1:
        raise ValueError(
            f"video_frames must be >= 0 and frames_per_latent >= 1, got {video_frames} and "
            f"{frames_per_latent}"
        )
    if video_frames == 0:
        return 0
    return 1 + -(-(video_frames - 1) // frames_per_latent)
