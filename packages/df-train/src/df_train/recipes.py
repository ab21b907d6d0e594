"""Experiment recipes: functions returning a :class:`TrainConfig`.

``synthtalk_tiny`` is for tests and CI, ``synthtalk_small`` for the CPU demo, ``hdtf_base`` for
real data at the proposal's scale (its store made as ``hdtf_base_extract`` says). The ablations of DESIGN.md are variants of
``synthtalk_small`` named ``synthtalk_small__<ablation>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from df_data.encoders.spec import EncoderSpec
from df_data.extract_run import ExtractConfig
from df_models.codecs import TinyAutoencoderConfig
from df_models.config import synthtalk_small as small_model
from df_models.config import tiny as tiny_model
from df_train.codec import CodecTrainConfig
from df_train.config import DataConfig, LossConfig, NoiseConfig, OptimConfig, TrainConfig
from df_train.parallel import ParallelConfig


def synthtalk_tiny() -> TrainConfig:
    """A tiny model on a tiny SynthTalk store: seconds per hundred steps on a CPU."""
    model = tiny_model(
        latent_channels=4,
        latent_height=8,
        latent_width=8,
        struct_raw_dim=11,
        audio_dim=80,
        audio_context=2,
        window=4,
    )
    return TrainConfig(
        name="synthtalk_tiny",
        model=model,
        data=DataConfig(frames=4),
        steps=200,
        batch_size=4,
        optim=OptimConfig(lr=3e-3, warmup_steps=10, ema_decay=0.99),
        log_every=10,
        ckpt_every=100,
    )


def synthtalk_small() -> TrainConfig:
    """The GPU demo: ``synthtalk_small`` model (a few million parameters) on 64x64 SynthTalk,
    with the CPU demo's two levers for lip sync in pixels (see :func:`synthtalk_demo`): the
    mouth-weighted video loss and context noise."""
    return TrainConfig(
        name="synthtalk_small",
        model=small_model(ref_concat=True),  # as the CPU demo's (see synthtalk_demo)
        data=DataConfig(frames=8),
        steps=3000,
        batch_size=8,
        noise=NoiseConfig(sigma_ctx=0.2),
        optim=OptimConfig(lr=5e-4, warmup_steps=200, ema_decay=0.999),
        loss=LossConfig(lambda_lip=0.0, mouth_weight=10.0),
        log_every=20,
        ckpt_every=500,
    )


# The pretrained encoders ``hdtf_base``'s store is extracted with (``hdtf_base_extract``).
WAN_VAE_HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"  # its vae/ subfolder: AutoencoderKLWan
LIVEPORTRAIT_WEIGHTS = "pretrained_weights/liveportrait/base_models/motion_extractor.pth"


HDTF_BASE_ENCODERS = EncoderSpec(
    audio_encoder="hubert",
    audio_model="facebook/hubert-large-ls960-ft",
    audio_layer="all",
    ref_encoder="dinov2",
    ref_model="facebook/dinov2-base",
    ref_frames=8,
)


def hdtf_base_extract(struct_weights: str = LIVEPORTRAIT_WEIGHTS) -> ExtractConfig:
    """How ``hdtf_base``'s clip store is made (``dualforce data extract --codec
    Wan-AI/Wan2.1-T2V-1.3B-Diffusers --codec-subfolder vae --struct liveportrait
    --struct-weights ... --device cuda``): the Wan 2.1 VAE (16 channels, 8x, 4 frames per
    latent frame) and LivePortrait's 70-number structure, on the GPU."""
    return ExtractConfig(
        codec=WAN_VAE_HUB_ID,
        codec_subfolder="vae",
        struct="liveportrait",
        struct_weights=struct_weights,
        batch_frames=33,  # 1 + 8 groups of 4 frames per GPU transfer
        device="cuda",
        encoders=HDTF_BASE_ENCODERS,
    )


