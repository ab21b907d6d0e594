"""Speech scripts: random syllables grouped in words and phrases, with timing and prosody.

A script is what a speaker says and how: timed phonemes (with stress), pitch accents and
phrases. ``vocoder`` turns it into audio; ``motion`` turns it into mouth and head movement.
Syllables are (C)(C)V(C); words have 1-3 syllables, phrases 3-8 words; phrases are separated by
pauses. Durations follow the speaker's rate, stressed syllables are longer and louder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from df_data.synthtalk.identity import Identity
from df_data.synthtalk.phonemes import PHONES

# Relative frequencies (roughly English) of the phonemes in each syllable position.
_ONSETS = {
    "p": 3, "b": 3, "t": 5, "d": 4, "k": 4, "g": 2, "f": 3, "v": 2, "T": 1, "D": 3, "s": 5,
    "z": 1, "S": 2, "h": 3, "m": 4, "n": 4, "l": 4, "r": 4, "w": 3, "j": 1,
}  # fmt: skip
_CODAS = {
    "p": 1,
    "t": 4,
    "d": 3,
    "k": 2,
    "s": 4,
    "z": 3,
    "m": 2,
    "n": 5,
    "N": 2,
    "l": 2,
    "r": 2,
    "f": 1,
    "T": 1,
}
_VOWELS = {"a": 4, "ae": 3, "e": 3, "i": 3, "I": 4, "o": 3, "u": 2, "U": 1, "@": 5, "3": 1}
_CLUSTER_FIRST = ("p", "b", "t", "k", "g", "f", "s")
_CLUSTER_SECOND = ("l", "r", "w")


@dataclass(frozen=True)
class PhoneEvent:
    start: float  # seconds
    end: float
    label: str  # a key of phonemes.PHONES
    stress: float  # 1 for a stressed syllable, about 0.6 unstressed


@dataclass
class Script:
    """Timed phonemes of one clip (pauses as "sil"), pitch accents and phrase spans."""

    phones: list[PhoneEvent]
    accents: list[tuple[float, float]] = field(default_factory=list)  # (time s, size semitones)
    phrases: list[tuple[float, float, bool]] = field(default_factory=list)  # (start, end, question)

    def labelled(self) -> list[tuple[float, float, str]]:
        """``(start_s, end_s, label)`` triples, the clip's phoneme annotation."""
        return [(p.start, p.end, p.label) for p in self.phones]


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    keys = list(table)
    weights = np.asarray([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def _syllable(rng: np.random.Generator) -> list[str]:
    phones = []
    r = rng.random()
    if r < 0.15:
        phones += [str(rng.choice(_CLUSTER_FIRST)), str(rng.choice(_CLUSTER_SECOND))]
    elif r < 0.85:
        phones.append(_pick(rng, _ONSETS))
    phones.append(_pick(rng, _VOWELS))
    if rng.random() < 0.45:
        phones.append(_pick(rng, _CODAS))
    return phones


def make_script(identity: Identity, seconds: float, rng: np.random.Generator) -> Script:
    """A random script filling ``seconds`` (the last phoneme is cut at the end)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    tempo = 4.5 / identity.speech_rate  # duration factor against the inventory's typical timing
    t = float(rng.uniform(0.15, 0.5))  # lead-in silence
    events = [PhoneEvent(0.0, t, "sil", 0.0)]
    accents: list[tuple[float, float]] = []
    phrases: list[tuple[float, float, bool]] = []
    while t < seconds:
        # Step 1: one phrase of words of syllables.
        start = t
        for w in range(int(rng.integers(3, 9))):
            n_syll = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
            stressed_syll = 0 if rng.random() < 0.7 else int(rng.integers(n_syll))
            for k in range(n_syll):
                stress = 1.0 if k == stressed_syll else float(rng.uniform(0.5, 0.7))
                for label in _syllable(rng):
                    phone = PHONES[label]
                    dur = phone.duration_ms / 1000.0 * tempo * float(rng.uniform(0.8, 1.2))
                    if phone.kind == "vowel":
                        dur *= 0.75 + 0.5 * stress
                        # Step 2: pitch accents on some stressed vowels (always the phrase's first).
                        if stress == 1.0 and (
                            not accents or accents[-1][0] < start or rng.random() < 0.45
                        ):
                            size = identity.prosody_semitones * float(rng.uniform(0.5, 1.0))
                            accents.append((t + 0.5 * dur, size))
                    events.append(PhoneEvent(t, t + dur, label, stress))
                    t += dur
            if w and rng.random() < 0.08:  # an occasional short hesitation between words
                pause = float(rng.uniform(0.08, 0.16))
                events.append(PhoneEvent(t, t + pause, "sil", 0.0))
                t += pause
        phrases.append((start, t, bool(rng.random() < 0.2)))
        # Step 3: a pause between phrases.
        pause = float(rng.uniform(0.25, 0.7))
        events.append(PhoneEvent(t, t + pause, "sil", 0.0))
        t += pause
    cut = [
        PhoneEvent(e.start, min(e.end, seconds), e.label, e.stress)
        for e in events
        if e.start < seconds
    ]
    return Script(cut, [a for a in accents if a[0] < seconds], phrases)
