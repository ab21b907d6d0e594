"""The project's fixed conventions (DESIGN.md), each stated once; every package imports them."""

FPS = 25  # video frames per second
AUDIO_SAMPLE_RATE = 16_000  # speech encoders' input rate, Hz
AUDIO_FEATURES_PER_VIDEO_FRAME = 2  # 50 Hz features at 25 fps (DESIGN.md, correction 1)
SIGMA_S_MAX = 0.7  # structure is trained up to this level, and sampling starts it there
