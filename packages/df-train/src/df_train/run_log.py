"""A run's record, written by rank 0: one JSON line per step in ``<out>/metrics.jsonl``, the same
scalars in TensorBoard (``<out>/tensorboard``), and a progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm


class RunLog:
    """Each step's record has the step's values (loss terms, gradient norm, learning rate...),
    ``tokens_per_s`` (all ranks) and, where MFU is reported, ``tflops`` (per rank) and ``mfu``.
    With ``enabled=False`` (ranks other than 0) nothing is written."""

    def __init__(
        self,
        out_dir: Path,
        *,
        name: str,
        start: int,
        stop: int,
        enabled: bool,
        progress: bool,
        tokens_per_step: int,
        step_flops: int | None,
        peak_tflops: float | None,
    ) -> None:
        self.enabled = enabled
        self.metrics_path = out_dir / "metrics.jsonl"
        self.tokens_per_step = tokens_per_step
        self.step_flops, self.peak_tflops = step_flops, peak_tflops
        self.bar = tqdm(
            total=stop, initial=start, desc=name, disable=not progress or not enabled, unit="step"
        )
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run drops what a killed run logged after its checkpoint.
            self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=start + 1)

    def step(self, step: int, values: dict[str, float | bool], elapsed_s: float) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values, "tokens_per_s": self.tokens_per_step / elapsed_s}
        postfix = {"loss": f"{values['loss']:.4f}", "tok_s": f"{record['tokens_per_s']:.0f}"}
        if self.step_flops is not None:
            record["tflops"] = self.step_flops / elapsed_s / 1e12
            record["mfu"] = record["tflops"] / self.peak_tflops
            postfix["mfu"] = f"{record['mfu']:.1%}"
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, float):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
