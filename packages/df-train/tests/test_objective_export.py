"""The objective's store-dependent parts and the export: normalised structure (and L_aux in the
same units), L_lip on predicted clean latents in the mouth boxes, and the inference bundle."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from df_core import frame_mse
from df_data.store import (
    CLIPS_DIR,
    MOUTH_BOX_FILE,
    STORE_INFO_NAME,
    STRUCT_STATS_NAME,
    read_clip,
    struct_stats,
)
from df_models import DualForceDiT
from df_models.bundle import read_bundle
from df_models.codecs import codec_identity, load_codec
from df_train.config import apply_overrides
from df_train.losses import weighted_frame_mse
from df_train.objective import mouth_boxes, video_pixel_weights
from df_train.recipes import get_recipe
from df_train.trainer import Trainer


def tiny_config(store, out, *sets, **changes):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"), [f"data.store={store}", f"out_dir={out}", *sets]
    )
    return dataclasses.replace(config, **changes)


def _store_copy(tiny_store, tmp_path, *, boxes: bool):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    if not boxes:
        for path in (store / CLIPS_DIR).glob(f"*/{MOUTH_BOX_FILE}"):
            path.unlink()
    return store


# Structure normalisation ----------------------------------------------------------------------


def test_struct_is_normalised_and_the_run_keeps_its_statistics(tiny_store, tmp_path):
    trainer = Trainer(tiny_config(tiny_store, tmp_path, steps=2))
    stats = trainer.struct_stats
    assert stats == struct_stats(tiny_store) and len(stats.names) == 11
    sample = trainer.dataset[0]
    raw = read_clip(tiny_store, sample["clip_id"]).struct[sample["start"] : sample["start"] + 4]
    torch.testing.assert_close(sample["struct"], stats.normalize(raw))
    # Mixed units made unit-scale: over the train split every dimension has std ~ 1.
    all_raw = torch.cat(
        [read_clip(tiny_store, e["clip_id"]).struct for e in trainer.dataset.entries]
    )
    normalised = stats.normalize(all_raw)
    assert normalised.mean(0).abs().max() < 1e-4
    assert ((normalised.std(0, unbiased=False) - 1).abs() < 1e-3).all()
    trainer.fit(progress=False)
    saved = json.loads((tmp_path / STRUCT_STATS_NAME).read_text())
    assert saved["mean"] == list(stats.mean)
    # L_aux compares the struct stream's estimate with the batch's (normalised) structure: a
    # perfect velocity gives s0_hat equal to the labels, so L_aux is 0.
    aux = tiny_config(tiny_store, tmp_path / "aux", "loss.lambda_aux=1.0")
    t = Trainer(aux)
    batch = next(iter(t._loader(0)))
    from df_train.losses import aux_struct_loss

    x0 = batch["struct"]
    eps = torch.randn(x0.shape)
    sigma = torch.rand(x0.shape[:2])
    s = (1 - sigma[..., None]) * x0 + sigma[..., None] * eps
    s0_hat = s - sigma[..., None] * (eps - x0)
    assert float(aux_struct_loss(s0_hat, x0, torch.ones(x0.shape[:2], dtype=torch.bool))) < 1e-10
    _, terms = t.loss(batch)
    assert torch.isfinite(terms["loss_aux"]) and float(terms["loss_aux"]) > 0


def test_resume_keeps_the_runs_statistics_when_the_store_changes(tiny_store, tmp_path):
    store = _store_copy(tiny_store, tmp_path, boxes=True)
    config = tiny_config(store, tmp_path / "run", steps=4, ckpt_every=2)
    first = Trainer(config)
    first.fit(max_steps=2, progress=False)
    original = first.struct_stats
    # The store's statistics change (e.g. more clips): a resumed run keeps its own.
    changed = dataclasses.replace(original, mean=tuple(m + 1.0 for m in original.mean))
    (store / STRUCT_STATS_NAME).write_text(json.dumps(changed.to_dict()))
    again = Trainer(config)
    assert again.struct_stats == changed
    assert again.resume() and again.struct_stats == original


# L_lip ----------------------------------------------------------------------------------------


def test_lip_loss_is_finite_and_trains_the_model_through_x0_hat(tiny_store, tmp_path):
    assert read_clip(tiny_store, "train-clip_00000").mouth_box is not None
    config = tiny_config(
        tiny_store, tmp_path, "loss.lambda_lip=0.5", "loss.audio_drop_prob=0.0", steps=3
    )
    trainer = Trainer(config)
    batch = next(iter(trainer._loader(0)))
    assert batch["has_mouth_box"].all()
    _, terms = trainer.loss(batch)
    assert torch.isfinite(terms["loss_lip"]) and torch.isfinite(terms["loss_lip_heads"])
    # The generator's term reaches the model, not the heads (they are frozen for it).
    terms["loss_lip"].backward(retain_graph=True)
    model_grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert model_grads and sum(float(g.abs().sum()) for g in model_grads) > 0
    assert all(p.grad is None for p in trainer.lip.parameters())
    # The heads' term trains the heads only (ground-truth latents carry no model gradient).
    trainer.model.zero_grad(set_to_none=True)
    terms["loss_lip_heads"].backward()
    assert all(p.grad is None for p in trainer.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.lip.parameters())
    trainer.model.zero_grad(set_to_none=True)
    trainer.lip.zero_grad(set_to_none=True)
    history = trainer.fit(progress=False)
    assert all(not m.skipped and m.loss_lip > 0 for m in history)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss_lip"] == history[-1].loss_lip


def test_lambda_lip_zero_has_no_lip_term(tiny_store, tmp_path):
    trainer = Trainer(tiny_config(tiny_store, tmp_path, "loss.lambda_lip=0.0"))
    assert trainer.lip is None
    _, terms = trainer.loss(next(iter(trainer._loader(0))))
    assert "loss_lip" not in terms


def test_lip_weight_scales_only_the_generator_term(tiny_store, tmp_path):
    def total_of(lam):
        t = Trainer(tiny_config(tiny_store, tmp_path / str(lam), f"loss.lambda_lip={lam}"))
        total, terms = t.loss(next(iter(t._loader(0))))
        return total, terms

    t1, terms1 = total_of(0.25)
    t2, terms2 = total_of(0.75)
    torch.testing.assert_close(terms1["loss_lip"], terms2["loss_lip"])
    torch.testing.assert_close(t2 - t1, 0.5 * terms1["loss_lip"])


def test_store_without_mouth_boxes_still_trains_with_lambda_lip(tiny_store, tmp_path):
    store = _store_copy(tiny_store, tmp_path, boxes=False)
    trainer = Trainer(tiny_config(store, tmp_path / "run", "loss.lambda_lip=0.5", steps=3))
    batch = next(iter(trainer._loader(0)))
    assert not batch["has_mouth_box"].any()
    _, terms = trainer.loss(batch)
    assert "loss_lip" not in terms
    history = trainer.fit(progress=False)
    assert len(history) == 3 and all(not m.skipped and m.loss_lip == 0.0 for m in history)


def test_mouth_weight_moves_the_video_loss_to_the_mouth_box(tiny_store, tmp_path):
    trainer = Trainer(tiny_config(tiny_store, tmp_path / "w", "loss.mouth_weight=10.0"))
    batch = next(iter(trainer._loader(0)))
    assert batch["has_mouth_box"].all()
    B, T, C, H, W = batch["latents"].shape
    box = mouth_boxes(batch, (H, W), trainer.device)
    # A unit error on the latent pixels entirely inside the box, and one on those entirely
    # outside it (pixels the box edge cuts through carry neither).
    cols, rows = torch.arange(W), torch.arange(H)
    in_x = (cols >= box[..., 0, None]) & (cols + 1 <= box[..., 2, None])
    in_y = (rows >= box[..., 1, None]) & (rows + 1 <= box[..., 3, None])
    out_x = (cols + 1 <= box[..., 0, None]) | (cols >= box[..., 2, None])
    out_y = (rows + 1 <= box[..., 1, None]) | (rows >= box[..., 3, None])
    inside = (in_y[..., :, None] & in_x[..., None, :])[:, :, None].expand(B, T, C, H, W)
    outside = (out_y[..., :, None] | out_x[..., None, :])[:, :, None].expand(B, T, C, H, W)
    zero = torch.zeros(B, T, C, H, W)
    plain = Trainer(tiny_config(tiny_store, tmp_path / "p"))
    weights = video_pixel_weights(batch, 10.0, (H, W), trainer.device)
    for err, grows in ((inside, True), (outside, False)):
        frames = err.flatten(2).any(2)  # frames with such pixels (tiny boxes may have none)
        assert frames.any()
        weighted = weighted_frame_mse(err.float(), zero, weights)[frames]
        uniform = frame_mse(err.float(), zero)[frames]
        assert ((weighted > uniform) if grows else (weighted < uniform)).all()
    # The objective runs, and only the video term changes with the weight.
    torch.manual_seed(0)
    _, terms_w = trainer.loss(batch)
    _, terms_p = plain.loss(batch)
    assert torch.isfinite(terms_w["loss_video"])
    torch.testing.assert_close(terms_w["loss_struct"], terms_p["loss_struct"])
    assert not torch.equal(terms_w["loss_video"], terms_p["loss_video"])


def test_mouth_weight_without_mouth_boxes_is_the_plain_loss(tiny_store, tmp_path):
    store = _store_copy(tiny_store, tmp_path, boxes=False)
    weighted = Trainer(tiny_config(store, tmp_path / "w", "loss.mouth_weight=10.0"))
    plain = Trainer(tiny_config(store, tmp_path / "p"))
    batch = next(iter(weighted._loader(0)))
    assert not batch["has_mouth_box"].any()
    torch.testing.assert_close(weighted.loss(batch)[1], plain.loss(batch)[1])


# The inference bundle ---------------------------------------------------------------------------


def test_export_bundle_reads_back_and_loads(tiny_store, tmp_path):
    trainer = Trainer(tiny_config(tiny_store, tmp_path, "noise.shift=2.5", steps=3))
    trainer.fit(progress=False)
    path = trainer.export_bundle(tmp_path / "bundle")
    model_dir, codec_dir, meta = read_bundle(path)
    model = DualForceDiT.from_pretrained(model_dir)
    for k, v in model.state_dict().items():
        assert torch.equal(v, trainer.ema[k].to(v.dtype)), k
    clip = read_clip(tiny_store, trainer.dataset.entries[0]["clip_id"]).metadata
    assert codec_identity(load_codec(codec_dir)) == clip["codec"]
    stats = trainer.struct_stats
    assert meta.audio_encoder == clip["audio_encoder"]
    assert meta.image_size == (32, 32) and meta.struct_names == tuple(clip["struct_names"])
    assert meta.struct_mean == stats.mean and meta.struct_std == stats.std
    assert (meta.noise_shift, meta.sigma_s_max, meta.sigma_ctx) == (2.5, 0.7, 0.0)
    assert meta.extra["recipe"] == "synthtalk_tiny" and meta.extra["step"] == 3
    # export_ema still writes the model alone.
    assert DualForceDiT.from_pretrained(trainer.export_ema(tmp_path / "ema")) is not None


def test_export_bundle_needs_the_stores_codec(tiny_store, tmp_path):
    store = _store_copy(tiny_store, tmp_path, boxes=True)
    (store / STORE_INFO_NAME).unlink()
    trainer = Trainer(tiny_config(store, tmp_path / "run", steps=1))
    with pytest.raises(ValueError, match=r"data\.codec_dir"):
        trainer.export_bundle(tmp_path / "b1")
    # A codec directory with other weights than the store's latents were made with.
    from df_models.codecs import TinyAutoencoder, tiny_autoencoder_debug

    torch.manual_seed(123)
    other = TinyAutoencoder(tiny_autoencoder_debug())
    other.init_weights()
    other.save_pretrained(tmp_path / "other")
    wrong = Trainer(tiny_config(store, tmp_path / "run", f"data.codec_dir={tmp_path / 'other'}"))
    with pytest.raises(ValueError, match="were made with"):
        wrong.export_bundle(tmp_path / "b2")
    missing = Trainer(tiny_config(store, tmp_path / "run", f"data.codec_dir={tmp_path / 'no'}"))
    with pytest.raises(ValueError, match="does not exist"):
        missing.export_bundle(tmp_path / "b3")
    assert not any((tmp_path / name).exists() for name in ("b1", "b2", "b3"))
