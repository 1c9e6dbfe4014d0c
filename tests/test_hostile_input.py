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
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from helpers import ReprRaises, flip_last_byte
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spillkit import Chest, CorruptSpillFile, policy_names
from spillkit.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, main
from spillkit.compare import compare
from spillkit.keys import SpelledKey
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
    recorder.graph(
        {keys[1]: [keys[0]], keys[2]: [keys[0], keys[1]], keys[7]: [keys[2]]},
        {key: i for i, key in enumerate(keys)},
        [keys[0]],
    )
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
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["t", "f", "b", "r", "deps", "order", "data", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, lines: list[str]) -> bytes:
    """The base trace with one line damaged in one of many ways, as bytes."""
    lines = list(lines)
    i = draw(st.integers(0, len(lines) - 1))
    row = json.loads(lines[i])
    how = draw(
        st.sampled_from(["field", "drop-field", "add-field", "line", "drop-line", "copy-line", "swap", "bytes", "cut"])
    )
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


def drop_header(lines: list[str]) -> int:
    del lines[0]
    return 0


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
    "key-id-float": (replace_field("get", 1, "1.0"), "key id 1.0 is not an integer"),
    "key-id-true": (replace_field("del", 1, "true"), "key id True is not an integer"),
    "key-id-string": (replace_field("spill", 1, '"a"'), "key id 'a' is not an integer"),
    "key-id-digits": (replace_field("put", 1, '"0"'), "key id '0' is not an integer"),  # said 'ids 0 to 0 are'
    "key-id-list": (replace_field("evict", 1, "[0]"), "key id [0] is not an integer"),
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
    "get-extra-field": (replace_line("get", '["get", 1, 0.1, "load", 7, 8]'), "'get' needs 4 or 5 fields"),
    "hit-with-object": (replace_line("get", '["get", 1, 0.1, "hit", 7]'), "only a 'load' or 'reuse' names the object"),
    "load-object-negative": (replace_line("get", '["get", 1, 0.1, "load", -7]'), "object must be a non-negative"),
    "settle-bare": (replace_line("settle", '["settle"]'), "'settle' needs 2 fields"),
    "ondisk-negative-size": (replace_line("del", '["ondisk", 1, -5, 0.1]'), "nbytes must be an integer"),
    "defer-not-a-flag": (replace_line("del", '["defer", 0.1, 1]'), "deferred must be true or false"),
    "free-with-a-key": (replace_line("del", '["free", 1, 0.1]'), "'free' needs 2 fields"),
    "unknown-record": (replace_line("del", '["frobnicate", 1, 0.1]'), "unknown record 'frobnicate'"),
    "record-tag-a-number": (replace_line("del", "[7, 1, 0.1]"), "unknown record 7"),
    "empty-array": (replace_line("del", "[]"), "expected a JSON array"),
    "an-object": (replace_line("del", '{"put": 1}'), "expected a JSON array"),
    "a-string": (replace_line("del", '"put"'), "expected a JSON array"),
    "second-header": (insert_line(5, '{"format": "spillkit-trace", "version": 1}'), "a second header line"),
    "not-json": (replace_line("get", '["get", 1, 0.1, "hit"'), "not valid JSON"),
    "graph-not-an-object": (replace_field("graph", 1, "[]"), "a graph needs an object"),
    "graph-without-order": (replace_field("graph", 1, '{"deps": []}'), "a graph needs an object"),
    "graph-dependency-undefined": (
        replace_field("graph", 1, '{"deps": [[0, [77]]], "order": []}'),
        "key id 77 is not defined",
    ),
    "graph-deps-not-pairs": (replace_field("graph", 1, '{"deps": [[0]], "order": []}'), "list of [id, ...] pairs"),
    "graph-deps-not-a-list": (
        replace_field("graph", 1, '{"deps": [[0, 1]], "order": []}'),
        "dependencies must be a list",
    ),
    "graph-order-a-string": (
        replace_field("graph", 1, '{"deps": [], "order": [[0, "1"]]}'),
        "order positions must be integers",
    ),
    "graph-order-huge": (
        replace_field("graph", 1, '{"deps": [], "order": [[0, ' + str(10**30) + "]]}"),
        "order positions must be integers",
    ),
    "graph-data-an-object": (
        replace_field("graph", 1, '{"deps": [], "order": [], "data": {}}'),
        "'data' must be a list",
    ),
    "a-megabyte-line-of-junk": (replace_line("get", '["get", 1, 0.1, "' + "x" * 2**20 + '"]'), "outcome must be"),
    "header-missing": (drop_header, "not a spillkit trace"),
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


