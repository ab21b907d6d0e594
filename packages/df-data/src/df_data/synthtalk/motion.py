"""Per-frame structure tracks from speech: mouth, head pose, blinks and brows.

Audio-visual lag: mouth frame ``t`` shows the articulation of the audio at time
``(t - lag) / fps`` (``lag = DEFAULT_AV_LAG_FRAMES`` by default), i.e. the mouth follows the
sound by ``lag`` frames; frames before ``lag`` show the closed rest mouth. Head nods and brow
raises follow the prosody (pitch accents and loudness) with the same lag; the head also
drifts slowly at random, and blinks are random (every ``Identity.blink_interval`` seconds on
average, about 150 ms each).

Legend: T video frames, M milliseconds.
"""

from __future__ import annotations

import numpy as np

from df_core.conventions import AUDIO_SAMPLE_RATE, FPS
from df_data.synthtalk.identity import Identity
from df_data.synthtalk.phonemes import PHONES
from df_data.synthtalk.speech import PhoneEvent
from df_data.synthtalk.structure import IDX, STRUCT_DIM

DEFAULT_AV_LAG_FRAMES = 2  # mouth frame t follows audio at time (t - lag) / fps
_LIMITS = {  # clip ranges of the pose entries
    "yaw": 0.45,
    "pitch": 0.30,
    "roll": 0.20,
    "tx": 0.08,
    "ty": 0.06,
}


