"""Bit-for-bit check that a refactor changed no result (issue 13).

Runs, at fixed seeds on the CPU:

1. the demo's smoke preset up to its ``generate`` stage (corpus, codec, store, DualForce
   training, streaming generation): the codec's and DualForce's per-step training losses and
   the generated videos' decoded frames and structure;
2. a short Trainer run on that store with every loss term on (L_struct, L_aux, L_lip with its
   heads, the mouth-weighted video loss, uncertainty weighting, clean prefixes, the struct tail,
   context noise, two micro-batches per step);
3. the streaming sampler in other shapes (chunk 2, staggered, approximate clean pass, fused
   clean pass, guidance on both streams) and the full-sequence sampler, on the trained model.

Every float is recorded exactly (``float.hex``) and every array by its SHA-256, so the check is
bit-identical or it fails::

    uv run python tools/refactor_check.py record golden.json   # before the change
    uv run python tools/refactor_check.py check golden.json    # after: exit 1 on any difference
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def _sha(array) -> str:
    a = np.ascontiguousarray(array.detach().cpu().numpy() if torch.is_tensor(array) else array)
    return hashlib.sha256(a.tobytes() + str((a.dtype, a.shape)).encode()).hexdigest()[:20]


def _hex(values) -> list[str]:
    return [float(v).hex() for v in values]


def _losses(path: Path) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [k for k in rows[0] if k.startswith("loss") or k == "grad_norm"]
    return {k: _hex(r[k] for r in rows) for k in keys}


def demo_results(out: Path) -> dict:
    from df_data.media import read_video
    from df_eval.demo import PRESETS, Demo

    torch.set_num_threads(1)
    Demo(out, PRESETS["smoke"], progress=False).run(until="generate")
    result = {
        "codec_metrics": _losses(out / "codec" / "metrics.jsonl"),
        "train_losses": _losses(out / "train" / "metrics.jsonl"),
    }
    for variant in ("trained", "untrained"):
        for mp4 in sorted((out / "pred" / variant).glob("*.mp4")):
            frames, _ = read_video(mp4)
            result[f"{variant}/{mp4.name}"] = _sha(frames)
        for npy in sorted((out / "structs" / variant).glob("*.npy")):
            result[f"{variant}/{npy.name}"] = _sha(np.load(npy))
    return result


def full_loss_results(out: Path) -> dict:
    from df_eval.demo import PRESETS, Demo
    from df_train.trainer import Trainer

    config = Demo(out, PRESETS["smoke"], progress=False).train_config()
    config = replace(
        config,
        out_dir=str(out / "train_all_terms"),
        steps=4,
        grad_accum=2,
        batch_size=2,
        mfu="off",
        noise=replace(config.noise, struct_tail_prob=0.2, clean_prefix_prob=0.5, sigma_ctx=0.1),
        loss=replace(
            config.loss,
            lambda_aux=0.1,
            lambda_lip=0.05,
            mouth_weight=5.0,
            uncertainty_weighting=True,
            aux_decay_steps=3,
        ),
    )
    torch.manual_seed(0)
    history = Trainer(config).fit(progress=False)
    return {
        name: _hex(getattr(m, name) for m in history)
        for name in (
            "loss",
            "loss_video",
            "loss_struct",
            "loss_aux",
            "loss_lip",
            "loss_lip_heads",
            "grad_norm",
        )
    }


def sampler_results(out: Path) -> dict:
    from df_infer.pipeline import StreamingGenerator
    from df_infer.sampler import sample_full, sample_stream

    gen = StreamingGenerator.from_bundle(out / "bundles" / "trained", device="cpu")
    model, c = gen.model, gen.model.config
    g = torch.Generator().manual_seed(1)
    T = 7
    ref = torch.randn(1, c.latent_channels, c.latent_height, c.latent_width, generator=g)
    audio = torch.randn(1, T, c.audio_window, c.audio_dim, generator=g)

    class Windows:
        def ensure(self, t_end):
            return min(t_end, T)

        def windows(self, t0, n):
            return audio[:, t0 : t0 + n]

    result = {}
    shapes = {
        "chunk2": dict(chunk=2),
        "stagger": dict(stagger=2, steps=4),
        "approx": dict(clean_pass="approx", chunk=3),
        "fused": dict(fuse_clean=True, stagger=1, steps=3),
        "guided": dict(cfg_audio=3.0, cfg_struct=2.0, struct_finish_step=1, sigma_ctx=0.1),
        "zero_prior": dict(struct_prior="zero", shift=3.0),
    }
    for name, kw in shapes.items():
        # unguided unless the shape says so (the bundle recommends the demo's guidance)
        kw = {"cfg_audio": 1.0, "cfg_struct": None, **kw}
        cfg = gen.default_sampler(steps=kw.pop("steps", 2), seed=3, **kw)
        parts = list(sample_stream(model, ref, Windows(), cfg))
        z = torch.cat([p.z for p in parts], 1)
        s = torch.cat([p.s for p in parts], 1)
        result[f"stream/{name}"] = [_sha(z), _sha(s)]
        if cfg.clean_pass == "exact":
            zf, sf = sample_full(model, ref, audio, cfg)
            result[f"full/{name}"] = [_sha(zf), _sha(sf)]
    return result


def collect(work: Path) -> dict:
    out = work / "demo"
    return {
        "demo": demo_results(out),
        "all_terms": full_loss_results(out),
        "samplers": sampler_results(out),
    }


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                lines.append(f"{path}/{k}: only in {'golden' if k in a else 'now'}")
            else:
                lines += _diff(a[k], b[k], f"{path}/{k}")
        return lines
    return [] if a == b else [f"{path}: golden {a} != now {b}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("record", "check"))
    p.add_argument("golden", type=Path)
    p.add_argument("--work", type=Path, default=None, help="working directory (default: temp)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        now = collect(args.work or Path(tmp))
    if args.mode == "record":
        args.golden.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"recorded {args.golden}")
        return 0
    diff = _diff(json.loads(args.golden.read_text()), now)
    for line in diff:
        print(line)
    print("identical" if not diff else f"{len(diff)} differences")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
