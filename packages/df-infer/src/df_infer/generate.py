"""Reference image + audio file -> mp4, streaming: each frame is encoded as soon as it exists."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from df_data.media import VideoWriter, read_wav
from df_infer.pipeline import StreamingGenerator
from df_infer.sampler_config import SamplerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationSummary:
    out: str
    frames: int
    duration_s: float  # video duration (frames / fps)
    wall_s: float  # generation + encoding wall time
    fps: float  # frames per second of wall time
    first_frame_s: float  # latency of the first frame (reference encoding included)
    structs: np.ndarray | None  # [T, Ds] generated structure (raw units)

    def line(self) -> str:
        return (
            f"{self.frames} frames ({self.duration_s:.2f} s of video) in {self.wall_s:.2f} s: "
            f"{self.fps:.1f} fps, first frame after {self.first_frame_s * 1e3:.0f} ms -> {self.out}"
        )


def check_output(out: str | Path) -> Path:
    """``out`` as a path the mp4 can be written to, or ValueError naming it: an mp4 name, not
    an existing directory, below a directory (existing or to be made) that can be written.

    The writer would only fail at its end, after the whole video was generated."""
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"output {str(out)!r}: the output must end in .mp4")
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is an existing directory: give a file name")
    folder = out.parent.absolute()
    while not os.path.lexists(folder):  # the writer makes the missing folders below it
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"output {str(out)!r}: {str(folder)!r} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dualforce-probe-"):
            pass
    except OSError as e:
        raise ValueError(
            f"output {str(out)!r}: cannot write in {str(folder)!r} ({e.strerror})"
        ) from None
    return out


def generate_video(
    generator: StreamingGenerator,
    reference,
    audio_path: str | Path,
    out: str | Path,
    sampler: SamplerConfig | None = None,
    *,
    window: int | None = None,
    progress: bool = True,
) -> GenerationSummary:
    """Generates the video of ``audio_path`` spoken by ``reference`` and writes ``out`` (mp4
    with the audio muxed in, atomically: an error or Ctrl-C leaves no file)."""
    from tqdm import tqdm

    check_output(out)
    audio = read_wav(audio_path)
    fps = generator.meta.fps
    total = -(-len(audio) // round(16000 / fps))
    start = time.perf_counter()
    first = None
    structs = []
    bar = tqdm(total=total, unit="frame", disable=not progress, desc="generate")
    with bar, VideoWriter(out, fps=fps) as writer:
        writer.set_audio(audio)
        for frame in generator.frames(reference, audio, sampler, window=window):
            writer.write(frame.image)
            if frame.struct is not None:
                structs.append(frame.struct)
            if first is None:
                first = frame.ready_s
            bar.update(1)
            bar.set_postfix(fps=f"{writer.frames / (time.perf_counter() - start):.1f}")
    wall = time.perf_counter() - start
    summary = GenerationSummary(
        out=str(out),
        frames=writer.frames,
        duration_s=writer.frames / fps,
        wall_s=wall,
        fps=writer.frames / wall,
        first_frame_s=first or 0.0,
        structs=np.stack(structs) if structs else None,
    )
    log.info("%s", summary.line())
    return summary


def generate_videos(
    generator: StreamingGenerator,
    references: list,
    audio_paths: list[str | Path],
    outs: list[str | Path],
    sampler: SamplerConfig | None = None,
    *,
    seeds: list[int] | None = None,
    window: int | None = None,
    progress: bool = True,
) -> list[GenerationSummary]:
    """:func:`generate_video` for several clips at once, one batch through the model
    (:meth:`StreamingGenerator.frames_batch`): each mp4 is the one :func:`generate_video`
    writes for its clip alone, to float rounding. The clips may differ in length. Every mp4 is
    written atomically: an error while generating leaves none of them."""
    from contextlib import ExitStack

    from tqdm import tqdm

    if not len(references) == len(audio_paths) == len(outs):
        raise ValueError(
            f"generate_videos: {len(references)} references, {len(audio_paths)} audio files "
            f"and {len(outs)} outputs; give one of each per clip"
        )
    for out in outs:
        check_output(out)
    audios = [read_wav(a) for a in audio_paths]
    fps = generator.meta.fps
    totals = [-(-len(a) // round(16000 / fps)) for a in audios]
    start = time.perf_counter()
    first: float | None = None
    structs: list[list[np.ndarray]] = [[] for _ in audios]
    bar = tqdm(total=sum(totals), unit="frame", disable=not progress, desc="generate")
    with ExitStack() as stack:
        stack.enter_context(bar)
        writers = [stack.enter_context(VideoWriter(out, fps=fps)) for out in outs]
        for writer, audio in zip(writers, audios, strict=True):
            writer.set_audio(audio)
        for frames in generator.frames_batch(
            references, audios, sampler, seeds=seeds, window=window
        ):
            for b, frame in enumerate(frames):
                if frame is None:
                    continue
                writers[b].write(frame.image)
                if frame.struct is not None:
                    structs[b].append(frame.struct)
                if first is None:
                    first = frame.ready_s
                bar.update(1)
    wall = time.perf_counter() - start
    summaries = [
        GenerationSummary(
            out=str(out),
            frames=writer.frames,
            duration_s=writer.frames / fps,
            wall_s=wall,
            fps=sum(w.frames for w in writers) / wall,
            first_frame_s=first or 0.0,
            structs=np.stack(s) if s else None,
        )
        for out, writer, s in zip(outs, writers, structs, strict=True)
    ]
    log.info("%d clips together: %s", len(outs), summaries[0].line())
    return summaries
