"""The atomic-write helper: the target holds the old bytes or the new, never a part, and no
temporary is left behind either way."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from df_models.io import atomic_path, read_json_object, temporary_name, write_json_atomic


class WriterError(RuntimeError):
    pass


class BadFileError(ValueError):
    pass


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "data.bin"  # the folder is created
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".data.bin.tmp-")
        assert not path.exists()  # nothing under the name while writing
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert _leftovers(path.parent) == []


def test_error_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("old")
    with pytest.raises(WriterError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise WriterError
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_error_before_any_file_leaves_nothing_under_the_name(tmp_path):
    path = tmp_path / "video.mp4"
    with pytest.raises(WriterError), atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise WriterError
    assert list(tmp_path.iterdir()) == []
    with (
        pytest.raises(WriterError),
        atomic_path(path),
    ):  # the writer failed before creating anything
        raise WriterError
    assert list(tmp_path.iterdir()) == []


def test_temporary_is_hidden_and_keeps_the_suffix(tmp_path):
    # np.save appends ".npy" to a name without it: the temporary must keep the suffix, or the
    # rename would move a file that does not exist.
    tmp = temporary_name(tmp_path / "struct.npy")
    assert tmp.name.startswith(".struct.npy.tmp-") and tmp.suffix == ".npy"
    assert tmp.match(".*.tmp-*")  # what df-eval's demo sweeps after a killed run
    path = tmp_path / "struct.npy"
    with atomic_path(path) as t:
        np.save(t, np.arange(3))
    np.testing.assert_array_equal(np.load(path), np.arange(3))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"indent": 1, "sort_keys": False}, {"indent": None, "sort_keys": True}],
)
def test_json_bytes_are_json_dumps(tmp_path, kwargs):
    data = {"b": [1, 2.5], "a": {"z": None, "y": "é"}}
    path = write_json_atomic(tmp_path / "x.json", data, **kwargs)
    expected = {"indent": 2, "sort_keys": True, **kwargs}
    assert path.read_text() == json.dumps(data, **expected)


def test_json_default_and_strictness(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"p": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"p": str(tmp_path)}
    with pytest.raises(ValueError):
        write_json_atomic(path, {"v": math.nan}, allow_nan=False)
    assert json.loads(path.read_text()) == {"p": str(tmp_path)}  # the failed write kept it
    with pytest.raises(TypeError):
        write_json_atomic(path, {"p": object()})
    assert _leftovers(tmp_path) == []


def test_read_json_object_names_the_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1]")
    with pytest.raises(ValueError, match=r"x\.json must hold a JSON object"):
        read_json_object(path)
    path.write_text("{")
    with pytest.raises(BadFileError, match=r"x\.json is not valid JSON"):
        read_json_object(path, BadFileError)