# ---- 2. traces that read but are odd: replay tolerates what a partial recording can contain ------


def trace_text(*rows: list[Any]) -> str:
    header = json.dumps({"format": "spillkit-trace", "version": 1, "workload": "odd"})
    return "\n".join([header, *(json.dumps(row) for row in rows)]) + "\n"


# A recorder attached to a Chest that already held keys sees reads, costs and deletes of keys it never saw
# put; a hand-made graph may be cyclic or name keys never stored. The reader accepts all of it (each line is
# well formed); replay treats a read of an absent key as a miss and a delete or cost of one as nothing.
ODD = trace_text(
    ["k", 0, "a"],
    ["k", 1, {"t": ["x", 0]}],
    ["k", 2, {"f": math.inf}],
    ["k", 3, "never-put"],
    ["k", 4, {"r": "None"}],
    ["graph", {"deps": [[0, [1]], [1, [0]], [3, [3]], [4, [3, 3]]], "order": [[0, 5], [1, -7]], "data": [3]}],
    ["get", 3, 0.0, "miss"],
    ["del", 3, 0.1],
    ["cost", 3, 1.0, 0.2],
    ["spill", 3, 0.3],
    ["evict", 3, 0.3],
    ["put", 0, 0, None, 0.4, 0],
    ["put", 1, 10**12, math.inf, 0.5, 1],
    ["put", 2, 5, -3.0, 0.6, 1],
    ["put", 0, 7, 1e308, 0.7, 1],
    ["cost", 1, -math.inf, 0.8],
    ["settle", 0.9],
    ["get", 1, 1.0, "hit"],
    ["del", 1, 1.1],
    ["del", 1, 1.2],
    ["get", 1, 1.3, "load"],
    ["put", 4, 3, None, 1.4, 0],
    ["get", 4, 1.5, "hit"],
)


def test_odd_but_well_formed_traces_replay_with_every_policy_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "odd.trace"
    path.write_text(ODD)
    trace = read_trace(path)
    assert trace.keys == ["a", ("x", 0), math.inf, "never-put", None]
    assert trace.peak_bytes() == 10**12 + 3  # three keys share object 1: counted once, at its first size
    for budget in (0, 6, 10**12, 10**13):
        for mode in MODES:
            for policy in policy_names():
                result = replay(trace, policy, budget, mode=mode)
                assert result.requests == len(list(trace.requests()))
                assert result.misses >= 2  # the two reads of keys never present
    rows = compare([trace], ["10%", "100%", "1 GiB"], ["lru", "nextuse"], list(MODES), progress=None)  # bounds too
    assert {row["policy"] for row in rows} >= {"lru", "nextuse", "bound:foo", "bound:pfoo-l", "belady-size"}


def test_traces_with_nothing_to_spill_compare_and_plot(tmp_path: Path) -> None:
    texts = {
        "header-only": trace_text(),
        "zero-bytes": trace_text(["k", 0, "a"], ["put", 0, 0, None, 0, 0], ["get", 0, 0.1, "hit"]),
    }
    paths = []
    for name, text in texts.items():
        paths.append(str(tmp_path / f"{name}.trace"))
        Path(paths[-1]).write_text(text)
    code, out, err = run_main(
        ["compare", *paths, "--budgets", "10%,1 KiB", "--policies", "lru,cost", "-o", str(tmp_path / "report")]
    )
    assert code == EXIT_OK, err
    assert "Traceback" not in err and (tmp_path / "report" / "results.csv").exists()
    assert all(f"### {name}, budget" in out for name in texts)