def hdtf_base() -> TrainConfig:
    """Real data at the proposal's scale (``base`` model), for 8 GPUs per node, on a store made
    as ``hdtf_base_extract`` says (the trainer checks its encoders, structure and frames per
    latent).

    The store: ``dualforce data extract ... --audio-encoder hubert --audio-model
    facebook/hubert-large-ls960-ft --audio-layer all --ref-encoder dinov2 --ref-model
    facebook/dinov2-base --ref-frames 8`` (``data.encoders.cli_args()``): all 25 hidden states
    of HuBERT-Large (embeddings + 24 layers, 1024 wide) into the model's learned layer sum, and
    DINOv2-base global tokens (CLS + 2x2 pooled patches, 768 wide) of 8 frames per clip, a
    random one of which is the reference (``data.ref_other_prob``); ``--codec
    Wan-AI/Wan2.1-T2V-1.3B-Diffusers --codec-subfolder vae --struct liveportrait``: the Wan 2.1
    VAE (4 frames per latent frame) and LivePortrait's 70-number structure of each of them
    (4 x 70 per latent frame: nothing per video frame is dropped)."""
    from df_models.config import base

    return TrainConfig(
        name="hdtf_base",
        model=base(
            audio_dim=1024,
            audio_layers=25,
            ref_tokens_enabled=True,
            ref_feature_dim=768,
            struct_raw_dim=4 * 70,  # the 70 LivePortrait numbers of each of a group's 4 frames
            frames_per_latent=4,
        ),
        # No flips: LivePortrait's structure has no known mirror (the dataset refuses them).
        data=DataConfig(
            frames=16, num_workers=8, encoders=HDTF_BASE_ENCODERS, struct="liveportrait"
        ),
        steps=200_000,
        batch_size=2,
        precision="bf16",
        device="cuda",
        noise=NoiseConfig(shift=3.0),
        loss=LossConfig(lambda_aux=0.1, lambda_lip=0.05, ref_drop_prob=0.1),
        optim=OptimConfig(lr=1e-4, warmup_steps=2000, ema_decay=0.9999),
        log_every=50,
        ckpt_every=2000,
    )


def codec_synthtalk() -> CodecTrainConfig:
    """The embedded default codec: a TinyAutoencoder, 64x64 frames -> 8 x 8 x 8 latents, with
    colour augmentation (see :func:`codec_synthtalk_demo`)."""
    return CodecTrainConfig(
        codec=TinyAutoencoderConfig(latent_channels=8, base_channels=32, num_down=3),
        colour_aug=True,
    )


def codec_synthtalk_tiny() -> CodecTrainConfig:
    """For tests: 32x32 frames -> 4 x 8 x 8 latents, a few hundred steps."""
    return CodecTrainConfig(
        name="codec_synthtalk_tiny",
        codec=TinyAutoencoderConfig(
            latent_channels=4, base_channels=8, max_channels=16, num_down=2, norm_groups=4
        ),
        steps=300,
        batch_size=16,
        lr=1e-3,
        log_every=25,
    )


def _variant(name: str, section: str, **changes) -> Callable[[], TrainConfig]:
    """An ablation of DESIGN.md: ``synthtalk_small`` with fields of one section changed."""

    def recipe() -> TrainConfig:
        base = synthtalk_small()
        part = getattr(base, section)
        changed = part.replace(**changes) if section == "model" else replace(part, **changes)
        return replace(base, name=f"synthtalk_small__{name}", **{section: changed})

    recipe.__name__ = f"synthtalk_small__{name}"
    recipe.__doc__ = f"Ablation of DESIGN.md: {name.replace('_', ' ')}."
    return recipe


def _ablation(name: str, **model_changes) -> Callable[[], TrainConfig]:
    return _variant(name, "model", **model_changes)


def _noise_ablation(name: str, **noise_changes) -> Callable[[], TrainConfig]:
    return _variant(name, "noise", **noise_changes)


