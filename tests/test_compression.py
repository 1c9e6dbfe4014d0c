"""Compression: per-frame lz4/zstd decisions, zero-copy raw frames, malformed bodies, and Chest(compression=)."""

from __future__ import annotations

import json
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import keep_crc
from test_codecs import BIG, VALUES, assert_same, join, reaches

from spillkit import Chest, CorruptSpillFile, FuncCodec, PickleCodec
from spillkit.compression import ALGORITHMS, CompressedCodec, _read_table, make_compression

ALGOS = sorted(ALGORITHMS)
KIND = {"raw": 0, "lz4": 1, "zstd": 2}
rng = np.random.default_rng(7)
RANDOM = rng.random(BIG)  # 1 MiB of float64 noise: no compressor gets it under 90%
ZEROS = np.zeros(BIG)
STRUCTURED = np.repeat(np.arange(BIG // 64, dtype=np.int64), 64)  # runs: compresses well


def body(codec: CompressedCodec, value: Any) -> bytearray:
    return join(codec.encode(value))


def kinds(data: bytearray) -> list[int]:
    return [kind for kind, _, _ in _read_table(memoryview(data))[0]]


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("name", list(VALUES))
def test_every_value_round_trips(algorithm: str, name: str) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    value = VALUES[name]
    assert_same(codec.decode(memoryview(body(codec, value))), value)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize(
    "value",
    [ZEROS, RANDOM, STRUCTURED, {"zeros": ZEROS, "random": RANDOM, "tail": STRUCTURED[::-1].copy()}, b"", 0, []],
    ids=["zeros", "random", "structured", "mixed", "empty-bytes", "tiny", "empty-list"],
)
def test_arrays_come_back_equal_and_writable(algorithm: str, value: Any) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    got = codec.decode(memoryview(body(codec, value)))
    assert_same(got, value)
    for array in got.values() if isinstance(got, dict) else [got]:
        if isinstance(array, np.ndarray):
            assert array.flags.writeable  # as without compression: callers may modify loaded arrays


@pytest.mark.parametrize("algorithm", ALGOS)
def test_compressible_frames_are_compressed_and_incompressible_ones_stored_raw(algorithm: str) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    zeros = body(codec, ZEROS)
    assert KIND[algorithm] in kinds(zeros)
    assert len(zeros) < ZEROS.nbytes // 50
    noise = body(codec, RANDOM)
    assert set(kinds(noise)) == {KIND["raw"]}
    plain = join(PickleCodec().encode(RANDOM))
    table_bytes = _read_table(memoryview(noise))[1]
    assert table_bytes <= 128
    assert len(noise) == len(plain) + table_bytes  # the frame table is all it adds


@pytest.mark.parametrize("algorithm", ALGOS)
def test_small_frames_stay_raw_and_min_size_is_configurable(algorithm: str) -> None:
    small = bytes(10_000)  # compressible, but under the default 64 KiB
    assert set(kinds(body(CompressedCodec(algorithm=algorithm), small))) == {0}
    eager = CompressedCodec(algorithm=algorithm, min_size=1000)
    data = body(eager, small)
    assert KIND[algorithm] in kinds(data)
    assert eager.decode(memoryview(data)) == small


def test_the_sample_decides_and_a_bad_whole_frame_is_still_stored_raw() -> None:
    # Zeros where the four sample pieces are taken, noise everywhere else: the sample
    # says compress, the whole frame then fails max_ratio, and the frame is stored raw.
    frame = bytearray(rng.bytes(4 << 20))
    piece, step = 64 * 1024 // 4, (len(frame) - 64 * 1024 // 4) // 3
    for i in range(4):
        frame[i * step : i * step + piece] = bytes(piece)
    codec = CompressedCodec(algorithm="lz4")
    data = body(codec, bytes(frame))
    assert set(kinds(data)) == {0}
    assert codec.decode(memoryview(data)) == frame
    # and the reverse: a sample of noise skips a frame even if the rest would compress
    noisy = bytearray(4 << 20)
    for i in range(4):
        noisy[i * step : i * step + piece] = rng.bytes(piece)
    assert set(kinds(body(codec, bytes(noisy)))) == {0}


@pytest.mark.parametrize("algorithm", ALGOS)
def test_raw_frames_are_not_copied_on_decode_even_beside_compressed_ones(algorithm: str) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    for value in (RANDOM, {"noise": RANDOM, "zeros": ZEROS}):
        data = body(codec, value)
        got = codec.decode(memoryview(data))
        noise = got if isinstance(got, np.ndarray) else got["noise"]
        assert reaches(noise, data)  # a view into the buffer the body was read into
        assert np.shares_memory(noise, np.frombuffer(data, dtype=np.uint8))
    assert len(set(kinds(data))) == 2  # the second value really mixed raw and compressed frames


@pytest.mark.parametrize("algorithm", ALGOS)
def test_raw_buffers_keep_the_inner_codecs_64_byte_alignment(algorithm: str) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    value = {"z": ZEROS, "a": rng.random(BIG + 3), "b": rng.random(BIG // 2 + 5)}
    data = body(codec, value)
    got = codec.decode(memoryview(data))
    base = np.frombuffer(data, dtype=np.uint8).ctypes.data
    for name in ("a", "b"):
        assert (got[name].ctypes.data - base) % 64 == 0
        np.testing.assert_array_equal(got[name], value[name])


@pytest.mark.parametrize("algorithm", ALGOS)
def test_a_single_frame_codec_without_decode_frames_round_trips(algorithm: str) -> None:
    codec = CompressedCodec(FuncCodec(json.dump, json.load), algorithm=algorithm)
    value = {"rows": [[i, i * 2, "x"] for i in range(20_000)]}
    data = body(codec, value)
    assert KIND[algorithm] in kinds(data)
    assert codec.decode(memoryview(data)) == value


def test_decode_follows_the_table_not_the_settings() -> None:
    data = body(CompressedCodec(algorithm="zstd", level=5), ZEROS)
    np.testing.assert_array_equal(CompressedCodec(algorithm="lz4").decode(memoryview(data)), ZEROS)


def test_levels_and_modes() -> None:
    for algorithm, level in [("lz4", -4), ("lz4", 0), ("lz4", 9), ("zstd", -3), ("zstd", 1), ("zstd", 9)]:
        codec = CompressedCodec(algorithm=algorithm, level=level)
        data = body(codec, STRUCTURED)
        assert KIND[algorithm] in kinds(data), (algorithm, level)
        np.testing.assert_array_equal(codec.decode(memoryview(data)), STRUCTURED)


# ---- malformed bodies ---------------------------------------------------------------
def _mixed_body() -> bytearray:
    return body(CompressedCodec(algorithm="lz4"), {"zeros": ZEROS, "noise": RANDOM})


def _entry_offset(index: int) -> int:
    return 12 + 17 * index  # the table head, then 17 bytes per frame


def _damage(how: str) -> tuple[bytearray, str]:
    data = _mixed_body()
    entries, start = _read_table(memoryview(data))
    packed = next(i for i, (kind, _, _) in enumerate(entries) if kind)
    raw = next(i for i, (kind, _, _) in enumerate(entries) if not kind)
    if how == "magic":
        data[:4] = b"XXXX"
        return data, "not a compressed spillkit body"
    if how == "version":
        data[4] = 9
        return data, "version 9 is not supported"
    if how == "kind":
        data[_entry_offset(packed)] = 7
        return data, f"frame {packed} has unknown kind 7"
    if how == "raw-lengths":
        data[_entry_offset(raw) + 1] ^= 1
        return data, f"raw frame {raw} has stored length"
    if how == "count":
        data[8:12] = (10**6).to_bytes(4, "little")
        return data, "frame table of 1000000 frames is longer than"
    if how == "expansion":
        data[_entry_offset(packed) + 9 : _entry_offset(packed) + 17] = (1 << 40).to_bytes(8, "little")
        return data, "more than the algorithm can expand"
    if how == "truncated":
        return data[:-100], "the frame table accounts for"
    if how == "payload":
        position = start + sum(stored for _, stored, _ in entries[:packed])
        data[position : position + 64] = bytes(range(200, 255)) + bytes(9)
        return data, f"frame {packed} \\(lz4, .*\\) does not decompress"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["magic", "version", "kind", "raw-lengths", "count", "expansion", "truncated", "payload"]
)
def test_a_malformed_body_raises_a_clear_value_error(how: str) -> None:
    data, message = _damage(how)
    with pytest.raises(ValueError, match=message):
        CompressedCodec(algorithm="lz4").decode(memoryview(data))


@pytest.mark.parametrize("algorithm", ALGOS)
def test_every_truncation_raises_value_error(algorithm: str) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    data = body(codec, {"zeros": ZEROS[:20_000], "s": "text" * 10_000})
    for cut in range(0, len(data), 7):
        with pytest.raises(ValueError):
            codec.decode(memoryview(data[:cut]))


def test_a_zstd_frame_of_the_wrong_length_is_rejected() -> None:
    codec = CompressedCodec(algorithm="zstd")
    data = body(codec, ZEROS)
    entries, _ = _read_table(memoryview(data))
    index = next(i for i, (kind, _, _) in enumerate(entries) if kind)
    offset = _entry_offset(index) + 9
    data[offset : offset + 8] = (entries[index][2] - 8).to_bytes(8, "little")
    with pytest.raises(ValueError, match=f"frame {index} \\(zstd.*frame header gives another length"):
        codec.decode(memoryview(data))


# ---- the missing extra, specs, pickling, threads ---------------------------------------
@pytest.mark.parametrize(("algorithm", "modules"), [("lz4", ["lz4", "lz4.block"]), ("zstd", ["zstandard"])])
def test_a_missing_extra_names_the_install_command(
    algorithm: str, modules: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "spillkit\[compress\]"') as info:
        CompressedCodec(algorithm=algorithm)
    assert modules[0] in str(info.value)
    with pytest.raises(ImportError, match=r"spillkit\[compress\]"):
        Chest(path=tmp_path / "c", compression=algorithm)
    assert not (tmp_path / "c").exists()  # failed before making anything


def test_make_compression_specs() -> None:
    assert make_compression("lz4").algorithm == "lz4"
    codec = make_compression(" ZSTD:3 ")
    assert (codec.algorithm, codec.level, codec.name) == ("zstd", 3, "zstd+pickle")
    assert make_compression("lz4:-2").level == -2
    inner = FuncCodec(json.dump, json.load)
    assert make_compression("lz4", inner).inner is inner
    ready = CompressedCodec(algorithm="zstd")
    assert make_compression(ready) is ready
    with pytest.raises(ValueError, match="unknown compression 'gzip'"):
        make_compression("gzip")
    with pytest.raises(ValueError, match="level after ':' must be an integer"):
        make_compression("zstd:high")
    with pytest.raises(TypeError, match="already wraps its own codec"):
        make_compression(ready, inner)
    with pytest.raises(TypeError, match="not bool"):
        make_compression(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_ratio"):
        CompressedCodec(max_ratio=0)


@pytest.mark.parametrize("spec", ["zstd:30", "zstd:23", "lz4:-3000000000"])
def test_a_level_the_library_refuses_is_an_error_at_once_not_at_every_spill(spec: str, tmp_path: Path) -> None:
    # Before (helper-61): Chest() accepted it; each spill then failed, reported as the value being
    # unserializable, and the values stayed in memory past the budget (4 MiB against 1 MiB).
    with pytest.raises(ValueError, match="refuses compression level"):
        make_compression(spec)
    with pytest.raises(ValueError, match="refuses compression level"):
        Chest(path=tmp_path / "c", compression=spec)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_the_codec_pickles_for_dask_distributed_workers() -> None:
    codec = pickle.loads(pickle.dumps(CompressedCodec(algorithm="zstd", level=4, min_size=1000)))
    assert (codec.algorithm, codec.level, codec.min_size) == ("zstd", 4, 1000)
    np.testing.assert_array_equal(codec.decode(memoryview(body(codec, STRUCTURED))), STRUCTURED)


@pytest.mark.parametrize("algorithm", ALGOS)
def test_one_codec_serves_many_threads(algorithm: str) -> None:
    codec = CompressedCodec(algorithm=algorithm)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(15):
                value = np.repeat(np.arange(BIG // 32, dtype=np.int64) * seed, 32)[i:]
                np.testing.assert_array_equal(codec.decode(memoryview(body(codec, value))), value)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_pickle_codec_decode_frames_checks_the_frames() -> None:
    codec = PickleCodec()
    value = {"a": ZEROS, "b": RANDOM[: BIG // 2 + 1]}
    frames = [memoryview(frame).cast("B") for frame in codec.encode(value)]
    assert_same(codec.decode_frames(frames), value)
    with pytest.raises(ValueError, match="expected at least 2"):
        codec.decode_frames(frames[:1])
    with pytest.raises(ValueError, match="buffer frame does not match"):
        codec.decode_frames(frames[:-1])
    with pytest.raises(ValueError, match="expected"):
        codec.decode_frames([*frames, memoryview(b"extra")])


# ---- through a Chest ----------------------------------------------------------------
def chest_values() -> dict[str, Any]:
    frame = pd.DataFrame({"i": np.arange(30_000) % 7, "f": rng.random(30_000), "s": ["abc"] * 30_000})
    return {
        "zeros": ZEROS,
        "random": RANDOM,
        "structured": STRUCTURED,
        "frame": frame,
        "bytes": bytes(300_000),
        "nested": {"list": [1, "two", (3.0, None)], "array": np.ones(BIG // 2)},
        "tiny": 1,
        "empty": b"",
    }


@pytest.mark.parametrize("algorithm", ALGOS)
def test_values_spilled_through_a_compressing_chest_read_back_equal(algorithm: str, tmp_path: Path) -> None:
    expected = chest_values()
    chest = Chest(path=tmp_path / "c", available_memory=BIG, compression=algorithm)
    plain = Chest(path=tmp_path / "p", available_memory=BIG)
    try:
        for target in (chest, plain):
            for key, value in expected.items():
                target[key] = value
        assert len(chest._store) >= len(expected) - 2  # spilled (evicted or written straight through)
        assert chest.engine.disk.codec.name == f"{algorithm}+pickle"
        assert chest.disk_bytes < plain.disk_bytes  # the zeros, bytes and runs shrank
        # the random array's file is its plain size plus at most the frame table
        random_size = chest._store.file_bytes("random")
        assert plain._store.file_bytes("random") < random_size <= plain._store.file_bytes("random") + 128
        for key, value in expected.items():
            assert_same(chest[key], value)
    finally:
        chest.drop()
        plain.drop()


@pytest.mark.parametrize("algorithm", ALGOS)
def test_a_persistent_compressed_chest_reopens(algorithm: str, tmp_path: Path) -> None:
    expected = chest_values()
    with Chest(path=tmp_path, available_memory=BIG, compression=algorithm) as chest:
        chest.update(expected)
        chest.flush()
    other = "zstd" if algorithm == "lz4" else "lz4"
    for setting in (algorithm, CompressedCodec(algorithm=other)):  # the table, not the setting, decides
        reopened = Chest(path=tmp_path, available_memory=BIG, compression=setting)
        assert sorted(reopened) == sorted(expected)
        for key, value in expected.items():
            assert_same(reopened[key], value)
        reopened.close()


def test_reopening_an_uncompressed_chest_with_compression_says_why_and_loses_nothing(tmp_path: Path) -> None:
    expected = {f"k{i}": np.full(BIG // 4, i) for i in range(6)}
    with Chest(path=tmp_path, available_memory=BIG // 2) as chest:
        chest.update(expected)
    wrong = Chest(path=tmp_path, available_memory=BIG // 2, compression="lz4")
    with pytest.raises(ValueError, match="was it written without compression"):
        wrong["k0"]
    assert "k0" in wrong and len(wrong) == len(expected)  # the failed load removed nothing
    wrong.engine.close()  # leave the files as they are: no flush with the wrong codec
    del wrong  # and let go of the directory (its lock goes with the object)
    right = Chest(path=tmp_path, available_memory=BIG // 2)
    for key, value in expected.items():
        assert_same(right[key], value)
    right.drop()


def test_reopening_a_compressed_chest_without_compression_says_why_at_once(tmp_path: Path) -> None:
    # The compressed body's magic read as a count of 1.5 billion frame lengths: the decode looped,
    # appending lengths until it ran off the end (memory growing with the value: 527 MiB for 80 MB).
    big = np.random.default_rng(0).random(2**20)  # 8 MiB, incompressible: one raw frame
    with Chest(path=tmp_path, available_memory=BIG // 2, compression="lz4") as chest:
        chest["big"] = big
        chest["small"] = np.zeros(BIG // 4)
    wrong = Chest(path=tmp_path, available_memory=BIG // 2)
    with pytest.raises(ValueError, match="compression= on"):
        wrong["big"]
    wrong.engine.close()
    del wrong
    right = Chest(path=tmp_path, available_memory=BIG // 2, compression="lz4")
    assert_same(right["big"], big)
    right.drop()


def test_chest_rejects_a_compressed_codec_together_with_codec(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="already wraps its own codec"):
        Chest(path=tmp_path, codec=PickleCodec(), compression=CompressedCodec())
    chest = Chest(path=tmp_path, dump=json.dump, load=json.load, compression="zstd", available_memory=100)
    try:
        chest["a"] = {"rows": list(range(50_000))}
        chest["b"] = [1]
        assert chest.engine.disk.codec.name == "zstd+json.dump"
        assert chest["a"] == {"rows": list(range(50_000))}
    finally:
        chest.drop()


def test_worker_storage_passes_compression_through(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    from spillkit.distributed import worker_storage

    chest = worker_storage(str(tmp_path), memory_limit="1 GiB", instrument_metrics=False, compression="lz4")
    try:
        assert chest.engine.disk.codec.name == "lz4+pickle"
    finally:
        chest.drop()


@pytest.mark.parametrize("algorithm", ALGOS)
def test_a_dask_computation_spills_through_compression(algorithm: str, tmp_path: Path) -> None:
    da = pytest.importorskip("dask.array", reason="the dask extra is not installed")
    from spillkit.dask import spilling

    x = da.from_array(np.repeat(np.arange(1 << 16, dtype=np.int64), 16), chunks=1 << 17)  # 8 chunks of 1 MiB
    y = (x + 1) * 2
    total = (y - y.mean()).std()  # every chunk of y is held from the mean to the subtraction: they spill
    expected = float(total.compute(scheduler="sync"))
    with spilling(available_memory="2 MiB", compression=algorithm, path=tmp_path) as chest:
        assert float(total.compute(scheduler="threads")) == expected
        assert chest.stats.loads > 0  # values really went to disk and back
        assert chest.engine.disk.codec.name == f"{algorithm}+pickle"
        assert chest.stats.spill_bytes < chest.stats.spills * (1 << 17) // 2  # and they were compressed
    with pytest.raises(TypeError, match="or a chest, not both"), spilling(Chest(), compression=algorithm):
        pass


@pytest.mark.parametrize("algorithm", ALGOS)
def test_every_byte_of_a_compressed_record_is_authenticated(algorithm: str, tmp_path: Path) -> None:
    # The HMAC takes the tables and the stream as they are and the rest through a keyed digest (spillkit.bodymac).
    # Before 9e97e9a the HMAC covered every byte (3x slower on incompressible arrays); 9e97e9a left the
    # array buffers to the CRC, which an attacker keeps (helper-84: changed categorical codes then crashed).
    from spillkit.spillfile import _FIXED
    from spillkit.storage import DiskStore

    codec = CompressedCodec(algorithm=algorithm)
    value = {"names": [f"name-{i}" for i in range(20_000)], "noise": RANDOM, "runs": STRUCTURED}
    frames = codec.encode(value)
    sizes = [memoryview(f).nbytes for f in frames]
    noise_at = sum(sizes[: sizes.index(RANDOM.nbytes)])  # the raw noise buffer's offset in the body
    assert KIND[algorithm] in kinds(join(frames))[1:2]  # the pickle stream (20,000 names) is compressed
    store = DiskStore(str(tmp_path), codec, secret=b"k" * 32)
    store.write("a", value)
    path = Path(store.filename("a"))
    original = path.read_bytes()
    _, _, _, body_len, _, signed_len = _FIXED.unpack_from(original, 0)
    start = len(original) - body_len
    stream_end = sum(sizes[: codec.signed_frames(frames)])  # the tables and the stream, then the padding
    assert stream_end <= signed_len < stream_end + 64 and signed_len <= noise_at

    for offset in (20, signed_len - 100, noise_at + 1000):  # the table, the (compressed) stream, the noise
        data = bytearray(original)
        data[start + offset] ^= 0x01
        if offset < signed_len:  # the "attacker" keeps the header's CRC (the table's); only the HMAC can tell
            keep_crc(data, start + signed_len - 8, start, start + signed_len, _FIXED.unpack_from(original, 0)[4])
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptSpillFile, match="authentication failed"):
            store.read("a")
    path.write_bytes(original)
    assert np.array_equal(store.read("a")["noise"], RANDOM)


def test_a_compressed_codec_inside_compression_stores_values_of_many_frames(tmp_path: Path) -> None:
    # Before (helper-84, from 9e97e9a): the outer codec handed the inner one's signed_frames its table as
    # compressed, which it parsed as a table: struct.error on a value of 2,000 arrays.
    value = [np.full(70_000, i % 7, np.uint8) for i in range(2000)]
    chest = Chest(path=tmp_path / "c", available_memory=1, codec=CompressedCodec(algorithm="lz4"), compression="lz4")
    chest["v"], chest["w"] = value, 1
    assert "v" not in chest.inmem
    got = chest["v"]
    assert len(got) == 2000 and all(np.array_equal(a, b) for a, b in zip(got, value, strict=True))
    chest.drop()