# ---- 3. the command line ----------------------------------------------------------------------


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``spillkit ARGV`` in this process: (exit code, stdout, stderr). Any exception escaping fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True):
        code = main(argv)  # (matplotlib warns about log axes of an empty trace: a warning, not an error)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(err: str, command: str, path: Path, line: bool) -> None:
    """stderr is one line, ``spillkit COMMAND: PATH:LINE: ...`` (or ``PATH: ...``), and no traceback."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    prefix = f"spillkit {command}: "
    assert err.startswith(prefix + str(path)), err
    if line:
        assert_names_the_line(err[len(prefix) :].rstrip("\n"), path)


@settings(FUZZ, max_examples=25)
@given(data=st.data(), compress=st.booleans())
def test_compare_on_a_damaged_trace_exits_3_with_one_line_naming_it(
    base: list[str], workdir: Path, data: st.DataObject, compress: bool
) -> None:
    path = write(workdir / "cli.trace.gz", data.draw(mutated(base)), compress)
    code, out, err = run_main(
        [
            "compare",
            str(path),
            "--budgets",
            "30%",
            "--policies",
            "lru,nextuse",
            "--modes",
            "strict,settled",
            "--no-bounds",
            "--no-plots",
            "-o",
            str(workdir / "out"),
        ]
    )
    if code == EXIT_OK:
        assert err == "" and "### " in out
    else:
        assert code == EXIT_BAD_INPUT, err
        assert_one_line_error(err, "compare", path, line=True)
        assert out == ""


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory: pytest.TempPathFactory, base: list[str]) -> str:
    """The text of a real results.csv (base trace, two budgets, lru and cost, with bounds)."""
    where = tmp_path_factory.mktemp("csv")
    trace = write(where / "base.trace", join(base), False)
    code, _, err = run_main(
        ["compare", str(trace), "--budgets", "20%,50%", "--policies", "lru,cost", "--no-plots", "-o", str(where)]
    )
    assert code == EXIT_OK, err
    return (where / "results.csv").read_text()


CELLS = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "-1", "1e999", "0", "abc", "strict", "bound", "lru", "../x", "x" * 300]),
    st.text(max_size=12),
    st.integers(-(10**30), 10**30).map(str),
    st.floats().map(repr),
)


@st.composite
def damaged_csv(draw: st.DrawFn, text: str) -> bytes:
    lines = text.splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    cells = lines[i].split(",")
    how = draw(st.sampled_from(["cell", "cell", "cell", "drop-cell", "drop-line", "bytes", "cut", "quote"]))
    if how == "cell":
        cells[draw(st.integers(0, len(cells) - 1))] = draw(CELLS)
    elif how == "drop-cell":
        del cells[draw(st.integers(0, len(cells) - 1))]
    elif how == "drop-line":
        cells = []
    elif how == "quote":
        cells[draw(st.integers(0, len(cells) - 1))] = '"' + draw(st.text(max_size=5))
    lines[i] = ",".join(cells)
    data = ("\n".join(line for line in lines if line or how != "drop-line") + "\n").encode()
    if how == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    return data


@settings(FUZZ, max_examples=8)  # each accepted example draws three PNGs
@given(data=st.data())
def test_plot_on_a_damaged_results_csv_draws_or_exits_3_naming_it(
    results_csv: str, workdir: Path, data: st.DataObject
) -> None:
    path = workdir / "results.csv"
    path.write_bytes(data.draw(damaged_csv(results_csv)))
    figures = workdir / "figures"
    code, out, err = run_main(["plot", str(path), "-o", str(figures)])
    if code == EXIT_OK:
        written = out.split()
        assert written and all(os.path.dirname(p) == str(figures) and os.path.exists(p) for p in written)
    else:
        assert code == EXIT_BAD_INPUT, err
        assert_one_line_error(err, "plot", path, line=False)


@pytest.mark.parametrize(
    ("cell", "value", "fragment"),
    [
        ("io_bytes", "", "empty io_bytes"),
        ("io_bytes", "nan", "'nan' is not a finite number of at least 0"),
        ("budget", "-1", "'-1' is not a finite number of at least 0"),
        ("budget_fraction", "inf", "'inf' is not a finite number"),
        ("mode", "../../escape", "'../../escape' is not a replay mode"),  # the mode names the PNG files
        ("hits", "x" * 1000, "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... is not a number"),
    ],
)
def test_plot_names_the_line_and_column_of_a_bad_cell(
    results_csv: str, tmp_path: Path, cell: str, value: str, fragment: str
) -> None:
    lines = results_csv.splitlines()
    column = lines[0].split(",").index(cell)
    cells = lines[3].split(",")
    cells[column] = value
    lines[3] = ",".join(cells)
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run_main(["plot", str(path), "-o", str(tmp_path / "figures")])
    assert code == EXIT_BAD_INPUT
    assert_one_line_error(err, "plot", path, line=False)
    assert err.startswith(f"spillkit plot: {path}:4: ") and fragment in err, err
    assert not (tmp_path / "figures").exists() and not (tmp_path.parent / "escape.png").exists()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not a spillkit results CSV: missing columns"),
        (b"\xff\xfe\x00garbage", "not a spillkit results CSV (not UTF-8 text"),
        (None, "no policy results to plot (only bounds)"),
        (b"x" * 200_000, "field larger than field limit"),
    ],
    ids=["empty", "not-utf8", "only-bounds", "huge-cell"],
)
def test_plot_refuses_files_that_are_not_results(
    results_csv: str, tmp_path: Path, data: bytes | None, fragment: str
) -> None:
    if data is None:
        lines = results_csv.splitlines()
        data = ("\n".join([lines[0], *(line for line in lines if ",bound," in line)]) + "\n").encode()
    elif data.startswith(b"xxx"):
        data = results_csv.encode().replace(b"\n", b"\n" + data + b",", 1)
    path = tmp_path / "results.csv"
    path.write_bytes(data)
    code, _, err = run_main(["plot", str(path), "-o", str(tmp_path / "figures")])
    assert code == EXIT_BAD_INPUT and fragment in err
    assert_one_line_error(err, "plot", path, line=False)


def test_plot_accepts_a_csv_saved_by_a_spreadsheet_with_a_bom(results_csv: str, tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_bytes(b"\xef\xbb\xbf" + results_csv.replace("\n", "\r\n").encode())
    code, out, err = run_main(["plot", str(path), "-o", str(tmp_path / "figures")])
    assert code == EXIT_OK, err
    assert len(out.split()) == 3  # loads and io vs budget, reduction vs LRU


def test_compare_with_lru_alone_draws_no_reduction_figure(base: list[str], tmp_path: Path) -> None:
    """There is nothing to reduce relative to LRU when LRU is all that ran (this used to raise TypeError)."""
    trace = write(tmp_path / "base.trace", join(base), False)
    code, _, err = run_main(
        ["compare", str(trace), "--policies", "lru", "--no-bounds", "--budgets", "30%", "-o", str(tmp_path / "r")]
    )
    assert code == EXIT_OK, err
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == [
        "io_vs_budget-settled.png",
        "loads_vs_budget-settled.png",
        "timeline-base.png",
    ]


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["compare", "T", "--budgets", ""], EXIT_USAGE, "no budgets in ''"),
        (["compare", "T", "--budgets", "%"], EXIT_USAGE, "budget '%' is not a percentage"),
        (["compare", "T", "--budgets", "nan%"], EXIT_USAGE, "budget 'nan%' must be a percentage above 0"),
        (["compare", "T", "--budgets", "1 XB"], EXIT_USAGE, "unknown unit 'XB'"),
        (["compare", "T", "--policies", ","], EXIT_USAGE, "no policies in ','"),
        (["compare", "T", "--policies", "../x"], EXIT_USAGE, "unknown policies ['../x']"),
        (["compare", "T", "--modes", ""], EXIT_USAGE, "no modes given"),
        (
            ["compare", "T", "-o", "T"],
            EXIT_USAGE,
            "cannot be a directory to write into: 'D/base.trace' is no directory",
        ),
        (["compare", "--workload", "nosuch"], EXIT_USAGE, "unknown workload 'nosuch'"),
        (["record", "nosuch"], EXIT_USAGE, "unknown workload 'nosuch'"),
        (
            ["record", "tsqr", "--budget", "-1", "--scale", "0.01", "-o", "D/r.trace.gz"],
            EXIT_USAGE,
            "cannot parse a byte count from '-1'",
        ),
        (["record", "tsqr", "--scale", "0.01", "-o", "D/base.trace/r.trace.gz"], EXIT_USAGE, "'D/base.trace' is no"),
        (["record", "tsqr", "--scale", "0.01", "-o", "D"], EXIT_USAGE, "is a directory; give the trace file's name"),
        (["plot", "D/missing.csv"], EXIT_BAD_INPUT, "D/missing.csv"),
        (["record", "tsqr", "--scale", "inf"], EXIT_USAGE, "expected a positive number like 0.25, not 'inf'"),
        (["record", "tsqr", "--scale", "-1"], EXIT_USAGE, "not '-1'"),
        (["compare", "--workload", "tsqr", "--scale", "nan"], EXIT_USAGE, "not 'nan'"),
        (["record"], EXIT_USAGE, "the following arguments are required: workload"),
        (["plot"], EXIT_USAGE, "the following arguments are required: results"),
    ],
)
def test_wrong_arguments_get_one_clear_line(
    base: list[str], tmp_path: Path, argv: list[str], code: int, fragment: str
) -> None:
    trace = str(write(tmp_path / "base.trace", join(base), False))
    argv = [trace if a == "T" else a.replace("D", str(tmp_path)) if a.startswith("D") else a for a in argv]
    fragment = fragment.replace("D/", f"{tmp_path}/")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            got = main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            got = int(exit_.code or 0)
    assert got == code, err.getvalue()
    message = err.getvalue().strip().splitlines()[-1]  # argparse prints its usage line first
    assert fragment in message and message.startswith(f"spillkit {argv[0]}: "), err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert not os.path.exists(os.path.join(tmp_path, "r.trace.gz"))


@pytest.mark.parametrize("command", ["compare", "plot"])
def test_from_a_shell_a_bad_file_gives_exit_3_and_one_line(base: list[str], tmp_path: Path, command: str) -> None:
    if command == "compare":
        lines = list(base)
        lines[12] = '["put", 1, "many", null, 0.1, 0]'
        path = write(tmp_path / "bad.trace.gz", join(lines), True)
        args = [str(path), "--no-plots", "-o", str(tmp_path / "out")]
        expected = f"spillkit compare: {path}:13: nbytes must be an integer from 0 to 2**63-1, found 'many'\n"
    else:
        path = tmp_path / "bad.csv"
        path.write_bytes(b"\x89PNG\r\n\x1a\n not a csv")
        args = [str(path), "-o", str(tmp_path / "figures")]
        expected = f"spillkit plot: {path}: not a spillkit results CSV (not UTF-8 text at byte 0)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "spillkit", command, *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert (done.returncode, done.stderr, done.stdout) == (EXIT_BAD_INPUT, expected, "")


# ---- 4. keys: every kind dask makes, and names no file system likes ----------------------------
# tests/test_faults.py covers path escapes, reserved dot names, case folding, lone surrogates and
# equal reprs; tests/test_storage.py the file names themselves. Here: a Chest behaves like a dict
# for every key dask can produce (1 == 1.0 == True is one key), through spilling, a flush and a
# reopen, and a delete leaves no file behind.

UNIT = 100


def unit_sizeof(value: Any) -> int:
    return UNIT


def dask_graph_keys() -> list[Hashable]:
    """Keys of real dask graphs: an array (name, i, j) and a dataframe (name, i), plus literal data keys."""
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd

    array = (da.ones((6, 6), chunks=2) + 1).sum(axis=0)
    frame = dd.from_pandas(pd.DataFrame({"a": range(12), "b": range(12)}), npartitions=3)
    series = (frame.a + frame.b).cumsum()
    keys = list(dict(array.__dask_graph__())) + list(dict(series.__dask_graph__()))
    return list(dict.fromkeys(keys))


HOSTILE_NAMES: list[Hashable] = [
    "aux", "AUX", "nul", "com1", "LPT1", "con.txt", "CON", "prn.",  # Windows device names
    "\u00e9", "e\u0301",  # é composed (NFC) and decomposed (NFD): equal on macOS file systems, distinct keys
    "Key", "key", "KEY",
    "a\nb", "line\r\n", "tab\there", "nul\0inside", "\0",
    "a" * 255, "a" * 256, "\u00e9" * 128,  # 255 and 256 bytes; 128 characters that are 256 bytes in UTF-8
    "x" * 100_000, "x" * 99_999 + "y",  # 100,000 characters, differing only in the last
    tuple(range(10_000)), ("x", *range(9_999)),  # 10,000 elements
    ("name", 0), ("name", "0"), ("name", 0, 0), ("name", (0,)), (("name", 0),),
    b"bytes", "bytes", b"", (b"x", 0),
    1.5, -1.5, math.inf, -math.inf, 10**30, -(10**30),
    10**5000, -(10**5000), ("big", 10**5000),  # past Python's 4,300-digit limit for str(int)
    None, (), ((),), ("",), (None,), (None, None),
    frozenset({1, 2}), frozenset(),
    ("a", ("b", ("c", ("d", 1)))),
]  # fmt: skip

# Equal keys a dict treats as one: the Chest must too, spilled or reopened, found through any of them.
EQUAL_KEYS: list[list[Hashable]] = [
    [1, 1.0, True],
    [0, 0.0, -0.0, False],
    [("name", 1), ("name", 1.0), ("name", True)],
    [frozenset({1, 2}), frozenset({2, 1.0})],
    [(1, (2, 3)), (True, (2.0, 3))],
]


def keys_only_in(root: Path, everything: Path) -> list[Path]:
    """Files under ``everything`` that are not under ``root`` (nothing may be written outside the Chest)."""
    inside = os.path.realpath(root)
    return [p for p in everything.rglob("*") if os.path.commonpath([inside, os.path.realpath(p)]) != inside]


def round_trip(keys: list[Hashable], where: Path) -> None:
    """Store ``keys`` (one value in memory at a time), find them, flush, reopen, find, delete; check the files.

    A file per value (``pack_threshold=0``): the file names made from hostile keys are what is tested."""
    model: dict[Hashable, Any] = {}
    path = where / "chest"
    chest = Chest(path=path, available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=0)
    for i, key in enumerate(keys):
        chest[key] = model[key] = ("value", i)
    assert len(chest) == len(model) and len(chest.inmem) <= 1
    for key in keys:  # every key, through any equal key: loading one spills another
        assert chest[key] == model[key], key
    assert len(spill_files(chest.path)) >= len(model) - 1
    chest.close()  # flushes: every value and the manifest on disk
    assert len(spill_files(str(path))) == len(model)
    assert keys_only_in(path, where) == []

    again = Chest(path=path, available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=0)
    assert len(again) == len(model)
    for key in keys:
        assert key in again and again[key] == model[key], key
    stored = list(again)
    for n, key in enumerate(stored):
        del again[key]
        assert key not in again
        # its file went with it (or is kept, unowned, for the last flush until the next one commits)
        assert len(set(spill_files(again.path)) - again._store.retained) == len(stored) - n - 1
        with pytest.raises(KeyError):
            again[key]
    assert len(again) == 0
    again.close()  # its flush commits the empty state and removes the retained files
    metadata = (".spillkit-manifest", ".spillkit-key", ".spillkit-lock", ".spillkit-reserve")
    assert [name for name in os.listdir(path) if not name.startswith(metadata)] == []
    assert len(Chest(path=path, available_memory=UNIT)) == 0
    assert keys_only_in(path, where) == []


def spill_files(path: str) -> list[str]:
    return [name for name in os.listdir(path) if not name.startswith(".")]


def test_keys_of_real_dask_graphs_round_trip(tmp_path: Path) -> None:
    from dask.core import validate_key

    keys = dask_graph_keys()
    assert len(keys) > 20 and {type(k) for k in keys} <= {str, tuple}
    for key in keys:
        validate_key(key)
    round_trip(keys, tmp_path)


def test_every_dask_key_type_round_trips(tmp_path: Path) -> None:
    """dask.typing.Key: str, int, float and tuples of them, nested (bytes keys are in HOSTILE_NAMES)."""
    from dask.core import validate_key

    keys: list[Hashable] = ["x", 7, -7, 7.5, ("x", 0), ("x", 0, 1), ("x", "y", 2.5), (("x", 0), 1), ("x",), ()]
    keys += [("x-" + "0" * 32, 2**40, 3), ((((("deep", 0),),),),), ("x", (0, (1, (2, (3,)))))]
    for key in keys:
        validate_key(key)
    round_trip(keys, tmp_path)


def test_keys_that_make_bad_file_names_round_trip(tmp_path: Path) -> None:
    assert len(set(HOSTILE_NAMES)) == len(HOSTILE_NAMES)
    round_trip(HOSTILE_NAMES, tmp_path)


def test_equal_keys_are_one_key_as_in_a_dict(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "chest", available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=0)
    model: dict[Hashable, Any] = {}
    for group in EQUAL_KEYS:
        for n, key in enumerate(group):
            chest[key] = model[key] = (group[0], n)  # each assignment through an equal key overwrites
    assert len(chest) == len(model) == len(EQUAL_KEYS)
    assert len(spill_files(chest.path)) == len(EQUAL_KEYS) - 1  # one file per key, not per spelling
    chest.close()
    again = Chest(path=tmp_path / "chest", available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=0)
    for group in EQUAL_KEYS:
        for key in group:
            assert again[key] == model[key] == (group[0], len(group) - 1), key
    del again[True]  # deletes 1 and 1.0 too
    assert 1 not in again and 1.0 not in again
    del again[-0.0]
    assert False not in again
    assert len(again) == len(EQUAL_KEYS) - 2
    assert len(set(spill_files(again.path)) - again._store.retained) == len(EQUAL_KEYS) - 2
    again.drop()


class SpeltAlike:
    """Distinct keys (distinct hashes) spelt alike, so their file names collide; == raises but for itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return 1000 + self.n

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise RuntimeError("refuses to compare")

    def __repr__(self) -> str:
        return "SpeltAlike"

    def __reduce__(self) -> tuple[Any, ...]:
        return SpeltAlike, (self.n,)


