"""Atomic writes and settings guards: a failed write leaves the old file and no leftovers; changed settings
are refused with every changed key named."""

from __future__ import annotations

import json

import pytest

from astropt_hf.run_files import (
    atomic_path,
    check_recorded_settings,
    record_settings,
    write_json_atomic,
    write_text_atomic,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as temporary:
            temporary.write_text('{"a": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    write_text_atomic(path, "α = 0.3\n")
    assert path.read_text(encoding="utf-8") == "α = 0.3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_finished_folder_replaces_an_older_one(tmp_path):
    final = tmp_path / "checkpoint-4"
    final.mkdir()
    (final / "old.bin").write_bytes(b"old")
    with atomic_path(final, durable=True) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".tmp")
        temporary.mkdir()
        (temporary / "new.bin").write_bytes(b"new")
        assert not (final / "new.bin").exists()  # nothing visible before the block ends
    assert [p.name for p in final.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


def test_recorded_settings_refuse_changes_and_name_them(tmp_path):
    path = tmp_path / "out" / "settings.json"
    check_recorded_settings(path, {"max_steps": 8}, "this run", "start afresh")  # nothing recorded yet
    record_settings(path, {"max_steps": 8, "seed": 0})
    record_settings(path, {"max_steps": 99})  # the first record stays
    check_recorded_settings(path, {"max_steps": 8, "seed": 0}, "this run", "start afresh")
    with pytest.raises(ValueError, match=r"for this run \(max_steps: 8 -> 12; seed: 0 -> None\)\. start afresh"):
        check_recorded_settings(path, {"max_steps": 12}, "this run", "start afresh")


def test_stale_temporaries_of_one_path_are_removed_and_nothing_else(tmp_path):
    from astropt_hf.run_files import remove_stale_temporaries, temporary_path

    path = tmp_path / "embeddings.parquet"
    path.write_bytes(b"final")
    stale_file, stale_folder = temporary_path(path), temporary_path(path)
    stale_file.write_bytes(b"half")
    stale_folder.mkdir()
    (stale_folder / "part").write_bytes(b"")
    kept = [tmp_path / ".embeddings.parquet.notours.tmp", tmp_path / f".other.parquet.{stale_file.name[-12:-4]}.tmp",
            tmp_path / "embeddings.parquet.parts"]
    for other in kept:
        other.write_bytes(b"")
    assert sorted(remove_stale_temporaries(path)) == sorted([stale_file, stale_folder])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["embeddings.parquet", *(p.name for p in kept)])
    assert remove_stale_temporaries(tmp_path / "missing" / "x.json") == []
