"""Optional real synthetic speech from espeak-ng, with phoneme timings, to drive the mouth.

Uses libespeak-ng (Debian's ``libespeak-ng1``, installed with ``espeak-ng``) through ctypes:
synchronous synthesis with phoneme events gives the audio and the start sample of every
phoneme. espeak's phoneme mnemonics are mapped onto the SynthTalk inventory (``phonemes``).
When the library cannot be loaded, ``espeak_available()`` is False and callers fall back to the
formant synthesiser.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import lru_cache

import numpy as np
import torch
import torchaudio

from df_core.conventions import AUDIO_SAMPLE_RATE
from df_data.synthtalk.identity import Identity
from df_data.synthtalk.speech import PhoneEvent, Script

log = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED, _EVENT_END, _EVENT_MSG_TERMINATED, _EVENT_PHONEME = 0, 5, 6, 7
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_RATE, _PITCH, _RANGE = 1, 3, 4

_WORDS = (
    "the", "a", "we", "you", "they", "people", "time", "day", "water", "light", "house",
    "garden", "morning", "evening", "music", "story", "river", "mountain", "city", "road",
    "window", "friend", "family", "table", "paper", "money", "weather", "summer", "winter",
    "find", "make", "take", "give", "keep", "open", "close", "bring", "follow", "remember",
    "listen", "carry", "believe", "discover", "quickly", "slowly", "always", "never", "often",
    "really", "almost", "together", "around", "under", "over", "after", "before", "good",
    "bright", "small", "large", "quiet", "happy", "simple", "early", "heavy", "warm", "cold",
    "blue", "green", "yellow", "round",
)  # fmt: skip

# espeak-ng mnemonic prefixes (longest first) -> SynthTalk labels.
_MAP = (
    ("aI", "a"), ("aU", "a"), ("a#", "@"), ("a", "a"), ("A", "a"), ("&", "ae"), ("@", "@"),
    ("V", "@"), ("3", "3"), ("eI", "e"), ("e", "e"), ("E", "e"), ("i", "i"), ("I", "I"),
    ("OI", "o"), ("oU", "o"), ("O", "o"), ("o", "o"), ("0", "o"), ("u", "u"), ("U", "U"),
    ("tS", "S"), ("dZ", "Z"), ("p", "p"), ("b", "b"), ("t", "t"), ("d", "d"), ("k", "k"),
    ("g", "g"), ("f", "f"), ("v", "v"), ("T", "T"), ("D", "D"), ("s", "s"), ("z", "z"),
    ("S", "S"), ("Z", "Z"), ("h", "h"), ("m", "m"), ("n", "n"), ("N", "N"), ("l", "l"),
    ("r", "r"), ("w", "w"), ("j", "j"), ("_", "sil"),
)  # fmt: skip


def map_phoneme(mnemonic: str) -> str:
    """SynthTalk label of an espeak-ng phoneme mnemonic (unknown ones become "@")."""
    for prefix, label in _MAP:
        if mnemonic.startswith(prefix):
            return label
    return "@"


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _Engine:
    """The process-wide libespeak-ng instance (the library keeps global state)."""

    def __init__(self, lib: ctypes.CDLL, rate: int) -> None:
        self.lib, self.rate = lib, rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _CALLBACK(self._on_synth)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                self._events.append((ev.sample, ev.id.string.decode("ascii", "replace")))
            elif ev.type in (_EVENT_END, _EVENT_MSG_TERMINATED):
                self._events.append((ev.sample, "_"))
            i += 1
        return 0

    def say(
        self, text: str, *, pitch: int, rate: int, pitch_range: int
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Audio ``[N]`` at ``self.rate`` and (start sample, mnemonic) phoneme events."""
        self._chunks, self._events = [], []
        self.lib.espeak_SetVoiceByName(b"en-us")
        for param, value in ((_PITCH, pitch), (_RATE, rate), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, value, 0)
        data = text.encode("utf-8") + b"\0"
        self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return audio, sorted(self._events)


