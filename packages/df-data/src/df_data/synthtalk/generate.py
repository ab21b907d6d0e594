"""SynthTalk clips and corpora: synthesise, write in the layout of real datasets, in parallel.

Per clip directory: ``video.mp4`` (H.264, 25 fps, the audio muxed as AAC), ``audio.wav``
(16 kHz mono), ``gt.safetensors`` (``struct [T, Ds]``, ``identity [Di]``, ``landmarks [T, L, 2]``
pixels, ``mouth_box [T, 4]`` pixels, all float32) and ``metadata.json``. A corpus holds
``train/clip_00000 ...`` and ``test/clip_00000 ...`` over disjoint identities.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm import tqdm

from df_core.conventions import AUDIO_SAMPLE_RATE, FPS
from df_data.media import write_video, write_wav
from df_data.synthtalk import espeak, motion, speech, vocoder
from df_data.synthtalk.face3d import LANDMARK_NAMES
from df_data.synthtalk.identity import SPLITS, Identity, identity_seed, sample_identity
from df_data.synthtalk.render import mouth_box, project_landmarks, render_frame
from df_data.synthtalk.structure import STRUCT_NAMES, STRUCT_UNITS
from df_models.io import write_json_atomic

log = logging.getLogger(__name__)

GENERATOR = "synthtalk"
VERSION = "1.0"
CLIP_FILES = ("video.mp4", "audio.wav", "gt.safetensors", "metadata.json")


@dataclass
class SynthClip:
    """One synthesised clip (T frames at 25 fps, N = round(T / 25 * 16000) samples)."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [N] at 16 kHz
    struct: np.ndarray  # float32 [T, Ds], names in STRUCT_NAMES
    identity: np.ndarray  # float32 [Di], Identity.vector()
    phonemes: list[tuple[float, float, str]]  # (start_s, end_s, label); "sil" for pauses
    metadata: dict
    landmarks: np.ndarray = field(
        default_factory=lambda: np.zeros((0, len(LANDMARK_NAMES), 2), np.float32)
    )
    mouth_box: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # [T, 4]