def _loss_ablation(name: str, **loss_changes) -> Callable[[], TrainConfig]:
    return _variant(name, "loss", **loss_changes)


ABLATIONS = {
    "no_struct": _ablation("no_struct", struct_enabled=False),
    "struct_to_video": _ablation("struct_to_video", bridge="struct_to_video"),
    "bridge_causal": _ablation("bridge_causal", bridge_temporal="causal"),
    "n_fusion_1": _ablation("n_fusion_1", n_fusion=1),
    "n_fusion_3": _ablation("n_fusion_3", n_fusion=3),
    "n_fusion_4": _ablation("n_fusion_4", n_fusion=4),
    "struct_tokens_1": _ablation("struct_tokens_1", struct_tokens=1),
    "struct_tokens_8": _ablation("struct_tokens_8", struct_tokens=8),
    "sigma_s_max_0.5": _noise_ablation("sigma_s_max_0.5", sigma_s_max=0.5),
    "sigma_s_max_1.0": _noise_ablation("sigma_s_max_1.0", sigma_s_max=1.0),
    "with_lip": _loss_ablation("with_lip", lambda_lip=0.05),
    "with_aux": _loss_ablation("with_aux", lambda_aux=0.1),
}

RECIPES: dict[str, Callable[[], TrainConfig | CodecTrainConfig]] = {
    "codec_synthtalk": codec_synthtalk,
    "codec_synthtalk_tiny": codec_synthtalk_tiny,
    "synthtalk_tiny": synthtalk_tiny,
    "synthtalk_small": synthtalk_small,
    "hdtf_base": hdtf_base,
    **{f"synthtalk_small__{k}": v for k, v in ABLATIONS.items()},
}


def get_recipe(name: str) -> TrainConfig | CodecTrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]()


# The `dualforce demo` recipes (df_eval.demo): sized so that the whole CPU demo (corpus, codec,
# store, training, generation, evaluation) fits in about 15 minutes on two cores.


def codec_synthtalk_demo() -> CodecTrainConfig:
    """The demo's codec: 64x64 frames -> 16 x 16 x 8 latents (4x: at 8x the mouth was still a
    blur after 1,500 CPU steps, at 4x it opens and closes after 600).

    Issue 14, measured on the demo corpus (20 train identities, 4 held-out clips; one CPU
    thread): the old codec (8 base channels, full frames, 700 steps) reached 21.1 dB held out
    (26.6 dB on its training frames) and decoded held-out faces in the wrong colours, off by
    14/255 per channel in the face box. Colour augmentation removes the train/held-out gap
    (24.7 dB, colour error 2-5/255 at 700 steps); 32 x 32 crops make a step 4x cheaper, which
    pays for 16 base channels and 3,000 steps: 28.8 dB held out, colour error 1.5-2.4/255, in
    232 s."""
    return CodecTrainConfig(
        name="codec_synthtalk_demo",
        codec=TinyAutoencoderConfig(
            latent_channels=8, base_channels=16, max_channels=64, num_down=2, norm_groups=8
        ),
        colour_aug=True,
        crop=32,
        steps=3000,
        batch_size=16,
        lr=3e-3,
        log_every=25,
    )


