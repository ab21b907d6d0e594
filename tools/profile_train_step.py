"""synthtalk_gpu trainer step on the H200: compile variants and batch sizes (synthetic windows)."""

import json
import tempfile
import time
from dataclasses import replace

import torch

import df_train.parallel as PAR
from df_train.bench_train import SyntheticWindows
from df_train.recipes import RECIPES
from df_train.trainer import Trainer


def run(label, batch, mode=None, whole=False, steps=20, warm=6, prof=False):
    orig = PAR.apply_compile

    def patched(model, *, backend="inductor"):
        if whole:
            model.compile(mode=mode)
        else:
            for b in PAR._blocks(model):
                b.compile(backend=backend, fullgraph=False, mode=mode)
        return model

    PAR.apply_compile = patched
    try:
        base = RECIPES["synthtalk_gpu"]()
        with tempfile.TemporaryDirectory() as out:
            cfg = replace(
                base,
                steps=steps + warm + 3,
                batch_size=batch,
                out_dir=out,
                mfu="on",
                data=replace(base.data, normalize_struct=False, num_workers=0),
            )
            m = cfg.model
            tr = Trainer(
                cfg,
                device="cuda",
                dataset=SyntheticWindows(m, cfg.data.frames, length=cfg.steps * batch),
            )
            loader = iter(tr._loader(0))
            batches = [next(loader) for _ in range(cfg.steps)]
            t0 = time.perf_counter()
            for i in range(warm):
                tr.train_step([batches[i]])
            torch.cuda.synchronize()
            tw = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(warm, warm + steps):
                tr.train_step([batches[i]])
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / steps
            print(
                json.dumps(
                    {
                        "label": label,
                        "batch": batch,
                        "step_ms": round(dt * 1e3, 1),
                        "warm_s": round(tw, 1),
                        "mfu": round(tr.step_flops / dt / 1e12 / 989, 4),
                        "mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                    }
                ),
                flush=True,
            )
            if prof:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                    for i in range(3):
                        tr.train_step([batches[i]])
                    torch.cuda.synchronize()
                ka = p.key_averages()
                print(ka.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
                print(ka.table(sort_by="self_cuda_time_total", row_limit=8), flush=True)
    except Exception as e:
        print(label, batch, "FAILED", repr(e)[:400], flush=True)
    finally:
        PAR.apply_compile = orig
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    run("blocks-default", 256, prof=True)
    run("blocks-reduce-overhead", 256, mode="reduce-overhead")
    run("whole-default", 256, whole=True)
    run("whole-reduce-overhead", 256, whole=True, mode="reduce-overhead")
    run("blocks-default", 1024)
