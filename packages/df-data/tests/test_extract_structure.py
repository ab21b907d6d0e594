"""Extraction with structure extractors and pretrained codecs: the structure's metadata (names,
mirror rule, per-clip values, mouth boxes) in the store, one structure per store, job-array
shards, chunk sizes that do not change a Wan VAE's latents, and the CLI's argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import submitit
import torch

from df_core.cli import main as dualforce
from df_data.dataset import WindowConfig, WindowDataset
from df_data.extract import extract_store
from df_data.extract_run import ExtractConfig, run_extract, submit_extract_shards
from df_data.media import write_video, write_wav
from df_data.store import load_manifest, read_clip, read_store_info
from df_data.structure import StructMirror, StructResult
from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug
from df_models.liveportrait import MotionExtractor, MotionExtractorConfig

TINY_LP = MotionExtractorConfig(depths=(1, 1, 1, 1), dims=(8, 8, 8, 16))


def real_source(root: Path, name: str, frames: int = 9, size: int = 32, seed: int = 0) -> Path:
    """A prepared-style clip: video, audio, metadata with empty struct_names, no ground truth."""
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    video = rng.integers(0, 256, (frames, size, size, 3)).astype(np.uint8)
    write_video(d / "video.mp4", video, fps=25)
    write_wav(d / "audio.wav", 0.1 * rng.standard_normal(frames * 640))
    meta = {"fps": 25, "frames": frames, "split": "train", "struct_names": []}
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("real")
    for i in range(3):
        real_source(src, f"clip{i}", seed=i)
    return src


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    codec = TinyAutoencoder(tiny_autoencoder_debug())
    codec.init_weights()
    path = tmp_path_factory.mktemp("codec") / "tiny"
    codec.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lp_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = MotionExtractor(TINY_LP)
    model.init_weights()
    path = tmp_path_factory.mktemp("lp") / "motion_extractor.pth"
    torch.save(model.state_dict(), path)
    return path


class Boxes:
    """A stand-in extractor with a mirror rule, mouth boxes and a per-clip value."""

    name = "boxes (test)"
    names = ("yaw", "eye_l", "eye_r")
    mirror = StructMirror(negate=("yaw",), swap=(("eye_l", "eye_r"),))

    def identity(self):
        return {"name": self.name, "config_hash": "1"}

    def __call__(self, frames_THWC):
        t = frames_THWC.shape[0]
        struct = torch.arange(3 * t, dtype=torch.float32).reshape(t, 3)
        box = torch.tensor([[4.0, 8.0, 12.0, 16.0]]).expand(t, 4)
        return StructResult(struct, box, {"answer": [42.0]})


def test_structure_metadata_travels_into_the_store(sources, codec_dir, tmp_path):
    store = tmp_path / "store"
    summary = extract_store(
        sources, store, codec=codec_dir, progress=False, struct_extractor=Boxes()
    )
    assert summary["written"] == 3
    record = read_clip(store, "train-clip0")
    meta = record.metadata
    assert meta["struct_names"] == ["yaw", "eye_l", "eye_r"]
    assert meta["struct_mirror"] == {"known": True, "negate": ["yaw"], "swap": [["eye_l", "eye_r"]]}
    assert meta["struct_per_clip"] == {"answer": [42.0]}
    assert meta["mouth_box_source"] == "structure extractor boxes (test)"
    assert record.mouth_box[0].tolist() == [4.0, 8.0, 12.0, 16.0]
    assert read_store_info(store)["struct_extractor"] == {
        "name": "boxes (test)",
        "config_hash": "1",
    }
    flipped = WindowDataset(store, WindowConfig(frames=2, hflip_prob=1.0))[0]
    plain = WindowDataset(store, WindowConfig(frames=2))[0]
    assert torch.equal(flipped["struct"][:, 0], -plain["struct"][:, 0])
    assert torch.equal(flipped["struct"][:, 1:], plain["struct"][:, [2, 1]])
    with pytest.raises(ValueError, match=r"written with structure.*boxes"):
        extract_store(sources, store, codec=codec_dir, progress=False)  # ground truth now


def test_liveportrait_store_refuses_flips(sources, codec_dir, lp_weights, tmp_path):
    from df_data.structure.liveportrait import LivePortraitExtractor

    store = tmp_path / "store"
    extractor = LivePortraitExtractor(lp_weights, config=TINY_LP)
    extract_store(sources, store, codec=codec_dir, progress=False, struct_extractor=extractor)
    record = read_clip(store, "train-clip1")
    assert record.struct.shape == (9, 70) and record.metadata["struct_mirror"] == {"known": False}
    assert len(record.metadata["struct_per_clip"]["kp"]) == 63
    assert record.mouth_box is None  # no landmarks file in these sources, and LP gives none
    with pytest.raises(ValueError, match="no known mirror"):
        WindowDataset(store, WindowConfig(frames=2, hflip_prob=0.5))


def test_weights_of_another_architecture_are_named(sources, codec_dir, lp_weights, tmp_path):
    cfg = ExtractConfig(codec=str(codec_dir), struct="liveportrait", struct_weights=str(lp_weights))
    whole = tmp_path / "whole"
    # The default architecture cannot load tiny weights: the error names the file and keys.
    with pytest.raises(ValueError, match=r"motion_extractor\.pth.*missing keys"):
        run_extract(sources, whole, cfg, progress=False)


def test_shards_over_a_job_array(sources, codec_dir, tmp_path, monkeypatch):
    import df_data.extract_run as extract_run

    # The tiny architecture for every task (a real run uses LivePortrait's).
    real_build = extract_run.build_struct_extractor
    monkeypatch.setattr(
        extract_run,
        "build_struct_extractor",
        lambda *a, **k: Boxes() if a[0] == "mesh" else real_build(*a, **k),
    )
    cfg = ExtractConfig(codec=str(codec_dir), struct="mesh")
    executor = submitit.DebugExecutor(folder=str(tmp_path / "submitit"))
    jobs = submit_extract_shards(sources, tmp_path / "sharded", cfg, 2, executor)
    written = sum(job.result()["written"] for job in jobs)
    assert written == 3 and {e["clip_id"] for e in load_manifest(tmp_path / "sharded")} == {
        "train-clip0",
        "train-clip1",
        "train-clip2",
    }
    run_extract(sources, tmp_path / "one", cfg, progress=False)
    for cid in ("train-clip0", "train-clip2"):
        a, b = read_clip(tmp_path / "sharded", cid), read_clip(tmp_path / "one", cid)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.struct, b.struct)
    assert run_extract(sources, tmp_path / "sharded", cfg, progress=False)["skipped_finished"] == 3


@pytest.mark.slow
def test_wan_chunk_size_does_not_change_the_store(tmp_path):
    pytest.importorskip("diffusers")
    from df_models.testing import tiny_wan_vae

    tiny_wan_vae([0.1, -0.2, 0.3, -0.4], [1.5, 2.0, 0.5, 3.0]).save_pretrained(tmp_path / "wan")
    src = tmp_path / "src"
    real_source(src, "a", frames=13, size=16)
    stores = {}
    for chunk in (1, 100):
        out = tmp_path / f"store{chunk}"
        cfg = ExtractConfig(codec=str(tmp_path / "wan"), struct="mesh", batch_frames=chunk)
        extract_store(
            src, out, codec=cfg.codec, batch_frames=chunk, progress=False, struct_extractor=Boxes()
        )
        stores[chunk] = read_clip(out, "train-a")
    assert stores[1].latents.shape[0] == 4 and stores[1].metadata["frames_per_latent"] == 4
    for chunk in (100,):
        torch.testing.assert_close(
            stores[chunk].latents.float(), stores[1].latents.float(), atol=2e-3, rtol=1e-3
        )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--struct", "liveportrait"], "(--struct-weights) is required"),
        (["--struct", "mesh", "--struct-weights", "x.pth"], "got struct='mesh'"),
        (["--batch-frames", "0"], "--batch_frames must be at least 1"),
        (["--codec-revision", "main"], "applies to hub ids"),
    ],
)
def test_cli_argument_errors(sources, codec_dir, tmp_path, capsys, flags, message):
    argv = ["data", "extract", "--src", str(sources), "--out", str(tmp_path / "s")]
    assert dualforce([*argv, "--codec", str(codec_dir), *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_extractor_is_used_for_sources_with_ground_truth_too(sources, codec_dir, tmp_path):
    """One structure per store: ground truth is replaced, its mouth boxes kept when the
    extractor has none."""
    from safetensors.torch import save_file

    src = tmp_path / "gt"
    d = real_source(src, "g")
    box = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).expand(9, 4).contiguous()
    save_file({"struct": torch.zeros(9, 2), "mouth_box": box}, str(d / "gt.safetensors"))
    meta = json.loads((d / "metadata.json").read_text())
    (d / "metadata.json").write_text(json.dumps({**meta, "struct_names": ["a", "b"]}))

    class NoBoxes(Boxes):
        def __call__(self, frames_THWC):
            return super().__call__(frames_THWC).struct

    extract_store(src, tmp_path / "s", codec=codec_dir, progress=False, struct_extractor=NoBoxes())
    record = read_clip(tmp_path / "s", "train-g")
    assert record.metadata["struct_names"] == ["yaw", "eye_l", "eye_r"]
    assert record.struct[1].tolist() == [3.0, 4.0, 5.0] and record.mouth_box[0, 0] == 1.0
    assert record.metadata["mouth_box_source"].startswith("the source's own")
    extract_store(src, tmp_path / "t", codec=codec_dir, progress=False)  # ground truth
    assert read_clip(tmp_path / "t", "train-g").struct.shape == (9, 2)