def synthtalk_demo() -> TrainConfig:
    """The CPU demo's DualForce: a ~1.5 M-parameter ``synthtalk_small`` variant on 16x16x8
    latents (patch 4: 16 video tokens per frame) that learns audio-driven jaw motion within
    minutes on two cores.

    ``video_dim`` must be at least a token's ``patch_size**2 * latent_channels = 128`` values:
    the video head is a linear map from ``video_dim`` to them, so a narrower stream predicts
    velocities in a subspace and the noise outside it is never removed (at 96, a quarter of
    every token stayed noise, and the samples were noise-textured).

    Two levers against the two ways the mouth got lost (issue 7, measured on the demo's
    corpus): ``mouth_weight`` weights the video loss up inside the mouth box (the mouth is a
    small part of the frame and the only part the audio explains), and ``sigma_ctx`` trains
    on slightly noisy context frames, which the sampler's clean pass then writes at the same
    level, so that the model's own imperfect frames look like its training context instead of
    drifting (SkyReels-V2, CausVid, Self-Forcing).

    ``ref_concat`` (issue 14): the reference latent is added to every frame's tokens at its own
    position. Same corpus, codec, store and seed, with and without it: probe identity distance
    0.137 -> 0.073, Fréchet distance 38.3 -> 14.9 (the still frame: 23.4), lip sync 0.49 ->
    0.83, jitter 2.99 -> 2.53, PSNR 17.8 -> 20.7 dB.

    ``video_prediction="clean_from_reference"`` (issue 14): the head predicts the frame's
    change from the reference, so a prediction from pure noise starts at the reference instead
    of a noisy blur. Same store and seed, sampler with noise share 0.7, velocity head ->
    clean head -> clean-from-reference head: identity 0.065 -> 0.077 -> 0.054 (the real
    videos': 0.049), Fréchet distance 17.9 -> 27.4 -> 13.8, jitter 1.45 -> 1.68 -> 1.48,
    lip sync 0.89 -> 0.89 -> 0.81.

    ``noise.shift=3`` (training levels and, through the bundle, the sampler's schedule moved
    toward high noise, where the sampler starts and the logit-normal draws too few levels):
    same store and seed, with the clean-from-reference head, shift 1 -> 3 -> uniform levels:
    jitter 1.48 -> 1.06 -> 1.24, lip sync 0.81 -> 0.84 -> 0.75, SSIM 0.53 -> 0.59 -> 0.58,
    identity 0.054 -> 0.054 -> 0.043, Fréchet distance 13.8 -> 15.5 -> 12.9; in the pictures
    shift 3 has the smoothest skin and the least texture noise."""
    model = small_model(
        latent_height=16,
        latent_width=16,
        patch_size=4,
        video_dim=128,
        video_depth=4,
        video_heads=4,
        struct_dim=64,
        struct_depth=2,
        n_fusion=2,
        mlp_ratio=2.0,
        noise_freq_dim=64,
        ref_concat=True,
        video_prediction="clean_from_reference",
    )
    return TrainConfig(
        name="synthtalk_demo",
        model=model,
        data=DataConfig(frames=8),
        steps=1200,
        batch_size=8,
        noise=NoiseConfig(sigma_ctx=0.2, shift=3.0),
        optim=OptimConfig(lr=1e-3, warmup_steps=50, ema_decay=0.99),
        loss=LossConfig(lambda_lip=0.0, mouth_weight=10.0),
        log_every=20,
        ckpt_every=100,
    )


def codec_synthtalk_demo_temporal() -> CodecTrainConfig:
    """The demo codec's causal variant with 4 video frames per latent frame (issue 18): the
    same per-frame encoder and decoder and the same 16 x 16 x 8 latent per latent frame, on
    windows of 9 frames (36 frames a step). Measured on the demo corpus, 1,500 CPU steps each
    (one thread), held-out PSNR: the per-frame codec 26.8 dB; this one 19.3 dB at the per-frame
    recipe's learning rate 3e-3, 21.3 dB at 1e-3 (face colour still off by up to 12/255), and
    19.4 dB with the previous group as causal context in both encoder and decoder, all from a
    random start. Inflated from the demo's trained per-frame codec (``init_from``,
    :meth:`TemporalTinyAutoencoder.inflate`; that codec: 28.1 dB), the same 1,500 steps reach
    27.5 dB (face colour off by at most 3.4/255), within 0.7 dB of the per-frame codec at the
    same 16 x 16 x 8 latent per latent frame, which now covers 4 video frames. The
    ``cpu-t4`` demo preset trains it that way."""
    return replace(
        codec_synthtalk_demo(),
        name="codec_synthtalk_demo_temporal",
        frames_per_latent=4,
        window_latents=3,
        batch_size=36,
        lr=1e-3,
    )


