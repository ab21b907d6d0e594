"""The SynthTalk phoneme inventory: acoustics (formants, noise) and viseme targets.

Formants are an adult male's (Peterson & Barney 1952 averages for the vowels); a speaker scales
them by ``Identity.formant_scale``. Viseme targets are in the units of ``structure``: ``jaw``
opening, ``lip_spread`` and ``lip_round`` in [0, 1]. Labels are ASCII (Kirshenbaum-like):
``@`` schwa, ``3`` the r-coloured vowel, ``T``/``D`` the "th" sounds, ``S``/``Z`` "sh"/"zh",
``N`` "ng", ``sil`` a pause.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("vowel", "plosive", "fricative", "nasal", "approximant", "aspirate", "silence")


@dataclass(frozen=True)
class Phone:
    label: str
    kind: str  # one of KINDS
    voiced: bool
    formants: tuple[float, float, float]  # F1, F2, F3 in Hz (vowels, nasals, approximants)
    jaw: float  # viseme target, [0, 1]
    spread: float
    round: float
    noise_hz: float = 0.0  # centre of the burst or frication noise band
    noise_bw: float = 0.0  # its width in Hz
    noise_gain: float = 0.0  # its amplitude relative to a stressed vowel
    duration_ms: float = 70.0  # typical duration at 4.5 syllables per second

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Phone.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("jaw", "spread", "round"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Phone.{name} must be in [0, 1], got {getattr(self, name)}")


_NEUTRAL = (500.0, 1500.0, 2500.0)


def _v(label, f1, f2, f3, jaw, spread, rnd, ms=110.0):
    return Phone(label, "vowel", True, (f1, f2, f3), jaw, spread, rnd, duration_ms=ms)


def _c(label, kind, voiced, jaw, spread, rnd, noise=(0.0, 0.0, 0.0), formants=_NEUTRAL, ms=70.0):
    return Phone(label, kind, voiced, formants, jaw, spread, rnd, *noise, duration_ms=ms)


PHONES: dict[str, Phone] = {
    p.label: p
    for p in (
        _v("a", 730, 1090, 2440, 1.00, 0.25, 0.00, 130),  # father
        _v("ae", 660, 1720, 2410, 0.85, 0.55, 0.00, 125),  # cat
        _v("e", 530, 1840, 2480, 0.60, 0.60, 0.00),  # bed
        _v("i", 270, 2290, 3010, 0.18, 1.00, 0.00),  # see
        _v("I", 390, 1990, 2550, 0.32, 0.70, 0.00, 90),  # sit
        _v("o", 570, 840, 2410, 0.70, 0.00, 0.75, 125),  # law
        _v("u", 300, 870, 2240, 0.15, 0.00, 1.00),  # boot
        _v("U", 440, 1020, 2240, 0.32, 0.00, 0.60, 90),  # book
        _v("@", 640, 1190, 2390, 0.55, 0.15, 0.10, 90),  # cup, schwa
        _v("3", 490, 1350, 1690, 0.38, 0.10, 0.45),  # bird
        _c("p", "plosive", False, 0.0, 0.10, 0.0, (1000, 1500, 0.5)),
        _c("b", "plosive", True, 0.0, 0.10, 0.0, (1000, 1500, 0.35)),
        _c("t", "plosive", False, 0.15, 0.30, 0.0, (4200, 2000, 0.55)),
        _c("d", "plosive", True, 0.15, 0.30, 0.0, (4200, 2000, 0.4)),
        _c("k", "plosive", False, 0.25, 0.20, 0.0, (2200, 1200, 0.55)),
        _c("g", "plosive", True, 0.25, 0.20, 0.0, (2200, 1200, 0.4)),
        _c("f", "fricative", False, 0.10, 0.20, 0.0, (5500, 5000, 0.10), ms=90),
        _c("v", "fricative", True, 0.10, 0.20, 0.0, (5500, 5000, 0.07), ms=70),
        _c("T", "fricative", False, 0.15, 0.25, 0.0, (6000, 4000, 0.08), ms=85),
        _c("D", "fricative", True, 0.15, 0.25, 0.0, (6000, 4000, 0.06), ms=55),
        _c("s", "fricative", False, 0.10, 0.60, 0.0, (5800, 2200, 0.30), ms=100),
        _c("z", "fricative", True, 0.10, 0.60, 0.0, (5800, 2200, 0.20), ms=80),
        _c("S", "fricative", False, 0.15, 0.10, 0.70, (3000, 1600, 0.35), ms=100),
        _c("Z", "fricative", True, 0.15, 0.10, 0.70, (3000, 1600, 0.25), ms=80),
        _c("h", "aspirate", False, 0.35, 0.20, 0.0, (0.0, 0.0, 0.25), ms=60),
        _c("m", "nasal", True, 0.0, 0.10, 0.0, formants=(250, 1100, 2300), ms=75),
        _c("n", "nasal", True, 0.15, 0.30, 0.0, formants=(250, 1500, 2500), ms=65),
        _c("N", "nasal", True, 0.25, 0.20, 0.0, formants=(250, 2000, 2700), ms=70),
        _c("l", "approximant", True, 0.30, 0.20, 0.0, formants=(360, 1300, 2700), ms=60),
        _c("r", "approximant", True, 0.25, 0.10, 0.50, formants=(310, 1060, 1380), ms=60),
        _c("w", "approximant", True, 0.10, 0.00, 0.90, formants=(290, 610, 2150), ms=55),
        _c("j", "approximant", True, 0.15, 0.80, 0.00, formants=(260, 2070, 3020), ms=50),
        Phone("sil", "silence", False, _NEUTRAL, 0.0, 0.0, 0.0, duration_ms=300.0),
    )
}
VOWELS = tuple(label for label, p in PHONES.items() if p.kind == "vowel")
CONSONANTS = tuple(label for label, p in PHONES.items() if p.kind not in ("vowel", "silence"))
