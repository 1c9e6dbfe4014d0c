"""Authentication of spill files and manifests, and the checks on persistent directories."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import keep_crc

from spillkit import Chest, CorruptSpillFile, PickleCodec
from spillkit.errors import SpillError
from spillkit.security import KEY_FILE_NAME, InsecurePathError, load_or_create_key, process_secret
from spillkit.storage import DiskStore

CANARY = "/tmp/spillkit-security-canary"


class Exploit:
    """A pickle that runs code when loaded: creates the canary directory."""

    def __reduce__(self) -> tuple[object, ...]:
        return (os.mkdir, (CANARY,))


@pytest.fixture(autouse=True)
def no_canary() -> object:
    shutil.rmtree(CANARY, ignore_errors=True)
    yield
    assert not os.path.exists(CANARY), "a forged pickle was loaded"


def test_a_file_written_without_the_secret_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    ours = DiskStore(str(tmp_path), PickleCodec(), secret=b"k" * 32)
    ours.write("victim", "real value")
    ours.write("other", [1, 2, 3])
    # An attacker who can write the directory but not read the key: a well-formed file
    # (right magic, name, lengths and CRC) signed with a key of their own.
    attacker = DiskStore(str(tmp_path / "x"), PickleCodec(), secret=b"a" * 32)
    os.mkdir(tmp_path / "x")
    attacker.write("victim", Exploit())
    os.replace(attacker.filename("victim"), ours.filename("victim"))
    ours._sizes["victim"] = os.path.getsize(ours.filename("victim"))  # as if the size matched
    with pytest.raises(CorruptSpillFile, match="authentication failed") as info:
        ours.read("victim")
    assert info.value.key == "victim"
    assert ours.read("other") == [1, 2, 3]


def test_an_older_file_of_the_same_key_put_back_is_refused(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path), PickleCodec(), secret=b"k" * 32)
    store.write("k", "old")
    old = Path(store.filename("k")).read_bytes()
    store.write("k", "new")
    assert len(old) == os.path.getsize(store.filename("k"))  # same size: only the tag tells them apart
    Path(store.filename("k")).write_bytes(old)
    with pytest.raises(CorruptSpillFile, match="older or other version"):
        store.read("k")


@pytest.mark.parametrize("packed", [False, True], ids=["file", "packed"])
def test_a_damaged_name_length_is_named_as_such_in_a_short_message(tmp_path: Path, packed: bool) -> None:
    # Before: one flipped bit in the name length quoted up to 64 KiB of the body as the name of the key
    # the file "belongs to" (a 118,643-character message).
    chest = Chest(path=tmp_path / "c", available_memory=0, pack_threshold=None if packed else 0)
    chest["a"], chest["b"] = b"a" * (100 if packed else 100_000), b"b" * 100
    segment, offset = chest._store.location("a")
    full = os.path.join(chest.path, segment or "a")
    with open(full, "r+b") as file:
        file.seek(offset + 7)  # the high byte of the 16-bit name length: 1 -> 32769
        high = file.read(1)[0]
        file.seek(offset + 7)
        file.write(bytes([high ^ 0x80]))
    with pytest.raises(CorruptSpillFile, match="the header names a key file of 32769 bytes") as caught:
        chest["a"]
    assert len(str(caught.value)) < 400
    assert chest["b"] == b"b" * 100
    chest.drop()


def test_the_signed_prefix_covers_the_pickle_stream_and_the_digest_the_array_buffers(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    store = DiskStore(str(tmp_path), PickleCodec(), secret=b"k" * 32)
    array = np.arange(100_000, dtype="i8")
    store.write("a", array)
    original = Path(store.filename("a")).read_bytes()
    data = bytearray(original)
    # Flip a byte in the pickle stream (after the 64-byte header and the codec's table): the
    # "attacker" keeps the CRC, the HMAC still refuses it.
    from spillkit.spillfile import _FIXED
    from spillkit.spillfile import crc32 as file_crc

    _, _, _, body_len, crc, signed_len = _FIXED.unpack_from(data, 0)
    body_start = 64  # 28 fixed bytes, 32 of HMAC, the 1-byte name "a", padding
    assert len(data) == body_start + body_len
    assert crc == file_crc(bytes(data[body_start : body_start + signed_len]))  # the CRC is the prefix's
    assert 0 < signed_len < 1000 < body_len  # the 800 kB buffer is outside the signed prefix: the digest's
    data[body_start + 4 + 16 + 2] ^= 0x01
    keep_crc(data, body_start + signed_len - 8, body_start, body_start + signed_len, crc)
    Path(store.filename("a")).write_bytes(bytes(data))
    with pytest.raises(CorruptSpillFile, match="authentication failed"):
        store.read("a")
    data = bytearray(original)  # and one byte of the array buffer: the digest's (the CRC does not cover it)
    data[-100] ^= 0x01
    Path(store.filename("a")).write_bytes(bytes(data))
    with pytest.raises(CorruptSpillFile, match="authentication failed"):
        store.read("a")
    Path(store.filename("a")).write_bytes(original)
    assert np.array_equal(store.read("a"), array)


@pytest.mark.parametrize("compression", [None, "lz4"])
def test_an_array_buffer_changed_with_its_crc_kept_is_refused(tmp_path: Path, compression: str | None) -> None:
    # Before (helper-84): array buffers were under the body's CRC only (format 2), which an attacker keeps
    # by changing 4 more bytes; the value then loaded changed, and changed categorical codes crashed the
    # process when indexed. The change below keeps the whole body's CRC, as such an attack did.
    np = pytest.importorskip("numpy")
    from spillkit.spillfile import _FIXED
    from spillkit.spillfile import crc32 as file_crc

    chest = Chest(path=tmp_path / "c", available_memory=1, compression=compression)
    # 800 kB that no compressor shrinks: stored raw (and not kept here: a stored object alive is what reads return)
    chest["a"], chest["b"] = np.random.default_rng(3).random(100_000), "b"
    chest.flush()
    assert chest._store.location("a") == (None, 0)  # its own file
    full = Path(chest._store.filename("a"))
    original = full.read_bytes()
    data = bytearray(original)
    start = len(data) - _FIXED.unpack_from(data, 0)[3]
    data[len(data) - 5000] ^= 0xFF  # a byte of the last floats
    keep_crc(data, len(data) - 4000, start, len(data), file_crc(original[start:]))
    full.write_bytes(bytes(data))
    with pytest.raises(CorruptSpillFile, match="authentication failed"):
        chest["a"]
    assert chest["b"] == "b"
    damaged = bytearray(original)
    damaged[start + 30] ^= 0x04  # plain damage in the pickle stream: the CRC says so
    full.write_bytes(bytes(damaged))
    with pytest.raises(CorruptSpillFile, match="checksum mismatch"):
        chest["a"]
    full.write_bytes(bytes(original[:-1]) + b"x")  # in the array data: the HMAC's digest refuses it
    with pytest.raises(CorruptSpillFile, match="damaged, or was not written by this Chest"):
        chest["a"]
    full.write_bytes(original)
    assert np.array_equal(chest["a"], np.random.default_rng(3).random(100_000))
    chest.drop()


def test_a_persistent_chest_keeps_its_key_in_a_0600_file_and_reopens_with_it(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=100, sizeof=lambda v: 60)
    chest.update({"a": 1, "b": 2, "c": 3})
    chest.close()
    key_file = path / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    again = Chest(path=path, available_memory=100, sizeof=lambda v: 60)
    assert dict(again) == {"a": 1, "b": 2, "c": 3}
    again.drop()


def test_files_from_another_directory_with_another_key_are_refused(tmp_path: Path) -> None:
    first = Chest(path=tmp_path / "one", available_memory=100, sizeof=lambda v: 60)
    first.update({"a": "one's a", "b": "one's b"})
    first.close()
    second = Chest(path=tmp_path / "two", available_memory=100, sizeof=lambda v: 60)
    second.update({"a": "two's a", "b": "two's b"})
    second.close()
    # Someone copies the second directory's manifest over the first's: signed, but not with its key.
    shutil.copy(tmp_path / "two" / ".spillkit-manifest", tmp_path / "one" / ".spillkit-manifest")
    with pytest.raises(SpillError, match="not signed by this directory's key"):
        Chest(path=tmp_path / "one")
    # Copying the key as well makes a consistent (if odd) directory: the files of "one" are refused.
    shutil.copy(tmp_path / "two" / KEY_FILE_NAME, tmp_path / "one" / KEY_FILE_NAME)
    reopened = Chest(path=tmp_path / "one", available_memory=100, sizeof=lambda v: 60)
    with pytest.raises(CorruptSpillFile, match="'a'"):
        reopened["a"]
    reopened.close()


def test_a_world_writable_directory_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "open"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(InsecurePathError, match="world-writable"):
        Chest(path=path)
    assert os.listdir(path) == []  # refused before anything was written there
    chest = Chest(path=path, allow_insecure_path=True, available_memory=100, sizeof=lambda v: 60)
    chest.update({"a": 1, "b": 2})
    assert dict(chest) == {"a": 1, "b": 2}
    chest.drop()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c"
    Chest(path=path).close()
    (path / KEY_FILE_NAME).chmod(0o644)
    with pytest.raises(InsecurePathError, match="mode 644"):
        Chest(path=path)
    (path / KEY_FILE_NAME).chmod(0o600)
    Chest(path=path).close()


def test_a_key_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.mkdir(mode=0o700)
    (tmp_path / "elsewhere").write_bytes(b"x" * 32)
    (path / KEY_FILE_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InsecurePathError, match="symbolic link"):
        Chest(path=path)


def test_a_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c"
    Chest(path=path).close()
    (path / KEY_FILE_NAME).write_bytes(b"short")
    with pytest.raises(SpillError, match="holds 5 bytes"):
        Chest(path=path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_directory_owned_by_another_user_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(InsecurePathError, match="owned by uid 65534"):
        Chest(path=path)
    chest = Chest(path=path, allow_insecure_path=True)
    chest["a"] = 1
    chest.drop()


def test_two_processes_creating_the_same_directory_agree_on_one_key(tmp_path: Path) -> None:
    script = (
        "import sys; from spillkit.security import load_or_create_key;"
        "sys.stdout.write(load_or_create_key(sys.argv[1]).hex())"
    )
    path = tmp_path / "shared"
    path.mkdir(mode=0o700)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True) for _ in range(6)
    ]
    keys = {proc.communicate(timeout=60)[0] for proc in procs}
    assert keys == {load_or_create_key(str(path)).hex()}
    assert sorted(os.listdir(path)) == [KEY_FILE_NAME]  # no temporary key file left


def test_temporary_chests_use_the_process_secret_and_write_no_key_file() -> None:
    chest = Chest(available_memory=100, sizeof=lambda v: 60)
    chest.update({"a": 1, "b": 2})
    assert KEY_FILE_NAME not in os.listdir(chest.path)
    assert chest._store.secret == process_secret()
    chest.drop()


def test_a_forged_pickle_in_a_temporary_chest_is_refused(tmp_path: Path) -> None:
    # a forged file of its own (a forged record inside a segment: tests/test_segments.py)
    chest = Chest(available_memory=100, sizeof=lambda v: 60, pack_threshold=0)
    chest.update({"a": "value a", "b": "value b", "c": "value c"})
    spilled = chest.engine.spilled_keys[0]
    target = chest._store.filename(spilled)
    forger = DiskStore(str(tmp_path), PickleCodec(), secret=os.urandom(32))
    forger.write(spilled, Exploit())
    shutil.copy(forger.filename(spilled), target)
    with pytest.raises(CorruptSpillFile):
        chest[spilled]
    assert not os.path.exists(CANARY)
    forger.read(spilled)  # the forger's own key passes its HMAC: the pickle loads, and runs its code
    assert os.path.exists(CANARY)  # a real exploit, which only the Chest's key check refused
    os.rmdir(CANARY)
    for key in set(chest) - {spilled}:
        assert chest[key] == f"value {key}"
    chest.drop()


def test_the_body_digest_takes_frames_of_two_gib_and_more_and_any_buffer_format() -> None:
    # Before (helper-86): cryptography refused (OverflowError) or panicked on 2 GiB or more in one call,
    # so such a value could not be stored, or was written and could not be read back; and it refused a
    # memoryview of floats, so a codec returning one had its in-place check fail on every eviction.
    np = pytest.importorskip("numpy")
    from spillkit.bodymac import body_digest

    secret = b"k" * 32
    big = np.zeros(2**31 + 4096, dtype=np.uint8)  # untouched zero pages: no memory actually taken
    whole = body_digest(secret, [big])
    assert whole == body_digest(secret, [big[: 2**30], big[2**30 :]]) == body_digest(secret, [big, b""])
    assert whole != body_digest(secret, [big[:-1]])
    floats = np.arange(1000.0)
    assert body_digest(secret, [memoryview(floats)]) == body_digest(secret, [floats.tobytes()])
    assert body_digest(secret, [np.ones((30, 40))]) == body_digest(secret, [np.ones(1200).tobytes()])


def test_records_of_format_2_are_refused_saying_why() -> None:
    # Format 2 left array buffers to the CRC: a record of it changed with its CRC kept cannot be told from
    # the original, so none is read (helper-87: read, they stayed so for good; a manifest put back restored them).
    np = pytest.importorskip("numpy")
    import hmac as hmac_module

    from spillkit.spillfile import _FIXED, _MAGIC, PAD, RecordError, open_record
    from spillkit.spillfile import crc32 as file_crc

    secret, codec, value = b"k" * 32, PickleCodec(), {"label": "old", "data": np.arange(50_000.0)}
    frames = [bytes(memoryview(f).cast("B")) for f in codec.encode(value)]
    body = b"".join(frames)
    signed = b"".join(frames[: codec.signed_frames(frames)])
    fixed = _FIXED.pack(_MAGIC, 2, 1, len(body), file_crc(body), len(signed))
    tag = hmac_module.digest(secret, fixed + b"a" + signed, "sha256")  # genuine, as format 2 signed it
    header = fixed + tag + b"a"
    record = bytearray(header + bytes(-len(header) % PAD) + body)
    with pytest.raises(RecordError, match=r"format 2 .* cannot be authenticated"):
        open_record(memoryview(record), "a", secret, tag)


def test_a_closed_chest_leaves_no_key_derived_from_its_secret(tmp_path: Path) -> None:
    # helper-86: the array-digest key derived from each directory's secret stayed cached for the life
    # of the process (64 of them), after their Chests were closed.
    import spillkit.bodymac as bodymac

    chest = Chest(path=tmp_path / "c", available_memory=1 << 20)
    chest["a"], chest["b"] = np.zeros(1 << 17), np.ones(1 << 17)  # 1 MiB each: "a" spilled, its buffer digested
    secret = chest._secret
    assert secret in bodymac._keys
    chest.close()
    assert secret not in bodymac._keys
    with Chest(path=tmp_path / "c", available_memory=1 << 20) as again:  # derived again when needed
        assert again["a"].sum() == 0 and again["b"].sum() == 1 << 17
        assert secret in bodymac._keys
    assert secret not in bodymac._keys
    temporary = Chest(available_memory=1 << 20)
    temporary["a"], temporary["b"] = np.zeros(1 << 17), np.ones(1 << 17)
    temporary.drop()
    assert process_secret() in bodymac._keys  # the process's own secret, shared by every temporary Chest, stays


def test_the_derived_keys_kept_are_bounded() -> None:
    import spillkit.bodymac as bodymac

    for i in range(bodymac._KEEP + 10):
        bodymac.body_digest(i.to_bytes(32, "big"), [bytes(1 << 17)])
    assert len(bodymac._keys) == bodymac._KEEP
    assert (bodymac._KEEP + 9).to_bytes(32, "big") in bodymac._keys and bytes(32) not in bodymac._keys