RECIPES["codec_synthtalk_demo"] = codec_synthtalk_demo
RECIPES["codec_synthtalk_demo_temporal"] = codec_synthtalk_demo_temporal
RECIPES["synthtalk_demo"] = synthtalk_demo


# The `dualforce demo --preset gpu` recipes: the CPU demo's design (16 x 16 x 8 latents,
# ref_concat, mouth weight, context noise) at the size one H200 trains in about five minutes.


def codec_synthtalk_gpu() -> CodecTrainConfig:
    """The GPU demo's codec: the CPU demo's 16 x 16 x 8 codec, twice as wide, on 64-frame
    batches of 32 x 32 crops (colour-augmented, as :func:`codec_synthtalk_demo`)."""
    return CodecTrainConfig(
        name="codec_synthtalk_gpu",
        codec=TinyAutoencoderConfig(
            latent_channels=8, base_channels=32, max_channels=128, num_down=2, norm_groups=8
        ),
        colour_aug=True,
        crop=32,
        steps=4000,
        batch_size=64,
        lr=2e-3,
        log_every=100,
    )


def synthtalk_gpu() -> TrainConfig:
    """The GPU demo's DualForce (~12.5 M parameters): the CPU demo's model with patch 2 (64
    video tokens per frame instead of 16), a 256-wide, 8-block video stream and a 128-wide,
    4-block structure stream, trained in bf16 on 256-clip batches with compiled blocks.

    The size follows the H200's measured limits (issue 14): a step of this model is
    launch-bound, not FLOP-bound (a 64-clip batch took as long as a 128-clip one, 0.2 s eager),
    so the batch is as large as the step time allows, and the blocks are compiled.

    ``noise.shift=3`` (issue 14; as :func:`synthtalk_demo`): at shift 1 the model's one-step
    prediction from pure noise, where sampling starts, was worse than copying the reference
    (latent MSE 0.44 against 0.32) and correlated 0.23 with that noise. On the H200, with the
    same preset and seed, the `gpu` demo's 8 held-out clips scored as follows (shift 1 -> 3 ->
    uniform levels; the last two on one store): Fréchet distance 17.9 -> 13.1 -> 24.5 (the still frame: 30.1), jitter
    0.84 -> 0.58 -> 1.04 (the real videos: 0.62), lip sync 0.87 -> 0.93 -> 0.79, identity
    0.074 -> 0.057 -> 0.089."""
    model = small_model(
        latent_height=16,
        latent_width=16,
        patch_size=2,
        video_dim=256,
        video_depth=8,
        video_heads=8,
        struct_dim=128,
        struct_depth=4,
        struct_heads=4,
        n_fusion=2,
        mlp_ratio=4.0,
        noise_freq_dim=64,
        ref_concat=True,
        video_prediction="clean_from_reference",  # as synthtalk_demo's
    )
    return TrainConfig(
        name="synthtalk_gpu",
        model=model,
        # 256 windows a step. Measured on the H200's host with 400 clips: 6 workers gave a
        # batch every 137 ms, 12 every 77 ms, slower than the 102 ms step only with fewer; a
        # worker that keeps every clip in memory stops re-reading and re-validating them.
        data=DataConfig(frames=8, num_workers=12, cache_clips=512),
        steps=3000,
        batch_size=256,
        precision="bf16",
        device="cuda",
        parallel=ParallelConfig(compile=True),
        noise=NoiseConfig(sigma_ctx=0.2, shift=3.0),
        optim=OptimConfig(lr=1e-3, warmup_steps=200, ema_decay=0.999),
        loss=LossConfig(lambda_lip=0.0, mouth_weight=10.0),
        log_every=50,
        ckpt_every=500,
    )


RECIPES["codec_synthtalk_gpu"] = codec_synthtalk_gpu
RECIPES["synthtalk_gpu"] = synthtalk_gpu