def synthesize_clip(
    *,
    identity: Identity,
    seconds: float,
    size: int = 64,
    seed: int,
    split: str = "train",
    use_espeak: bool = False,
) -> SynthClip:
    """Synthesises one clip of ``identity`` speaking for ``seconds`` (deterministic in the
    arguments). With ``use_espeak`` and libespeak-ng present, espeak-ng speech drives the mouth;
    without the library this falls back to the formant synthesiser (``metadata["audio_source"]``
    says which)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_frames = max(1, round(seconds * FPS))
    n_samples = round(n_frames / FPS * AUDIO_SAMPLE_RATE)
    speech_rng, motion_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, identity.seed]).spawn(2)
    )
    # Step 1: speech (audio and timed phonemes).
    if use_espeak and not espeak.espeak_available():
        log.warning("use_espeak: libespeak-ng is not available, using the formant synthesiser")
        use_espeak = False
    if use_espeak:
        audio, script = espeak.espeak_script(identity, n_samples, speech_rng)
    else:
        script = speech.make_script(identity, n_frames / FPS, speech_rng)
        audio = vocoder.synthesize(script, identity, n_samples, speech_rng)
    # Step 2: the structure follows the speech; Step 3: render it.
    lag = motion.DEFAULT_AV_LAG_FRAMES
    struct = motion.struct_track(
        identity, script.phones, script.accents, audio, n_frames, motion_rng, lag
    )
    frames = np.stack([render_frame(identity, s, size) for s in struct])
    landmarks = np.stack(
        [np.stack(list(project_landmarks(identity, s, size).values())) for s in struct]
    ).astype(np.float32)
    boxes = np.stack([mouth_box(identity, s, size) for s in struct]).astype(np.float32)
    metadata = {
        "generator": GENERATOR,
        "version": VERSION,
        "fps": FPS,
        "frames": n_frames,
        "sample_rate": AUDIO_SAMPLE_RATE,
        "samples": n_samples,
        "seconds": n_frames / FPS,
        "size": size,
        "split": split,
        "seed": seed,
        "identity_seed": identity.seed,
        "identity": identity.to_dict(),
        "av_lag_frames": lag,
        "av_lag_meaning": "mouth frame t follows the audio at time (t - av_lag_frames) / fps",
        "struct_names": list(STRUCT_NAMES),
        "struct_units": STRUCT_UNITS,
        "landmark_names": list(LANDMARK_NAMES),
        "audio_source": "espeak-ng" if use_espeak else "formant",
    }
    return SynthClip(
        frames=frames,
        audio=audio,
        struct=struct,
        identity=identity.vector(),
        phonemes=[(round(a, 4), round(b, 4), lab) for a, b, lab in script.labelled()],
        metadata=metadata,
        landmarks=landmarks,
        mouth_box=boxes,
    )


def write_clip(clip: SynthClip, directory: str | Path) -> Path:
    """Writes the clip's four files into ``directory`` atomically: they are built in a hidden
    sibling directory that is renamed at the end (an existing clip there is replaced)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_video(tmp / "video.mp4", clip.frames, fps=FPS, audio_N=clip.audio)
        write_wav(tmp / "audio.wav", clip.audio)
        tensors = {
            "struct": clip.struct,
            "identity": clip.identity,
            "landmarks": clip.landmarks,
            "mouth_box": clip.mouth_box,
        }
        save_file(
            {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
            str(tmp / "gt.safetensors"),
        )
        meta = {**clip.metadata, "phonemes": [list(p) for p in clip.phonemes]}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old)
        else:
            os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def is_complete(directory: str | Path) -> bool:
    """Whether ``directory`` holds a complete clip (all files, readable metadata)."""
    directory = Path(directory)
    if not all((directory / name).is_file() for name in CLIP_FILES):
        return False
    try:
        json.loads((directory / "metadata.json").read_text())
    except (OSError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class _Task:
    split: str
    index: int
    identity_seed: int
    seed: int
    seconds: float
    size: int
    use_espeak: bool
    path: str


def _clip_seed(corpus_seed: int, split: str, index: int) -> int:
    return int(
        np.random.SeedSequence([corpus_seed, SPLITS.index(split), index]).generate_state(1)[0]
    )


def _run_task(task: _Task) -> str:
    clip = synthesize_clip(
        identity=sample_identity(task.identity_seed),
        seconds=task.seconds,
        size=task.size,
        seed=task.seed,
        split=task.split,
        use_espeak=task.use_espeak,
    )
    return str(write_clip(clip, task.path))


def _init_worker() -> None:
    torch.set_num_threads(1)  # one thread per worker process


def _check_existing(task: _Task) -> None:
    meta = json.loads((Path(task.path) / "metadata.json").read_text())
    expected = {
        "size": task.size,
        "frames": max(1, round(task.seconds * FPS)),
        "identity_seed": task.identity_seed,
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ValueError(
                f"{task.path}: existing clip has {key}={meta.get(key)}, this run wants {value}; "
                "use a new output directory or delete the old clips"
            )


def generate_corpus(
    out_dir: str | Path,
    *,
    clips: int,
    seconds: float,
    size: int = 64,
    test_clips: int | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    use_espeak: bool = False,
) -> list[Path]:
    """Writes ``clips`` training and ``test_clips`` (default ``max(1, clips // 10)``) test clips
    under ``out_dir/{train,test}/clip_NNNNN`` and returns their directories (train first).

    Train clips cycle over ``max(1, clips // 2)`` train identities, test clips over
    ``max(1, test_clips // 2)`` test identities (disjoint seed ranges; identities do not depend
    on ``seed``, which varies speech and motion). Complete existing clips are skipped, so an
    interrupted run resumes; ``workers > 1`` synthesises in that many processes.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    test_clips = max(1, clips // 10) if test_clips is None else test_clips
    if test_clips < 0:
        raise ValueError(f"test_clips must be >= 0, got {test_clips}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    tasks = []
    for split, count in (("train", clips), ("test", test_clips)):
        n_ids = max(1, count // 2)
        for i in range(count):
            path = out_dir / split / f"clip_{i:05d}"
            tasks.append(
                _Task(
                    split,
                    i,
                    identity_seed(split, i % n_ids),
                    _clip_seed(seed, split, i),
                    seconds,
                    size,
                    use_espeak,
                    str(path),
                )
            )
    todo = []
    for task in tasks:
        if is_complete(task.path):
            _check_existing(task)
        else:
            todo.append(task)
    log.info("synthtalk: %d clips in %s, %d to generate", len(tasks), out_dir, len(todo))
    with tqdm(total=len(todo), desc="synthtalk", unit="clip", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                _run_task(task)
                bar.update()
        else:
            with ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_init_worker
            ) as pool:
                for future in as_completed([pool.submit(_run_task, t) for t in todo]):
                    future.result()
                    bar.update()
    summary = {
        "generator": GENERATOR,
        "version": VERSION,
        "clips": clips,
        "test_clips": test_clips,
        "seconds": seconds,
        "size": size,
        "seed": seed,
        "use_espeak": use_espeak,
    }
    write_json_atomic(out_dir / "corpus.json", summary, indent=1, sort_keys=False)
    return [Path(t.path) for t in tasks]
