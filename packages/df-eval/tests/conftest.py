"""A tiny SynthTalk corpus and a probe trained on it, shared by the whole test session."""

from __future__ import annotations

import pytest

from df_data.synthtalk import generate_corpus
from df_eval.probe import ProbeConfig, load_or_train_probe

# 20 train speakers x 2 clips of 1 s and 4 held-out speakers x 2 clips, 64x64: about 7 s to
# synthesise. Many short clips rather than a few long ones: the probe generalises to new
# speakers with the number of training speakers.
CORPUS = {"clips": 40, "test_clips": 8, "seconds": 1.0, "size": 64, "seed": 0}
# The probe's training budget in the tests (the library default trains longer).
TEST_PROBE = ProbeConfig(steps=300, batch_size=32, augment=False)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthtalk")
    generate_corpus(root, progress=False, **CORPUS)
    return root


@pytest.fixture(scope="session")
def probe_config():
    return TEST_PROBE


@pytest.fixture(scope="session")
def probe(corpus):
    return load_or_train_probe(corpus, TEST_PROBE, progress=False)