@lru_cache(maxsize=1)
def _engine() -> _Engine | None:
    names = [
        os.environ.get("ESPEAK_NG_LIBRARY"),
        ctypes.util.find_library("espeak-ng"),
        "libespeak-ng.so.1",
    ]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.espeak_Initialize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if rate > 0:
            return _Engine(lib, rate)
        log.warning("libespeak-ng at %s failed to initialise (no espeak-ng-data?)", name)
    return None


def espeak_available() -> bool:
    """Whether libespeak-ng (and its data) can be used in this process."""
    return _engine() is not None


def _sentence(rng: np.random.Generator) -> str:
    words = [str(w) for w in rng.choice(_WORDS, int(rng.integers(4, 10)))]
    return " ".join(words).capitalize() + str(rng.choice([".", ".", "?", ","]))


def _accents(audio: np.ndarray, identity: Identity) -> list[tuple[float, float]]:
    """Pitch accents at the loudness peaks (espeak reports no stress), at least 0.4 s apart."""
    hop = AUDIO_SAMPLE_RATE // 100
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    env = np.convolve(
        np.sqrt((frames**2).mean(1)), np.hanning(15) / np.hanning(15).sum(), mode="same"
    )
    if not len(env) or env.max() <= 0:
        return []
    thresh, out = np.percentile(env, 70), []
    for i in np.argsort(-env):
        if env[i] < thresh:
            break
        t = i * hop / AUDIO_SAMPLE_RATE
        if all(abs(t - a) >= 0.4 for a, _ in out):
            out.append((t, identity.prosody_semitones * float(env[i] / env.max())))
    return sorted(out)


def espeak_script(
    identity: Identity, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, Script]:
    """Random English sentences spoken by espeak-ng in the identity's voice: audio
    ``[n_samples]`` float32 at 16 kHz (loudness-normalised) and its timed phonemes."""
    engine = _engine()
    if engine is None:
        raise RuntimeError("libespeak-ng is not available; check espeak_available() first")
    pitch = int(np.interp(identity.f0_hz, [85, 235], [25, 80]))
    rate = int(np.interp(identity.speech_rate, [3.6, 5.6], [140, 200]))
    pitch_range = int(np.interp(identity.prosody_semitones, [2, 6], [30, 80]))
    pieces, events = [np.zeros(int(rng.uniform(0.15, 0.5) * AUDIO_SAMPLE_RATE), np.float32)], []
    offset = len(pieces[0])
    while offset < n_samples:
        audio, evs = engine.say(_sentence(rng), pitch=pitch, rate=rate, pitch_range=pitch_range)
        audio = torchaudio.functional.resample(
            torch.from_numpy(audio), engine.rate, AUDIO_SAMPLE_RATE
        ).numpy()
        events += [(offset + round(s * AUDIO_SAMPLE_RATE / engine.rate), m) for s, m in evs]
        pieces.append(audio)
        offset += len(audio)
    audio = np.concatenate(pieces)[:n_samples]
    audio = np.pad(audio, (0, n_samples - len(audio)))
    rms = (
        float(np.sqrt(np.mean(audio[np.abs(audio) > 0.01] ** 2)))
        if (np.abs(audio) > 0.01).any()
        else 1.0
    )
    audio = np.clip(
        audio * min(0.08 / max(rms, 1e-6), 0.9 / max(float(np.abs(audio).max()), 1e-6)), -1, 1
    )
    phones = [
        PhoneEvent(
            0.0,
            events[0][0] / AUDIO_SAMPLE_RATE if events else n_samples / AUDIO_SAMPLE_RATE,
            "sil",
            0.0,
        )
    ]
    for (start, mnemonic), (end, _) in zip(events, [*events[1:], (n_samples, "_")], strict=True):
        s, e = start / AUDIO_SAMPLE_RATE, min(end, n_samples) / AUDIO_SAMPLE_RATE
        if e > s and start < n_samples:
            phones.append(PhoneEvent(s, e, map_phoneme(mnemonic), 0.8))
    return audio.astype(np.float32), Script(phones, _accents(audio, identity), [])