def _gauss_smooth(x_M: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along the last axis with ``sigma`` in samples (edge-padded)."""
    half = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    k /= k.sum()
    xp = np.pad(x_M, (half, half), mode="edge")
    return np.convolve(xp, k, mode="valid")


def _frame_average(
    x_M: np.ndarray, n_frames: int, shift_frames: int, rest: float = 0.0
) -> np.ndarray:
    """Averages a 1 ms track over each video frame's interval, read ``shift_frames`` earlier."""
    ms_per_frame = 1000.0 / FPS
    out = np.full(n_frames, rest)
    for t in range(n_frames):
        a, b = (
            round((t - shift_frames) * ms_per_frame),
            round((t - shift_frames + 1) * ms_per_frame),
        )
        if b <= 0:
            continue
        seg = x_M[max(a, 0) : min(b, len(x_M))]
        out[t] = seg.mean() if len(seg) else rest
    return out


def mouth_tracks(phones: list[PhoneEvent], n_frames: int, lag: int) -> np.ndarray:
    """Jaw, lip spread and lip round per frame ``[T, 3]`` from the timed phonemes: viseme
    targets (vowel openness scaled by stress), smoothed for coarticulation, delayed by ``lag``."""
    n_ms = int(np.ceil(n_frames * 1000.0 / FPS)) + 1
    targets = np.zeros((3, n_ms))
    for ev in phones:
        p = PHONES[ev.label]
        a, b = round(ev.start * 1000), min(round(ev.end * 1000), n_ms)
        jaw = p.jaw * (0.6 + 0.4 * ev.stress) if p.kind == "vowel" else p.jaw
        targets[:, a:b] = np.array([jaw, p.spread, p.round])[:, None]
    sigmas = (15.0, 25.0, 25.0)  # ms: the lips anticipate and linger longer than the jaw
    smooth = [_gauss_smooth(targets[i], sigmas[i]) for i in range(3)]
    return np.stack([_frame_average(x, n_frames, lag) for x in smooth], 1)


def energy_envelope(audio_N: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS of the audio in each video frame's interval ``[T]`` (zero past the end)."""
    hop = AUDIO_SAMPLE_RATE / FPS
    out = np.zeros(n_frames)
    for t in range(n_frames):
        seg = audio_N[round(t * hop) : round((t + 1) * hop)]
        out[t] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    return out


def _ou(n: int, sigma: float, tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary Ornstein-Uhlenbeck process per frame ``[T]`` (std ``sigma``, time ``tau_s``)."""
    a = np.exp(-1.0 / (FPS * tau_s))
    noise = rng.normal(0.0, sigma * np.sqrt(1 - a * a), n)
    x = np.empty(n)
    x[0] = rng.normal(0.0, sigma)
    for i in range(1, n):
        x[i] = a * x[i - 1] + noise[i]
    return x


def accent_track(
    accents: list[tuple[float, float]], identity: Identity, n_frames: int, lag: int
) -> np.ndarray:
    """Pitch-accent strength per frame in [0, 1] ``[T]``, delayed by ``lag``."""
    t = (np.arange(n_frames) - lag + 0.5) / FPS
    out = np.zeros(n_frames)
    for ta, size in accents:
        out += min(size / identity.prosody_semitones, 1.0) * np.exp(-0.5 * ((t - ta) / 0.15) ** 2)
    return np.clip(out, 0.0, 1.0)


def blink_track(identity: Identity, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame in [0, 1] ``[T]``: random blinks of ~150 ms."""
    n_ms = int(np.ceil(n_frames * 1000.0 / FPS)) + 1
    lid = np.zeros(n_ms)
    shape = np.concatenate(
        [np.linspace(0, 1, 50), np.ones(30), 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, 70))]
    )
    t = rng.uniform(0.2, 1.0) * identity.blink_interval
    while t * 1000 < n_ms:
        a = int(t * 1000)
        seg = shape[: n_ms - a]
        lid[a : a + len(seg)] = np.maximum(lid[a : a + len(seg)], seg)
        t += identity.blink_interval * rng.uniform(0.5, 1.5)
    return _frame_average(lid, n_frames, 0)


def struct_track(
    identity: Identity,
    phones: list[PhoneEvent],
    accents: list[tuple[float, float]],
    audio_N: np.ndarray,
    n_frames: int,
    rng: np.random.Generator,
    lag: int = DEFAULT_AV_LAG_FRAMES,
) -> np.ndarray:
    """The ground-truth structure of every frame: float32 ``[T, Ds]`` (see ``structure``)."""
    s = np.zeros((n_frames, STRUCT_DIM))
    # Step 1: the mouth follows the phonemes.
    s[:, [IDX["jaw"], IDX["lip_spread"], IDX["lip_round"]]] = mouth_tracks(phones, n_frames, lag)
    # Step 2: prosody (accents and loudness, delayed like the mouth) drives nods and brows.
    accent = accent_track(accents, identity, n_frames, lag)
    energy = np.roll(energy_envelope(audio_N, n_frames), lag)
    energy[:lag] = 0.0
    energy = _gauss_smooth(energy / max(float(np.percentile(energy, 95)), 1e-6), 1.5)
    g = identity.motion_gain
    s[:, IDX["yaw"]] = g * (_ou(n_frames, 0.12, 2.0, rng) + 0.03 * energy * np.sign(rng.normal()))
    s[:, IDX["pitch"]] = g * (
        _ou(n_frames, 0.05, 1.5, rng) - 0.07 * accent + 0.02 * (energy - energy.mean())
    )
    s[:, IDX["roll"]] = g * (_ou(n_frames, 0.04, 2.5, rng) + 0.02 * accent * np.sign(rng.normal()))
    s[:, IDX["tx"]] = g * _ou(n_frames, 0.02, 3.0, rng)
    s[:, IDX["ty"]] = g * (_ou(n_frames, 0.015, 3.0, rng) + 0.01 * accent)
    s[:, IDX["scale"]] = 1.0 + g * _ou(n_frames, 0.025, 4.0, rng)
    for name, limit in _LIMITS.items():
        s[:, IDX[name]] = np.clip(s[:, IDX[name]], -limit, limit)
    s[:, IDX["scale"]] = np.clip(s[:, IDX["scale"]], 0.9, 1.1)
    # Step 3: random blinks; brows rise with the accents and now and then on their own.
    s[:, IDX["blink"]] = blink_track(identity, n_frames, rng)
    t = np.arange(n_frames) / FPS
    extra = np.zeros(n_frames)
    for tb in rng.uniform(0, n_frames / FPS, int(rng.poisson(n_frames / FPS / 6.0))):
        extra += rng.uniform(0.3, 0.7) * np.exp(-0.5 * ((t - tb) / 0.25) ** 2)
    s[:, IDX["brow"]] = np.clip(0.8 * accent + extra, 0.0, 1.0)
    return s.astype(np.float32)