@pytest.mark.parametrize("write_behind", [False, True], ids=["sync", "write-behind"])
@pytest.mark.parametrize("pack_threshold", [0, None], ids=["file-per-value", "packed"])
def test_keys_spelt_alike_whose_eq_raises_are_two_keys_as_in_a_dict(
    tmp_path: Path, pack_threshold: int | None, write_behind: bool
) -> None:
    # helper-117: a dict never compares keys of different hashes; choosing a file name compared them, so
    # the second key's spill "could not be serialized", and flush() and close() raised, losing its value.
    keys = [SpeltAlike(1), SpeltAlike(2)]
    chest = Chest(
        path=tmp_path / "c",
        available_memory=UNIT,
        sizeof=unit_sizeof,
        pack_threshold=pack_threshold,
        write_behind=write_behind,  # (a name reserved by a write in flight is compared too)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n, key in enumerate(keys):
            chest[key] = f"value {n}" * 20
        chest.update({"x": "X", "y": "Y"})  # pushes both out
        assert not set(keys) & set(chest.inmem)
        assert [chest[key] for key in keys] == ["value 0" * 20, "value 1" * 20]
        chest.close()
    again = Chest(path=tmp_path / "c", available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=pack_threshold)
    assert sorted(str(again[key]) for key in again) == sorted(["X", "Y", "value 0" * 20, "value 1" * 20])
    again.drop()


SCALAR_KEYS = st.one_of(
    st.text(max_size=8),
    st.text(st.characters(codec="utf-8"), min_size=100, max_size=300),  # past NAME_MAX in UTF-8
    st.sampled_from(["", ".", "..", "/", "a/b", "\\", "con", "\0", "\n", "\u00e9", "e\u0301", "A", "a"]),
    st.integers(),
    st.floats(allow_nan=False),  # NaN is never equal to itself: no dict finds it but by identity
    st.binary(max_size=8),
    st.none(),
    st.booleans(),
)
KEY_TREES = st.recursive(SCALAR_KEYS, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=8)


@settings(FUZZ, max_examples=25)
@given(keys=st.lists(KEY_TREES, min_size=1, max_size=10))
def test_any_key_tree_round_trips_like_a_dict(workdir: Path, keys: list[Hashable]) -> None:
    where = Path(tempfile.mkdtemp(dir=workdir))
    try:
        round_trip(keys, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("pack_threshold", [0, None], ids=["file-per-value", "packed"])
def test_keys_that_break_repr_are_stored_spilled_traced_and_named_in_errors(
    tmp_path: Path, pack_threshold: int | None
) -> None:
    """Keys repr() cannot print: each is stored, spilled and loaded, recorded in a trace that reads back, and
    an error about one names it in a short message while every other value stays."""
    broken = ReprRaises()
    keys: list[Hashable] = [10**5000, -(10**5000), ("big", 10**5000), broken, ("x" * 1_000_000, broken), "k"]
    recorder = TraceRecorder(tmp_path / "hostile.jsonl", {"workload": "hostile"})
    chest = Chest(path=tmp_path / "chest", available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=pack_threshold)
    chest.add_listener(recorder)
    for i, key in enumerate(keys):
        chest[key] = ("value", i)
    assert len(chest) == len(keys) and len(chest.inmem) == 1
    for i, key in enumerate(keys):
        assert chest[key] == ("value", i)
    recorder.close()
    trace = read_trace(tmp_path / "hostile.jsonl")
    assert trace.keys[:3] == keys[:3]  # ints of any size come back as themselves
    assert isinstance(trace.keys[3], SpelledKey) and "ReprRaises" in repr(trace.keys[3])  # others as their spelling

    for victim in (broken, ("big", 10**5000)):
        chest["k"] = "pushes the victim out"  # only one value fits in memory
        assert victim not in chest.inmem
        flip_last_byte(chest, victim)
        with pytest.raises(CorruptSpillFile) as info:
            chest[victim]
        message = str(info.value)
        assert len(message) < 1000 and ("ReprRaises" in message or "<int of 16610 bits>" in message), message
        assert victim in chest  # the key stays; deleting it is the user's call
        del chest[victim]
    for i, key in enumerate(keys):
        if key is not broken and key != ("big", 10**5000):
            assert chest[key] == (("value", i) if key != "k" else "pushes the victim out")
    chest.drop()


# ---- 5. the metrics exporter listens on loopback unless told otherwise -------------------------
# tests/test_metrics.py checks that serve(0) binds 127.0.0.1 and serves; here: the default is the
# signature's, an explicit address is honoured, and the demo's --serve-metrics binds loopback for a
# bare port and listens on nothing without the option (checked on the real process' sockets).


def test_serve_binds_loopback_by_default_and_elsewhere_only_when_told() -> None:
    import inspect

    from prometheus_client import CollectorRegistry

    from spillkit.metrics import serve

    assert inspect.signature(serve).parameters["addr"].default == "127.0.0.1"
    for addr in (None, "127.0.0.2"):  # 127.0.0.2: another address, still unreachable from outside
        try:
            server = serve(0, registry=CollectorRegistry()) if addr is None else serve(0, addr, CollectorRegistry())
        except OSError as error:  # pragma: no cover - a system without the 127/8 loopback range
            pytest.skip(f"cannot bind {addr}: {error}")
        try:
            assert server.server_address[0] == (addr or "127.0.0.1")
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("9464", ("127.0.0.1", 9464)), (":0", ("127.0.0.1", 0)), ("[::1]:0", ("::1", 0)),
     ("0.0.0.0:9464", ("0.0.0.0", 9464)), ("localhost:1", ("localhost", 1))],
)  # fmt: skip
def test_serve_metrics_address_defaults_to_loopback(text: str, expected: tuple[str, int]) -> None:
    from spillkit.cli_options import address as _address

    assert _address(text) == expected


