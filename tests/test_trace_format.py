"""open_text (spillkit.trace_format): a trace file opened as UTF-8 text, gzip-compressed when its name ends in .gz."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from spillkit.trace_format import open_text

TEXT = '{"format": "spillkit-trace"}\n["k", 1, "clé ☃ 鍵"]\n'


def test_a_gz_name_writes_gzip_that_reads_back_as_the_same_text(tmp_path: Path) -> None:
    # Catches: a .gz trace written as plain text (readers elsewhere gunzip by name), or not UTF-8 inside.
    path = tmp_path / "run.trace.gz"
    with open_text(path, "w") as file:
        file.write(TEXT)
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == TEXT.encode("utf-8")
    with open_text(str(path), "r") as file:  # a str path too
        assert file.read() == TEXT


def test_another_name_writes_plain_utf8(tmp_path: Path) -> None:
    # Catches: compressing a file whose name does not ask for it (.gz elsewhere in the name, or in capitals).
    # (Not caught here: a missing encoding="utf-8", since this interpreter's locale encoding is UTF-8 already.)
    for name in ("run.trace", "run.gz.trace", "run.GZ"):
        path = tmp_path / name
        with open_text(path, "w") as file:
            file.write(TEXT)
        assert path.read_bytes() == TEXT.encode("utf-8"), name
        with open_text(path, "r") as file:
            assert file.read() == TEXT


def test_appending_to_a_gz_trace_keeps_what_was_there(tmp_path: Path) -> None:
    # Catches: mode passed on wrongly (an append that truncates, or a binary handle).
    path = tmp_path / "run.trace.gz"
    with open_text(path, "w") as file:
        file.write("first\n")
    with open_text(path, "a") as file:
        file.write("second\n")
    with open_text(path, "r") as file:
        assert file.read() == "first\nsecond\n"


def test_a_missing_file_raises_file_not_found_for_both_kinds(tmp_path: Path) -> None:
    # Catches: a missing trace read as empty.
    for name in ("missing.trace", "missing.trace.gz"):
        with pytest.raises(FileNotFoundError):
            open_text(tmp_path / name, "r").read()
