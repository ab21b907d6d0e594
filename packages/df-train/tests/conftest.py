"""A tiny SynthTalk clip store shared by the df-train tests (built once per session), and a\nrunner for multi-process (gloo) tests."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_workers(tmp_path):
    """``run(fn, args, world, timeout_s)`` runs ``fn(rank, port, *args)`` in ``world`` forked
    processes rendezvousing on a free loopback port, and fails the test with the workers'
    tracebacks (each worker writes ``*.err`` into ``tmp_path`` on error) or on a timeout.

    fork: the children reuse this process's imports (a fresh interpreter spends seconds
    importing torch); the parent holds no process group and the children never touch CUDA.
    """

    def run(fn, args: tuple, world: int, timeout_s: float) -> None:
        ctx = mp.start_processes(
            fn, args=(_free_port(), *args), nprocs=world, join=False, start_method="fork"
        )
        deadline = time.monotonic() + timeout_s
        finished = False
        try:
            # join returns once any process ends (True when all have): wait for the rest.
            while not finished and time.monotonic() < deadline:
                finished = ctx.join(timeout=max(1.0, deadline - time.monotonic()))
        except Exception as e:
            errors = "\n".join(p.read_text() for p in tmp_path.glob("*.err"))
            raise AssertionError(f"worker failed:\n{errors}") from e
        if not finished:
            for process in ctx.processes:
                process.kill()
            pytest.fail(f"workers still running after {timeout_s} s")

    return run