@pytest.mark.parametrize("text", ["host", "host:", "127.0.0.1:-1", "127.0.0.1:65536", "127.0.0.1:port", ""])
def test_a_bad_serve_metrics_address_is_a_usage_error(text: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(["demo", "--serve-metrics", text])
    assert info.value.code == EXIT_USAGE
    assert "argument --serve-metrics: expected HOST:PORT" in err.getvalue()


def listening(pid: int) -> list[str]:
    """The IP addresses the process listens on (TCP)."""
    import psutil

    return [c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("serve", [True, False], ids=["serve-metrics-port-only", "no-serve-metrics"])
def test_the_demo_listens_on_loopback_only_and_only_when_asked(serve: bool) -> None:
    command = [sys.executable, "-m", "spillkit", "demo", "--seconds", "1.5", "--arrays", "8", "--array-size", "4 KiB",
               "--budget", "16 KiB", "--reads", "10", "--policy", "lru"]  # fmt: skip
    if serve:
        command += ["--serve-metrics", "0"]  # a port alone
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("spillkit demo:"), first
        if serve:
            line = process.stdout.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
            assert match, line
            assert listening(process.pid) == ["127.0.0.1"]  # the one socket, bound to loopback
        else:
            assert process.poll() is None  # still running its 1.5 seconds
            assert listening(process.pid) == []
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('["replan", 0.5, "k1"]', "list of key ids"),
        ('["replan", 0.5, [9999]]', "is not defined"),
        ('["replan", 0.5]', "needs 3 fields"),
        ('["replan", "soon", [0]]', ""),
    ],
)
def test_a_bad_replan_line_is_refused_with_its_line(base: list[str], tmp_path: Path, line: str, says: str) -> None:
    path = write(tmp_path / "t.trace", join([*base, line]), compress=False)
    error = read_or_error(path)
    assert isinstance(error, TraceError) and says in str(error)
    assert assert_names_the_line(str(error), path) == len(base) + 1


def test_a_good_replan_line_is_read_and_replayed(base: list[str], tmp_path: Path) -> None:
    path = write(tmp_path / "t.trace", join([*base[:-1], '["replan", 0.5, [1, 0]]', base[-1]]), compress=False)
    trace = read_or_error(path)
    assert isinstance(trace, Trace)
    (entries,) = trace.replans().values()
    assert [len(tasks) for _, tasks in entries] == [2]
    exercise(trace)  # every policy and mode: graph-aware ones reorder their plan there
