"""A formant synthesiser: a speech script becomes 16 kHz audio that sounds like speech.

Source-filter model (Klatt 1980, simplified). Sources: a Rosenberg glottal pulse train
(differentiated, which includes the lip radiation) following the pitch contour, aspiration noise,
and frication noise. Filters: a cascade of second-order resonators for F1-F4 with unity DC gain,
``|R(w)| = (1 - 2 r cos(theta) + r^2) / |1 - 2 r cos(theta) e^{-jw} + r^2 e^{-2jw}|`` with
``r = exp(-pi B / fs)`` and ``theta = 2 pi F / fs``, on the voiced and aspiration sources, and a
Gaussian band (the frication/burst noise band) on the frication source. The filters change
every ``HOP`` samples, so they are applied in the STFT domain (their exact magnitude
responses per frame, overlap-added), which keeps formant transitions smooth and costs a few
milliseconds per second of audio.
"""

from __future__ import annotations

import numpy as np
import torch

from df_core.conventions import AUDIO_SAMPLE_RATE
from df_data.synthtalk.identity import Identity
from df_data.synthtalk.phonemes import PHONES
from df_data.synthtalk.speech import Script

HOP = 64  # samples between filter updates (4 ms)
N_FFT = 512
TARGET_RMS = 0.08  # RMS of the voiced parts after normalisation (about -22 dBFS)
PEAK = 0.9
_VOWEL_BW = (60.0, 90.0, 150.0)
_NASAL_BW = (100.0, 200.0, 300.0)
_F4 = (3500.0, 300.0)  # fixed fourth formant (scaled by the speaker), bandwidth
_FRICATION_GAIN = 6.0  # noise band level; puts /s/ about 7 dB under a stressed vowel


