"""Where the gpu demo's host time goes: codec frame loading, store, loader vs step (H200)."""

import cProfile
import io
import pstats
import time
from dataclasses import replace
from pathlib import Path

import torch

from df_eval import demo as D


def prof(label, fn, n=22):
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    out = fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(n)
    print(f"=== {label}: {time.perf_counter() - t:.1f} s (main thread tottime top)")
    print("\n".join(l for l in s.getvalue().splitlines()[6 : 6 + n + 3] if l.strip()), flush=True)
    return out


if __name__ == "__main__":
    run = Path("/tmp/gp")
    preset = D.apply_sets(
        D.PRESETS["gpu"], ["train_clips=120", "codec_steps=200", "train_steps=60"]
    )
    demo = D.Demo(run, preset, progress=False)
    t = time.perf_counter()
    demo.run(until="corpus")
    print("corpus", round(time.perf_counter() - t, 1), flush=True)
    prof("codec stage", lambda: demo.run(until="codec"))
    prof("store stage", lambda: demo.run(until="store"))
    from df_train.trainer import Trainer

    cfg = demo.train_config()
    for nw in (6, 12):
        tr = Trainer(replace(cfg, data=replace(cfg.data, num_workers=nw)))
        it = iter(tr._loader(0))
        t = time.perf_counter()
        b = [next(it) for _ in range(3)]
        t1 = time.perf_counter()
        b += [next(it) for _ in range(30)]
        print(
            f"loader workers={nw}: first 3 {t1 - t:.1f} s, then {(time.perf_counter() - t1) / 30 * 1e3:.0f} ms/batch",
            flush=True,
        )
        del it
    t = time.perf_counter()
    for i in range(8):
        tr.train_step([b[i]])
    torch.cuda.synchronize()
    print("compile+8 steps", round(time.perf_counter() - t, 1), flush=True)
    t = time.perf_counter()
    for i in range(8, 30):
        tr.train_step([b[i]])
    torch.cuda.synchronize()
    print(f"step {(time.perf_counter() - t) / 22 * 1e3:.0f} ms (prefetched batches)", flush=True)
    prof("one batch in the main process", lambda: [tr.dataset[i] for i in range(256)], 12)
