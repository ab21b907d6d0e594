"""The trainer: the loss falls, resume is exact, interrupted checkpoints are harmless, and bad
configuration is reported clearly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from df_train.checkpoint import latest_checkpoint, list_checkpoints
from df_train.config import apply_overrides
from df_train.optim import lr_lambda
from df_train.recipes import get_recipe
from df_train.trainer import Trainer, TrainingAbortedError


def tiny_config(store, out, **changes):
    config = apply_overrides(
        get_recipe("synthtalk_tiny"), [f"data.store={store}", f"out_dir={out}"]
    )
    return dataclasses.replace(config, **changes)


def test_loss_falls_on_a_tiny_store(tiny_store, tmp_path):
    config = tiny_config(tiny_store, tmp_path, steps=150, ckpt_every=1000)
    history = Trainer(config).fit(progress=False)

    def mean(key, part):
        return sum(getattr(m, key) for m in part) / len(part)

    # Structure is normalised to unit variance, so its velocity loss starts near 2 (eps and
    # x0 both unit variance) and falls slowly; the video loss falls by more than half.
    first, last = mean("loss", history[:15]), mean("loss", history[-15:])
    assert last < 0.8 * first, (first, last)
    assert mean("loss_video", history[-15:]) < 0.6 * mean("loss_video", history[:15])
    assert mean("loss_struct", history[-15:]) < mean("loss_struct", history[:15])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 150 and "tokens_per_s" in json.loads(lines[-1])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("learned_weights", "grad_accum", "num_workers"), [(False, 1, 0), (True, 2, 2)]
)
def test_resume_is_exact(tiny_store, tmp_path, learned_weights, grad_accum, num_workers):
    """2N steps equal N steps, stop, resume, N steps: identical losses, weights and EMA
    weights, also with several micro-batches per step and DataLoader workers."""
    sets = [
        f"loss.uncertainty_weighting={learned_weights}",
        "loss.lambda_aux=0.3",
        f"grad_accum={grad_accum}",
        f"data.num_workers={num_workers}",
    ]

    def cfg(out):
        return apply_overrides(tiny_config(tiny_store, out, steps=12, ckpt_every=6), sets)

    full = Trainer(cfg(tmp_path / "a"))
    history = full.fit(progress=False)
    first = Trainer(cfg(tmp_path / "b"))
    part1 = first.fit(max_steps=6, progress=False)
    del first
    second = Trainer(cfg(tmp_path / "b"))
    assert second.resume() and second.step == 6
    part2 = second.fit(progress=False)
    assert [m.loss for m in part1 + part2] == [m.loss for m in history]
    assert len({m.loss for m in history}) == len(history)  # the steps differ: a real comparison
    # The final checkpoint holds the same state as the uninterrupted run, EMA included.
    reloaded = Trainer(cfg(tmp_path / "b"))
    assert reloaded.resume() and reloaded.step == 12
    for trainer in (second, reloaded):
        for k, v in full.model.state_dict().items():
            assert torch.equal(v, trainer.model.state_dict()[k]), k
        assert full.ema.keys() == trainer.ema.keys()
        for k, v in full.ema.items():
            assert torch.equal(v, trainer.ema[k]), k
        if learned_weights:
            assert torch.equal(full.weighting.log_vars, trainer.weighting.log_vars)
    # The EMA is its own state, not a copy of the weights (decay 0.99 over 12 steps).
    weights = full.model.state_dict()
    assert any(not torch.equal(v, weights[k].float()) for k, v in full.ema.items())


def test_interrupted_checkpoint_leaves_the_previous_one_usable(tiny_store, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tiny_store, tmp_path, steps=4, ckpt_every=2, keep_last=5))
    trainer.fit(max_steps=2, progress=False)
    good = latest_checkpoint(tmp_path)
    import df_train.checkpoint as ckpt

    def crash(state, checkpoint_id):
        (ckpt.Path(checkpoint_id)).mkdir(parents=True, exist_ok=True)
        (ckpt.Path(checkpoint_id) / "half-written").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.dcp, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    again = Trainer(tiny_config(tiny_store, tmp_path, steps=4, ckpt_every=2, keep_last=5))
    assert again.resume() and again.step == 2
    again.fit(progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]


def test_non_finite_losses_are_skipped_then_abort(tiny_store, tmp_path, monkeypatch):
    config = tiny_config(tiny_store, tmp_path, steps=10)
    config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, max_nan_skips=2))
    trainer = Trainer(config)
    monkeypatch.setattr(trainer, "loss", lambda batch: (torch.tensor(float("nan")), {}))
    with pytest.raises(TrainingAbortedError, match="max_nan_skips=2"):
        trainer.fit(progress=False)
    assert trainer.nan_skips == 3


def test_bad_configuration_is_reported(tiny_store, tmp_path):
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="unknown field 'lrr'"):
        apply_overrides(get_recipe("synthtalk_tiny"), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="cannot parse"):
        apply_overrides(get_recipe("synthtalk_tiny"), ["steps=many"])
    with pytest.raises(ValueError, match=r"TrainConfig\.batch_size"):
        apply_overrides(get_recipe("synthtalk_tiny"), ["batch_size=0"])
    wrong = apply_overrides(
        tiny_config(tiny_store, tmp_path), ["model.video_dim=32", "model.latent_channels=8"]
    )
    with pytest.raises(ValueError, match="latent_channels"):
        Trainer(wrong)
    with pytest.raises(ValueError, match=r"no clips|manifest"):
        Trainer(tiny_config(tmp_path / "empty", tmp_path))


def test_the_models_audio_context_sets_the_training_windows(tiny_store, tmp_path):
    """The model's audio context is the only one: the trainer cuts the store's audio windows
    to it (the store holds features for any context)."""
    config = apply_overrides(tiny_config(tiny_store, tmp_path), ["model.audio_context=1"])
    trainer = Trainer(config)
    assert config.model.audio_window < get_recipe("synthtalk_tiny").model.audio_window
    assert trainer.dataset[0]["audio"].shape[0] == config.data.frames
    assert trainer.dataset[0]["audio"].shape[1] == config.model.audio_window
    with pytest.raises(ValueError, match=r"model\.audio_context"):
        apply_overrides(config, ["data.audio_context=1"])


def test_lr_schedule():
    assert lr_lambda(0, warmup=10, total=100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_lambda(9, warmup=10, total=100, min_ratio=0.1) == pytest.approx(1.0)
    assert lr_lambda(100, warmup=10, total=100, min_ratio=0.1) == pytest.approx(0.1)


def test_export_ema_loads_for_inference(tiny_store, tmp_path):
    from df_models import DualForceDiT

    trainer = Trainer(tiny_config(tiny_store, tmp_path, steps=3))
    trainer.fit(progress=False)
    path = trainer.export_ema(tmp_path / "ema")
    model = DualForceDiT.from_pretrained(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, trainer.ema[k].to(v.dtype)), k
    assert not torch.equal(
        model.state_dict()["patch_embed.proj.weight"],
        trainer.model.state_dict()["patch_embed.proj.weight"],
    )


def test_cli_trains_and_resumes(tiny_store, tmp_path, capsys):
    from df_core.cli import main as dualforce

    argv = [
        "train",
        "--recipe",
        "synthtalk_tiny",
        "--set",
        f"data.store={tiny_store}",
        "--set",
        "steps=4",
        "--set",
        "ckpt_every=2",
        "--out",
        str(tmp_path),
    ]
    assert dualforce(argv) == 0
    assert (tmp_path / "bundle" / "inference.json").is_file()
    assert dualforce([*argv[:-2], "--set", "steps=6", "--out", str(tmp_path), "--resume"]) == 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6
    assert dualforce(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe" in capsys.readouterr().err


def test_aux_loss_and_uncertainty_weighting_train(tiny_store, tmp_path):
    config = apply_overrides(
        tiny_config(tiny_store, tmp_path, steps=30),
        ["loss.lambda_aux=0.5", "loss.aux_decay_steps=20", "loss.uncertainty_weighting=true"],
    )
    trainer = Trainer(config)
    batch = next(iter(trainer._loader(0)))
    total, terms = trainer.loss(batch)
    assert set(terms) == {"loss_video", "loss_struct", "loss_aux"} and torch.isfinite(total)
    before = trainer.weighting.log_vars.detach().clone()
    history = trainer.fit(progress=False)
    assert all(not m.skipped for m in history)
    assert not torch.equal(before, trainer.weighting.log_vars.detach())


def test_reference_tokens_without_features_are_refused(tiny_store, tmp_path):
    config = tiny_config(tiny_store, tmp_path)
    config = dataclasses.replace(config, model=config.model.replace(ref_tokens_enabled=True))
    with pytest.raises(ValueError, match=r"has no reference tokens.*--ref-encoder"):
        Trainer(config)


def test_ema_update_is_the_per_tensor_formula(tiny_store, tmp_path):
    """The multi-tensor EMA update gives exactly ``d * ema + (1 - d) * weights`` per tensor."""
    trainer = Trainer(tiny_config(tiny_store, tmp_path, steps=3))
    trainer.fit(max_steps=2, progress=False)  # weights and EMA now differ
    d = trainer.config.optim.ema_decay
    before = {k: v.clone() for k, v in trainer.ema.items()}
    weights = trainer.model.state_dict()
    assert any(not torch.equal(before[k], weights[k].float()) for k in before)
    trainer._update_ema()
    for k, v in weights.items():
        expected = before[k].clone().mul_(d).add_(v.float(), alpha=1 - d)
        assert torch.equal(trainer.ema[k], expected), k


@pytest.mark.gpu
def test_cuda_training_uses_the_fused_optimizer(tiny_store, tmp_path):
    trainer = Trainer(tiny_config(tiny_store, tmp_path, steps=4, device="cuda"))
    assert trainer.optimizer.defaults["fused"] is True
    history = trainer.fit(progress=False)
    assert all(torch.isfinite(torch.tensor(m.loss)) for m in history)


@pytest.mark.gpu
def test_cuda_training_draws_its_noise_on_the_gpu_and_resumes_it(tiny_store, tmp_path):
    trainer = Trainer(tiny_config(tiny_store, tmp_path, steps=4, device="cuda"))
    assert trainer.noise_gen.device.type == "cuda"
    batch = next(iter(trainer._loader(0)))
    state = trainer.noise_gen.get_state()
    draw = trainer.objective.draw(batch, trainer.noise_gen)
    assert draw.eps_v.device.type == "cuda" and draw.sigma_v.device.type == "cuda"
    trainer.noise_gen.set_state(state)
    again = trainer.objective.draw(batch, trainer.noise_gen)
    assert torch.equal(draw.eps_v, again.eps_v) and torch.equal(draw.sigma_v, again.sigma_v)


def test_the_data_config_sets_how_many_clips_a_worker_keeps(tiny_store, tmp_path):
    config = tiny_config(tiny_store, tmp_path, steps=2)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_clips=1))
    trainer = Trainer(config)
    assert trainer.dataset.config.cache_clips == 1
    for i in range(3):
        trainer.dataset[i]
    assert len(trainer.dataset._cache) == 1
    with pytest.raises(ValueError, match=r"DataConfig\.cache_clips"):
        dataclasses.replace(config.data, cache_clips=0)
