"""Hostile input: malformed traces and result files, hostile keys, and where the metrics exporter listens.

Every malformed file gives one clear error naming the file (and the line, for
a trace), from the reader or the command line, never a traceback from deep
inside. Every key dask can produce, and keys that make bad file names, are
stored, spilled, found again (also after a flush and reopen) and deleted
without leaving a file behind or writing one outside the Chest's directory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spillkit import Chest, policy_names
from spillkit.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, main
from spillkit.compare import compare
from spillkit.replay import MODES, replay
from spillkit.trace import Trace, TraceError, TraceRecorder, read_trace

REPO = Path(__file__).parent.parent
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ---- 1. the trace reader ----------------------------------------------------------------------


def record_base_trace(path: Path) -> list[str]:
    """A small real trace: keys of several types, a graph, settles, spills, loads, a cost, a delete, a miss."""
    recorder = TraceRecorder(path, {"workload": "base"})
    chest = Chest(available_memory=300, sizeof=lambda value: 100, path=path.parent / "base-chest")
    chest.add_listener(recorder)
    keys: list[Hashable] = ["a", ("x-abc", 0, 1), 2, 2.5, b"raw", None, ("nest", ("y", 0)), "z"]
    recorder.graph({keys[1]: [keys[0]], keys[2]: [keys[0], keys[1]], keys[7]: [keys[2]]},
                   {key: i for i, key in enumerate(keys)}, [keys[0]])  # fmt: skip
    for i, key in enumerate(keys):
        chest.put(key, i, cost=0.5 if i % 2 else None)
        chest.settle()
    for key in keys:
        assert chest[key] == keys.index(key)
    chest.set_cost("a", 2.0)
    del chest["z"]
    with pytest.raises(KeyError):
        chest["z"]
    recorder.close()
    chest.drop()
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The base trace's lines (header first)."""
    return record_base_trace(tmp_path_factory.mktemp("base") / "base.trace")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the files Hypothesis examples write (each example overwrites them)."""
    return tmp_path_factory.mktemp("fuzz")


def write(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def join(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def read_or_error(path: Path) -> Trace | TraceError:
    """The trace, or its TraceError, checked to name the file and line in one short line.

    Any other exception propagates and fails the test: that is the point.
    """
    try:
        return read_trace(path)
    except TraceError as error:
        assert_names_the_line(str(error), path)
        return error


def assert_names_the_line(message: str, path: Path) -> int:
    """The message starts with ``path:LINE: `` and says something in one short line; returns LINE."""
    match = re.match(re.escape(str(path)) + r":(\d+): \S", message)
    assert match, message
    assert "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message
    return int(match.group(1))


def exercise(trace: Trace) -> None:
    """What compare does with an accepted trace: peak, every mode, graph-aware and size-aware policies."""
    peak = trace.peak_bytes()
    assert peak >= 0
    for mode in MODES:
        for policy in ("lru", "nextuse", "cost", "size"):
            result = replay(trace, policy, max(peak // 3, 1), mode=mode)
            assert result.requests == len(list(trace.requests()))


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, 2**64, 10**400, -1, 0, 1]),
    st.floats(),  # NaN and +-Infinity included: Python's json writes and reads them
    st.text(max_size=12),
    st.sampled_from(["put", "get", "k", "graph", "hit", "load", "1", ""]),
)
JUNK = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["t", "f", "b", "r", "deps",
                                                                                "order", "data", "x"]), inner,
                                                                max_size=3),  # fmt: skip
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, lines: list[str]) -> bytes:
    """The base trace with one line damaged in one of many ways, as bytes."""
    lines = list(lines)
    i = draw(st.integers(0, len(lines) - 1))
    row = json.loads(lines[i])
    how = draw(st.sampled_from(["field", "drop-field", "add-field", "line", "drop-line", "copy-line", "swap",
                                "bytes", "cut"]))  # fmt: skip
    if how in ("field", "drop-field", "add-field") and isinstance(row, list):
        j = draw(st.integers(0, len(row) - 1))
        if how == "field":
            row[j] = draw(JUNK)
        elif how == "drop-field":
            del row[j]
        else:
            row.append(draw(JUNK))
        lines[i] = json.dumps(row)
    elif how in ("field", "drop-field", "add-field"):  # the header
        field = draw(st.sampled_from(["format", "version", "workload"]))
        if how == "drop-field":
            row.pop(field, None)
        else:
            row[field] = draw(JUNK)
        lines[i] = json.dumps(row)
    elif how == "line":
        lines[i] = draw(st.one_of(JUNK.map(json.dumps), st.text(max_size=40)))
    elif how == "drop-line":
        del lines[i]
    elif how == "copy-line":
        lines.insert(draw(st.integers(0, len(lines))), lines[i])
    elif how == "swap" and i + 1 < len(lines):
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    data = join(lines)
    if how == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


@FUZZ
@given(data=st.data(), compress=st.booleans())
def test_a_damaged_trace_is_refused_naming_the_line_or_replays(
    base: list[str], workdir: Path, data: st.DataObject, compress: bool
) -> None:
    path = write(workdir / "damaged.trace", data.draw(mutated(base)), compress)
    outcome = read_or_error(path)
    if isinstance(outcome, Trace):
        exercise(outcome)


@FUZZ
@given(data=st.binary(max_size=300), compress=st.booleans(), suffix=st.sampled_from([".trace", ".trace.gz"]))
def test_random_bytes_are_not_a_trace(workdir: Path, data: bytes, compress: bool, suffix: str) -> None:
    path = write(workdir / f"random{suffix}", data, compress)
    assert isinstance(read_or_error(path), TraceError)


@FUZZ
@given(text=st.text(max_size=200), compress=st.booleans())
def test_random_text_is_not_a_trace(workdir: Path, text: str, compress: bool) -> None:
    path = write(workdir / "text.trace.gz", text.encode("utf-8", "surrogatepass"), compress)
    assert isinstance(read_or_error(path), TraceError)


@FUZZ
@given(cut=st.integers(0, 10**6))
def test_a_truncated_gzip_trace_names_the_line_it_reached(base: list[str], workdir: Path, cut: int) -> None:
    whole = gzip.compress(join(base), mtime=0)
    path = workdir / "cut.trace.gz"
    path.write_bytes(whole[: cut % len(whole)])
    error = read_or_error(path)
    assert isinstance(error, TraceError)
    if cut % len(whole) > 10:  # past the gzip header: the stream itself ends too soon
        assert "corrupt or truncated gzip data" in str(error)


def first(base: list[str], tag: str) -> int:
    """Index of the first ``tag`` line (the header's is 0)."""
    if tag == "header":
        return 0
    return next(i for i, line in enumerate(base) if line.startswith(f'["{tag}"'))


def replace_field(tag: str, index: int, value: str) -> Callable[[list[str]], int]:
    """A damage: field ``index`` of the first ``tag`` line becomes the JSON text ``value``."""

    def damage(lines: list[str]) -> int:
        i = first(lines, tag)
        row = json.loads(lines[i])
        row[index] = "\0PLACEHOLDER"
        lines[i] = json.dumps(row).replace('"\\u0000PLACEHOLDER"', value)
        return i

    return damage


def replace_line(tag: str, text: str) -> Callable[[list[str]], int]:
    def damage(lines: list[str]) -> int:
        i = first(lines, tag)
        lines[i] = text
        return i

    return damage


def insert_line(at: int, text: str) -> Callable[[list[str]], int]:
    def damage(lines: list[str]) -> int:
        lines.insert(at, text)
        return at

    return damage


DEEP = "[" * 100_000 + "]" * 100_000
# name -> (damage returning the 0-based index of the bad line, a fragment of the error)
DAMAGES: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "nbytes-string": (replace_field("put", 2, '"100"'), "nbytes must be an integer"),
    "nbytes-negative": (replace_field("put", 2, "-1"), "nbytes must be an integer"),
    "nbytes-float": (replace_field("put", 2, "100.0"), "nbytes must be an integer"),
    "nbytes-nan": (replace_field("put", 2, "NaN"), "nbytes must be an integer"),
    "nbytes-huge": (replace_field("put", 2, str(2**64)), "nbytes must be an integer"),
    "nbytes-5000-digits": (replace_field("put", 2, "9" * 5000), "not valid JSON"),
    "nbytes-true": (replace_field("put", 2, "true"), "nbytes must be an integer"),
    "cost-nan": (replace_field("put", 3, "NaN"), "cost must be a number"),
    "cost-string": (replace_field("cost", 2, '"2.0"'), "cost must be a number"),
    "cost-10**400": (replace_field("cost", 2, str(10**400)), "cost must be a number"),
    "time-infinity": (replace_field("put", 4, "Infinity"), "t must be a finite number"),
    "time-null": (replace_field("del", 2, "null"), "t must be a finite number"),
    "settle-time-list": (replace_field("settle", 1, "[1]"), "t must be a finite number"),
    "object-negative": (replace_field("put", 5, "-3"), "object must be a non-negative integer"),
    "outcome-unknown": (replace_field("get", 3, '"maybe"'), "outcome must be one of hit, load, miss"),
    "key-id-undefined": (replace_field("put", 1, "999"), "key id 999 is not defined"),
    "key-id-negative": (replace_field("put", 1, "-1"), "key id -1 is not defined"),
    "key-id-float": (replace_field("get", 1, "1.0"), "key id 1.0 is not defined"),
    "key-id-true": (replace_field("del", 1, "true"), "key id True is not defined"),
    "key-id-string": (replace_field("spill", 1, '"a"'), "key id 'a' is not defined"),
    "key-id-list": (replace_field("evict", 1, "[0]"), "key id [0] is not defined"),
    "key-definition-out-of-order": (replace_field("k", 1, "5"), "out of sequence"),
    "key-a-list": (replace_field("k", 2, "[1, 2]"), "not an encoded key"),
    "key-null": (replace_field("k", 2, "null"), "not an encoded key"),
    "key-true": (replace_field("k", 2, "true"), "not an encoded key"),
    "key-a-bare-float": (replace_field("k", 2, "1.5"), "not an encoded key"),
    "key-unknown-tag": (replace_field("k", 2, '{"x": 1}'), "not an encoded key"),
    "key-two-tags": (replace_field("k", 2, '{"t": [], "f": 1}'), "not an encoded key"),
    "key-tuple-of-junk": (replace_field("k", 2, '{"t": [1, [2]]}'), "not an encoded key"),
    "key-bad-hex": (replace_field("k", 2, '{"b": "zz"}'), "not an encoded key"),
    "key-float-string": (replace_field("k", 2, '{"f": "1.5"}'), "not an encoded key"),
    "key-nested-2000-deep": (replace_field("k", 2, '{"t": [' * 2000 + "]}" * 2000), "nested too deeply"),
    "nested-100000-deep": (replace_line("get", DEEP), "nested too deeply"),
    "put-missing-field": (replace_line("put", '["put", 1, 100, null, 0.1]'), "'put' needs 6 fields"),
    "get-extra-field": (replace_line("get", '["get", 1, 0.1, "hit", 7]'), "'get' needs 4 fields"),
    "settle-bare": (replace_line("settle", '["settle"]'), "'settle' needs 2 fields"),
    "unknown-record": (replace_line("del", '["frobnicate", 1, 0.1]'), "unknown record 'frobnicate'"),
    "record-tag-a-number": (replace_line("del", "[7, 1, 0.1]"), "unknown record 7"),
    "empty-array": (replace_line("del", "[]"), "expected a JSON array"),
    "an-object": (replace_line("del", '{"put": 1}'), "expected a JSON array"),
    "a-string": (replace_line("del", '"put"'), "expected a JSON array"),
    "second-header": (insert_line(5, '{"format": "spillkit-trace", "version": 1}'), "a second header line"),
    "not-json": (replace_line("get", '["get", 1, 0.1, "hit"'), "not valid JSON"),
    "graph-not-an-object": (replace_field("graph", 1, "[]"), "a graph needs an object"),
    "graph-without-order": (replace_field("graph", 1, '{"deps": []}'), "a graph needs an object"),
    "graph-dependency-undefined": (replace_field("graph", 1, '{"deps": [[0, [77]]], "order": []}'),
                                   "key id 77 is not defined"),  # fmt: skip
    "graph-deps-not-pairs": (replace_field("graph", 1, '{"deps": [[0]], "order": []}'), "list of [id, ...] pairs"),
    "graph-deps-not-a-list": (replace_field("graph", 1, '{"deps": [[0, 1]], "order": []}'),
                              "dependencies must be a list"),  # fmt: skip
    "graph-order-a-string": (replace_field("graph", 1, '{"deps": [], "order": [[0, "1"]]}'),
                             "order positions must be integers"),  # fmt: skip
    "graph-order-huge": (replace_field("graph", 1, '{"deps": [], "order": [[0, ' + str(10**30) + "]]}"),
                         "order positions must be integers"),  # fmt: skip
    "graph-data-an-object": (replace_field("graph", 1, '{"deps": [], "order": [], "data": {}}'),
                             "'data' must be a list"),  # fmt: skip
    "a-megabyte-line-of-junk": (replace_line("get", '["get", 1, 0.1, "' + "x" * 2**20 + '"]'), "outcome must be"),
    "header-missing": (lambda lines: [lines.pop(0), 0][1], "not a spillkit trace"),
    "header-other-format": (replace_line("header", '{"format": "other", "version": 1}'), "not a spillkit trace"),
    "header-empty-line": (replace_line("header", ""), "not a spillkit trace (the first line is empty)"),
    "header-not-json": (replace_line("header", "{format"), "not a spillkit trace (the first line is not valid JSON"),
    "header-an-array": (replace_line("header", '["spillkit-trace", 1]'), "not a spillkit trace"),
    "version-2": (replace_line("header", '{"format": "spillkit-trace", "version": 2}'), "trace version 2 is not"),
    "version-string": (replace_line("header", '{"format": "spillkit-trace", "version": "1"}'), "trace version '1'"),
    "version-true": (replace_line("header", '{"format": "spillkit-trace", "version": true}'), "trace version True"),
    "version-1.0": (replace_line("header", '{"format": "spillkit-trace", "version": 1.0}'), "trace version 1.0"),
    "version-missing": (replace_line("header", '{"format": "spillkit-trace"}'), "trace version None"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", list(DAMAGES))
def test_each_kind_of_damage_is_named_at_its_line(base: list[str], tmp_path: Path, name: str, compress: bool) -> None:
    damage, fragment = DAMAGES[name]
    lines = list(base)
    bad = damage(lines)
    path = write(tmp_path / "bad.trace.gz", join(lines), compress)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert assert_names_the_line(message, path) == bad + 1, message
    assert fragment in message, message


def test_undecodable_bytes_name_their_line_even_deep_in_a_gzip_stream(base: list[str], tmp_path: Path) -> None:
    """The reader decodes line by line, so the line number is exact however the data is buffered."""
    lines = list(base) + ['["get", 1, 0.5, "hit"]'] * 5000  # far past the first decompressed chunk
    data = join(lines)
    at = data.index(b"\n", len(data) - 300) + 1  # the start of a line near the end
    line = data[:at].count(b"\n") + 1
    for bad in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80"):  # invalid, a broken pair, a UTF-8 encoded surrogate
        path = write(tmp_path / "bytes.trace.gz", data[:at] + b'["get", 1, 0.5, "' + bad + b'"]\n', True)
        with pytest.raises(TraceError, match=r":(\d+): not UTF-8 text") as info:
            read_trace(path)
        assert assert_names_the_line(str(info.value), path) == line


def test_a_bom_crlf_blank_lines_and_a_misleading_suffix_are_accepted(base: list[str], tmp_path: Path) -> None:
    """What an editor or a copy does to a text file is harmless and accepted; the trace reads the same."""
    expected = read_trace(write(tmp_path / "base.trace", join(base), False))
    variants = {
        "bom.trace": b"\xef\xbb\xbf" + join(base),
        "crlf.trace": join(base).replace(b"\n", b"\r\n"),
        "blank-lines.trace": join([base[0], "", *base[1:6], "   ", *base[6:], "", ""]),
        "plain-named.trace.gz": join(base),  # not compressed, despite its name
    }
    for name, data in variants.items():
        trace = read_trace(write(tmp_path / name, data, False))
        assert (trace.header, trace.keys, trace.ops) == (expected.header, expected.keys, expected.ops), name
        assert (trace.dependencies, trace.order, trace.data) == (expected.dependencies, expected.order, expected.data)
    gz = read_trace(write(tmp_path / "compressed-named.trace", join(base), True))  # compressed, named plain
    assert gz.ops == expected.ops
    assert [op[1] for op in expected.ops[:3:2]] == ["a", ("x-abc", 0, 1)]
    assert None in expected.keys and b"raw" in expected.keys and ("nest", ("y", 0)) in expected.keys


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p, "no such trace file"),
        (lambda p: (p.mkdir(), p)[1], "cannot open the trace"),
        (lambda p: (p.write_bytes(b""), p)[1], ":1: not a spillkit trace (the first line is empty)"),
        (lambda p: (p.write_bytes(gzip.compress(b"")), p)[1], ":1: not a spillkit trace"),
        (lambda p: (p.write_bytes(b"\x1f\x8b" + b"\0" * 30), p)[1], ":1: corrupt or truncated gzip data"),
    ],
    ids=["missing", "a-directory", "empty", "empty-gzip", "gzip-magic-then-junk"],
)
def test_files_that_are_not_traces(tmp_path: Path, make: Callable[[Path], Path], fragment: str) -> None:
    path = make(tmp_path / "x.trace.gz")
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert str(info.value).startswith(f"{path}:") and fragment in str(info.value)


def test_a_gzip_stream_with_a_bad_checksum_is_refused(base: list[str], tmp_path: Path) -> None:
    data = bytearray(gzip.compress(join(base), mtime=0))
    data[-8] ^= 0xFF  # the CRC32 of the uncompressed data
    path = tmp_path / "crc.trace.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="corrupt or truncated gzip data"):
        read_trace(path)
    data = bytearray(gzip.compress(join(base), mtime=0))
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream
    path.write_bytes(bytes(data))
    outcome = read_or_error(path)  # a flip may still decode to valid deflate: then the CRC or the JSON catches it
    assert isinstance(outcome, TraceError)
