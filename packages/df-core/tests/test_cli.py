"""The ``dualforce`` dispatcher and ``dualforce bench attention`` on a tiny CPU layout."""

from __future__ import annotations

import json

from df_core.cli import main


def test_usage_lists_commands(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out
    assert main(["--help"]) == 0


def test_unknown_command_names_its_package(capsys):
    assert main(["generate"]) == 2
    err = capsys.readouterr().err
    assert "generate" in err and "df-infer" in err


def test_bench_attention_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "attention.json"
    argv = [
        "bench",
        "attention",
        "--frames",
        "3",
        "--tokens",
        "4",
        "--heads",
        "1",
        "--head-dim",
        "8",
        "--window",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["backends"]) == {"flex", "sdpa_dense_mask"}
    for r in result["backends"].values():
        assert r["max_abs_error_vs_fp32"] < 1e-5 and r["ms"] > 0
    assert 0 < result["mask_density"] < 1
    assert "speed-up" in capsys.readouterr().out


def test_bench_attention_stream_mode(tmp_path, capsys):
    out = tmp_path / "stream.json"
    argv = ["bench", "attention", "--stream", "--tokens", "8", "--heads", "2", "--head-dim", "16"]
    argv += ["--window", "3", "--device", "cpu", "--dtype", "fp32", "--iters", "1", "--warmup", "0"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["layout"]["key_tokens"] == 4 * 8
    assert set(result["backends"]) == {"sdpa", "flex_no_mask"}
    for r in result["backends"].values():
        assert r["max_abs_error_vs_fp32"] < 1e-5 and r["tflops"] > 0
    assert "no mask" in capsys.readouterr().out


def test_bench_rejects_bad_sizes(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["bench", "attention", "--frames", "-2"])
    assert "--frames" in capsys.readouterr().err
    assert main(["bench", "nothing"]) == 2