def _smooth(x: np.ndarray, frames: int) -> np.ndarray:
    """Hann-window moving average along axis 0 over about ``frames`` frames (edge-padded)."""
    if frames <= 1:
        return x
    w = np.hanning(frames + 2)[1:-1]
    w /= w.sum()
    pad = len(w) // 2
    xp = np.pad(x, [(pad, len(w) - 1 - pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    if x.ndim == 1:
        return np.convolve(xp, w, mode="valid")
    return np.stack([np.convolve(xp[:, i], w, mode="valid") for i in range(x.shape[1])], 1)


def _tracks(script: Script, identity: Identity, n_frames: int) -> dict[str, np.ndarray]:
    """Per-frame synthesis parameters (frame k at time k * HOP / fs)."""
    fps = AUDIO_SAMPLE_RATE / HOP
    F = np.tile(np.array([500.0, 1500.0, 2500.0]), (n_frames, 1))
    B = np.tile(np.array(_VOWEL_BW), (n_frames, 1))
    av, asp, fric = np.zeros(n_frames), np.zeros(n_frames), np.zeros(n_frames)
    fc, fbw = np.full(n_frames, 4000.0), np.full(n_frames, 2000.0)
    for ev in script.phones:
        a, b = round(ev.start * fps), min(round(ev.end * fps), n_frames)
        if b <= a:
            continue
        p = PHONES[ev.label]
        loud = 0.35 + 0.65 * ev.stress
        if p.kind != "silence":
            F[a:b] = p.formants
        if p.kind == "vowel":
            av[a:b] = loud * (0.55 + 0.45 * p.jaw)  # open vowels are intrinsically louder
            asp[a:b] = 0.03
        elif p.kind == "approximant":
            av[a:b] = 0.45 * loud
        elif p.kind == "nasal":
            av[a:b], B[a:b] = 0.3 * loud, _NASAL_BW
        elif p.kind == "aspirate":
            asp[a:b] = p.noise_gain
        elif p.kind == "fricative":
            fric[a:b], fc[a:b], fbw[a:b] = p.noise_gain, p.noise_hz, p.noise_bw
            if p.voiced:
                av[a:b], F[a:b, 0] = 0.2, 250.0
        elif p.kind == "plosive":
            release = a + int(0.6 * (b - a))
            burst = min(release + 3, b)  # about 12 ms of burst noise
            if p.voiced:
                av[a:release], F[a:release, 0] = 0.05, 200.0  # the voice bar during closure
                av[burst:b] = 0.3
            else:
                asp[burst:b] = 0.2
            fric[release:burst], fc[release:burst], fbw[release:burst] = (
                p.noise_gain,
                p.noise_hz,
                p.noise_bw,
            )
    F = _smooth(F, 10) * identity.formant_scale  # 40 ms coarticulation of the formants
    return {
        "F": F,
        "B": _smooth(B, 5),
        "av": _smooth(av, 3),
        "asp": _smooth(asp, 3),
        "fric": _smooth(fric, 2),
        "fc": fc * identity.formant_scale,
        "fbw": fbw,
    }


def pitch_contour(
    script: Script, identity: Identity, n_frames: int, rng: np.random.Generator
) -> np.ndarray:
    """F0 in Hz per frame ``[K]``: declination per phrase, pitch accents, a phrase-final fall
    (or a rise for questions) and a slow wander."""
    t = np.arange(n_frames) * HOP / AUDIO_SAMPLE_RATE
    st = np.zeros(n_frames)  # semitones around the speaker's f0
    for start, end, question in script.phrases:
        inside = (t >= start) & (t < end)
        st[inside] += 1.5 - 3.0 * (t[inside] - start) / max(end - start, 1e-3)
        tail = np.clip((t - (end - 0.3)) / 0.3, 0, 1) * inside
        st += (4.0 if question else -1.5) * tail
    for ta, size in script.accents:
        st += size * np.exp(-0.5 * ((t - ta) / 0.07) ** 2)
    st += 0.4 * _smooth(rng.normal(0, 3.0, n_frames), 50)
    return identity.f0_hz * 2.0 ** (st / 12.0)


def _glottal(f0_N: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Differentiated Rosenberg pulses ``[N]`` at the per-sample pitch, unit RMS."""
    jitter = 1.0 + 0.01 * np.interp(
        np.arange(len(f0_N)), np.arange(0, len(f0_N), 80), rng.normal(size=(len(f0_N) + 79) // 80)
    )
    phase = np.cumsum(f0_N * jitter / AUDIO_SAMPLE_RATE) % 1.0
    tp, tn = 0.4, 0.16  # opening and closing phases (fractions of the period)
    flow = np.where(
        phase < tp,
        0.5 * (1.0 - np.cos(np.pi * phase / tp)),
        np.where(phase < tp + tn, np.cos(np.pi * (phase - tp) / (2 * tn)), 0.0),
    )
    exc = np.diff(flow, prepend=flow[0])
    return exc / max(float(np.sqrt(np.mean(exc**2))), 1e-9)


def _resonator_gain(F: np.ndarray, B: np.ndarray, z1: np.ndarray) -> np.ndarray:
    """``|R(w)|`` ``[K, bins]`` of resonators with per-frame ``F``, ``B`` ``[K]`` at ``z1 = e^{-jw}``."""
    r = np.exp(-np.pi * B / AUDIO_SAMPLE_RATE)[:, None]
    c = 2.0 * r * np.cos(2.0 * np.pi * F / AUDIO_SAMPLE_RATE)[:, None]
    den = 1.0 - c * z1[None] + (r * r) * (z1 * z1)[None]
    return (1.0 - c + r * r) / np.abs(den)


def synthesize(
    script: Script, identity: Identity, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Audio ``[n_samples]`` float32 at 16 kHz speaking ``script``, loudness-normalised."""
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    n_frames = n_samples // HOP + 1  # frames of a centred STFT
    tr = _tracks(script, identity, n_frames)
    f0 = pitch_contour(script, identity, n_frames, rng)
    # Step 1: sources, with amplitudes applied per sample (bursts stay sharp).
    frame_pos, sample_pos = np.arange(n_frames) * HOP, np.arange(n_samples)
    per_sample = {k: np.interp(sample_pos, frame_pos, tr[k]) for k in ("av", "asp", "fric")}
    exc = _glottal(np.interp(sample_pos, frame_pos, f0), rng)
    voiced = exc * per_sample["av"] + rng.normal(size=n_samples) * (
        per_sample["asp"] + 0.03 * per_sample["av"]
    )
    noise = rng.normal(size=n_samples) * per_sample["fric"]
    # Step 2: filters per STFT frame: formant cascade for the voiced part, a band for the noise.
    window = torch.hann_window(N_FFT, dtype=torch.float64)

    def stft(x: np.ndarray) -> torch.Tensor:
        return torch.stft(torch.from_numpy(x), N_FFT, HOP, window=window, return_complex=True)

    z1 = np.exp(-1j * np.pi * np.arange(N_FFT // 2 + 1) / (N_FFT // 2))
    H = _resonator_gain(
        np.full(n_frames, _F4[0] * identity.formant_scale), np.full(n_frames, _F4[1]), z1
    )
    for k in range(3):
        H *= _resonator_gain(tr["F"][:, k], tr["B"][:, k], z1)
    freqs = np.linspace(0, AUDIO_SAMPLE_RATE / 2, N_FFT // 2 + 1)
    G = np.exp(-0.5 * ((freqs[None] - tr["fc"][:, None]) / (0.5 * tr["fbw"][:, None])) ** 2)
    G *= _FRICATION_GAIN
    spec = stft(voiced) * torch.from_numpy(H.T) + stft(noise) * torch.from_numpy(G.T)
    audio = torch.istft(spec, N_FFT, HOP, window=window, length=n_samples).numpy()
    # Step 3: loudness: voiced parts at TARGET_RMS, peaks below PEAK, a faint noise floor.
    speaking = per_sample["av"] > 0.3
    rms = (
        float(np.sqrt(np.mean(audio[speaking] ** 2)))
        if speaking.any()
        else float(np.sqrt(np.mean(audio**2)))
    )
    gain = TARGET_RMS / max(rms, 1e-9)
    gain = min(gain, PEAK / max(float(np.abs(audio).max()), 1e-9))
    audio = audio * gain + rng.normal(0, 3e-4, n_samples)
    return audio.astype(np.float32)
