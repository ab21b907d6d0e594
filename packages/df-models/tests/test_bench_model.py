"""``dualforce bench model`` on the tiny preset (CPU): the step runs and the streaming check
compares training and streaming against fp32."""

from __future__ import annotations

import json

import pytest

from df_models.bench_model import main


@pytest.mark.parametrize("ref_tokens", [False, True])
def test_bench_model_tiny_cpu(tmp_path, capsys, ref_tokens):
    out = tmp_path / "model.json"
    argv = [
        *(["--ref-tokens"] if ref_tokens else []),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--frames",
        "2",
        "--stream-frames",
        "4",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["ref_tokens"] is ref_tokens
    assert r["train_step"]["step_ms"] > 0
    check = r["stream_check"]
    assert check["passed"] and 0 < check["train_rel_err_video"] < 0.05
    assert "PASS" in capsys.readouterr().out
