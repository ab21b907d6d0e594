"""Extraction as named settings: ``ExtractConfig`` (the codec, structure and the speech and
reference encoders by name or path) built into objects and run, locally or as a submitit SLURM job array.

The objects (a GPU codec, a structure model) are built inside each process from the
configuration, never pickled: task ``i`` of an ``N``-task array runs
``extract_store(shard=(i, N))`` on sources ``i, i + N, ...`` into the same store (clip writes
are atomic and manifest lines appended under a lock; ``df_data.store``), each on its own GPU.
A re-run (or a requeued task) skips finished clips.

One host with several GPUs is sharded the same way (:func:`run_extract_local`): ``N`` tasks
through submitit's local executor, task ``i`` on ``cuda:i`` (:func:`task_device`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from df_core.checks import one_of, positive_int
from df_data.encoders.spec import EncoderSpec
from df_data.structure import STRUCT_EXTRACTORS, build_struct_extractor
from df_models.codecs import load_codec


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractConfig:
    codec: str = ""  # codec directory, or a diffusers hub id (e.g. a Wan 2.1 pipeline repo)
    codec_revision: str | None = None  # hub revision (branch, tag or commit) of a hub id
    codec_subfolder: str | None = None  # the VAE's folder in a pipeline repo ("vae")
    struct: str = "gt"  # gt | mesh | liveportrait (df_data.structure)
    struct_weights: str | None = None  # liveportrait: motion_extractor.pth / .safetensors
    encoders: EncoderSpec = field(default_factory=EncoderSpec)  # speech and reference encoders
    batch_frames: int = 16  # video frames moved to the codec's device per call (chunk size)
    struct_batch: int = 64  # frames per structure-model forward (liveportrait)
    device: str = "cpu"  # where the codec and the structure model run (e.g. cuda)

    def __post_init__(self) -> None:
        if not self.codec:
            raise ValueError("ExtractConfig.codec must name a codec directory or hub id")
        one_of("ExtractConfig.struct", self.struct, STRUCT_EXTRACTORS)
        if (self.struct == "liveportrait") != bool(self.struct_weights):
            raise ValueError(
                "ExtractConfig.struct_weights (--struct-weights) is required for "
                "struct='liveportrait' "
                f"(LivePortrait's motion_extractor.pth) and only then; got struct={self.struct!r}, "
                f"struct_weights={self.struct_weights!r}"
            )
        positive_int("ExtractConfig.batch_frames", self.batch_frames)
        positive_int("ExtractConfig.struct_batch", self.struct_batch)
        try:
            torch.device(self.device)
        except RuntimeError as e:
            raise ValueError(f"ExtractConfig.device {self.device!r}: {e}") from e


def run_extract(
    src: str | Path,
    out: str | Path,
    config: ExtractConfig,
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Builds the configuration's codec, structure extractor, speech and reference encoders
    and runs ``extract_store`` (its summary)."""
    from df_data.extract import extract_store

    codec: Any = config.codec
    if config.codec_revision is not None or config.codec_subfolder is not None:
        codec = load_codec(
            config.codec, revision=config.codec_revision, subfolder=config.codec_subfolder
        )
    extractor = build_struct_extractor(
        config.struct,
        weights=config.struct_weights,
        device=config.device,
        batch_size=config.struct_batch,
    )
    return extract_store(
        src,
        out,
        codec=codec,
        encoder=config.encoders.build_audio(config.device),
        ref_encoder=config.encoders.build_ref(config.device),
        ref_frames=config.encoders.ref_frames,
        batch_frames=config.batch_frames,
        device=config.device,
        struct_extractor=extractor,
        shard=shard,
        progress=progress,
        retry_failed=retry_failed,
    )


def task_device(device: str, index: int) -> str:
    """The device of task ``index``: a bare ``cuda`` becomes ``cuda:<index mod GPUs>`` where
    the process sees several GPUs (tasks of one host), stays ``cuda`` where it sees one (a
    SLURM task with its own GPU); any other device is kept."""
    if device == "cuda" and torch.cuda.device_count() > 1:
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


def _task(src: str, out: str, config: ExtractConfig, index: int, count: int) -> dict[str, Any]:
    config = replace(config, device=task_device(config.device, index))
    return run_extract(src, out, config, shard=(index, count), progress=False)


def submit_extract_shards(
    src: str | Path, out: str | Path, config: ExtractConfig, array: int, executor: Any
) -> list[Any]:
    """Submits ``array`` extraction tasks (module doc) with ``executor``
    (``df_data.prepare.shards.slurm_executor``); returns their jobs."""
    positive_int("array", array)
    Path(out).mkdir(parents=True, exist_ok=True)
    return executor.map_array(
        _task, [str(src)] * array, [str(out)] * array, [config] * array, list(range(array)),
        [array] * array,
    )  # fmt: skip


def run_extract_local(
    src: str | Path, out: str | Path, config: ExtractConfig, tasks: int, folder: str | Path
) -> list[dict[str, Any]]:
    """Extraction over ``tasks`` processes of this host (one per GPU with ``device="cuda"``)
    through submitit's local executor, as a job array spreads it over nodes; waits and returns
    each task's summary. ``folder`` holds the tasks' logs."""
    import submitit

    positive_int("--local-tasks", tasks)
    if config.device == "cuda" and torch.cuda.device_count() < tasks:
        raise ValueError(
            f"--local-tasks {tasks} with --device cuda, but this host has "
            f"{torch.cuda.device_count()} GPUs: one task per GPU"
        )
    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(timeout_min=7 * 24 * 60)
    jobs = submit_extract_shards(src, out, config, tasks, executor)
    return [job.result() for job in jobs]
