"""A tiny SynthTalk clip store shared by the df-train tests (built once per session)."""

from __future__ import annotations

import pytest
import torch

from df_data.extract import extract_store
from df_data.synthtalk import generate_corpus
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthtalk")
    generate_corpus(root / "corpus", clips=4, seconds=1.6, size=32, test_clips=1, progress=False)
    return root / "corpus"


@pytest.fixture(scope="session")
def tiny_store(tiny_corpus) -> str:
    root = tiny_corpus.parent
    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())  # 32x32 frames -> 4 x 8 x 8 latents
    codec.init_weights()
    codec.save_pretrained(root / "codec")
    extract_store(tiny_corpus, root / "store", codec=root / "codec", progress=False)
    return str(root / "store")
