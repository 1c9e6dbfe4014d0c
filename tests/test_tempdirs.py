"""Stale temporary directories: a killed process leaves its Chest directory behind and a sweep removes it,
but only when its owner is really gone; never a live process's, another user's, a symlink, or anything
that is not a spillkit temporary directory."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spillkit
from spillkit import Chest, SpillWarning, tempdirs
from spillkit.cli import EXIT_BAD_INPUT, EXIT_OK, main
from spillkit.dirlock import LOCK_NAME

REPO = Path(spillkit.__file__).resolve().parents[1]
ON_LINUX = os.path.isdir("/proc/self")

# A child that fills a temporary Chest (four values spilled, a file each), says where, then waits or dies.
CHILD = """
import json, os, signal, sys
from spillkit import Chest
chest = Chest(available_memory=250, sizeof=lambda v: 100, pack_threshold=0)
for i in range(6):
    chest[f"k{i}"] = bytes([i]) * 50
files = [name for name in os.listdir(chest.path) if name != ".spillkit-lock"]  # the spill files
print(json.dumps({"pid": os.getpid(), "path": chest.path, "files": len(files)}), flush=True)
if sys.argv[1] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()
"""


def spill_files(path: str | Path) -> list[str]:
    return [name for name in os.listdir(path) if name != LOCK_NAME]


def child_env(parent: Path) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "TMPDIR": str(parent)}


def start_child(parent: Path, mode: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode], env=child_env(parent), cwd=parent,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.communicate(timeout=60)[1]
    report: dict[str, Any] = json.loads(line)
    assert report["files"] == 4  # spilled values really are on disk
    assert os.path.dirname(report["path"]) == str(parent)
    return process, report


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    directory = tmp_path / "tmp"
    directory.mkdir()
    return directory


@pytest.fixture
def ended() -> Iterator[int]:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(60)
    yield process.pid


def fields() -> tuple[str, str, str]:
    """(pid, start, pid namespace) of this process, as its temporary directories are named."""
    _, pid, start, namespace, _ = tempdirs.owner_prefix().split("-")
    return pid, start, namespace


def fake_dir(parent: Path, pid: int | str, start: str, namespace: str, tag: str = "fake0001") -> Path:
    """A directory named as if ``pid`` had made it (a forged owner record), with a spill file inside."""
    path = parent / f"spillkit-{pid}-{start}-{namespace}-{tag}"
    path.mkdir(mode=0o700)
    (path / "k0").write_bytes(b"value")
    return path


def listing(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# ---- killed processes --------------------------------------------------------------------------------


def test_a_killed_process_leaves_its_directory_and_the_sweep_removes_it(parent: Path) -> None:
    process, report = start_child(parent, "die")
    assert process.wait(60) == -signal.SIGKILL
    path = Path(report["path"])
    assert path.name.startswith(f"spillkit-{report['pid']}-")
    assert len(spill_files(path)) == 4  # the finalizer never ran: the directory and its files stayed
    assert tempdirs.stale(str(parent)) == [str(path)]
    assert path.is_dir()  # listing the stale directories removes nothing
    assert tempdirs.sweep_stale(str(parent)) == [str(path)]
    assert listing(parent) == []
    assert tempdirs.sweep_stale(str(parent)) == []


def test_a_live_process_keeps_its_directory_until_it_is_killed(parent: Path) -> None:
    process, report = start_child(parent, "wait")
    try:
        assert tempdirs.sweep_stale(str(parent)) == []
        assert len(spill_files(report["path"])) == 4
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert tempdirs.sweep_stale(str(parent)) == [report["path"]]
    assert listing(parent) == []


@pytest.mark.skipif(not ON_LINUX, reason="zombies are told apart through /proc/<pid>/stat (Linux)")
def test_a_killed_process_that_is_not_reaped_yet_is_gone(parent: Path) -> None:
    process, report = start_child(parent, "wait")
    os.kill(process.pid, signal.SIGKILL)  # our own child: it stays a zombie until we wait for it
    try:
        deadline = time.monotonic() + 60
        while Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert tempdirs.sweep_stale(str(parent)) == [report["path"]]
    finally:
        process.communicate(timeout=60)
    assert listing(parent) == []


def test_the_first_temporary_chest_of_a_process_sweeps_its_temp_parent(parent: Path) -> None:
    killed, report = start_child(parent, "die")
    assert killed.wait(60) == -signal.SIGKILL
    assert os.path.isdir(report["path"])
    code = "from spillkit import Chest\nChest().close()\n"
    done = subprocess.run([sys.executable, "-c", code], env=child_env(parent), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert listing(parent) == []  # the killed child's directory was swept, the new one closed


def test_the_automatic_sweep_runs_once_per_temp_parent_and_never_refuses_a_chest(
    parent: Path, ended: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, start, namespace = fields()
    pinned = fake_dir(parent, ended, start, namespace, "pinned00")
    real_unlink = os.unlink

    def unlink_refusing_k0(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fsdecode(path)) == "k0":  # fault: a file the sweep cannot remove
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    monkeypatch.setattr(os, "unlink", unlink_refusing_k0)
    assert tempdirs.sweep_stale(str(parent)) == []  # what could not be removed is not reported
    first = Chest()
    assert pinned.is_dir() and (pinned / "k0").exists()  # not removable, and the Chest was made anyway
    monkeypatch.setattr(os, "unlink", real_unlink)
    later = fake_dir(parent, ended, start, namespace, "later000")
    second = Chest()  # this parent was swept already in this process: no second listdir
    assert later.is_dir()
    assert tempdirs.stale(str(parent)) == [str(later), str(pinned)]
    first.close()
    second.close()
    assert tempdirs.sweep_stale(str(parent)) == [str(later), str(pinned)]
    assert listing(parent) == []


# ---- owner records -------------------------------------------------------------------------------------


def test_a_temporary_chest_directory_names_its_owner(parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    with Chest() as chest:
        pid, start, namespace = fields()
        name = os.path.basename(chest.path)
        assert name.startswith(f"spillkit-{pid}-{start}-{namespace}-")
        assert int(pid) == os.getpid()
        assert os.stat(chest.path).st_mode & 0o777 == 0o700
        assert tempdirs.stale(str(parent)) == []
    if ON_LINUX:
        assert start.isdigit() and namespace.isdigit()


def _report_child_prefix(queue: Any) -> None:
    with Chest() as chest:
        queue.put((os.getpid(), os.path.basename(chest.path)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_names_its_own_directories_after_itself(parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    Chest().close()  # the parent's prefix is cached before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_report_child_prefix, args=(queue,))
    process.start()
    pid, name = queue.get(timeout=60)
    process.join(60)
    assert process.exitcode == 0
    assert pid == process.pid != os.getpid()
    assert name.startswith(f"spillkit-{pid}-")
    assert listing(parent) == []


@pytest.mark.skipif(not ON_LINUX, reason="start times are read from /proc/<pid>/stat (Linux)")
def test_a_live_pid_with_another_start_time_is_a_recycled_pid(parent: Path) -> None:
    pid, start, namespace = fields()
    recycled = fake_dir(parent, pid, str(int(start) + 1), namespace, "recycled")  # fault: forged start time
    earlier = fake_dir(parent, pid, str(int(start) - 1), namespace, "earlier0")
    unknown = fake_dir(parent, pid, "x", namespace, "unknown0")  # start not recorded: a live pid is the owner
    mine = fake_dir(parent, pid, start, namespace, "mine0000")
    assert tempdirs.sweep_stale(str(parent)) == sorted([str(recycled), str(earlier)])
    assert listing(parent) == sorted([unknown.name, mine.name])


def test_a_gone_owner_is_gone_whatever_start_time_was_recorded(parent: Path, ended: int) -> None:
    _, start, namespace = fields()
    made = [fake_dir(parent, ended, s, namespace, f"start{i:03d}") for i, s in enumerate([start, "x", "1"])]
    assert tempdirs.sweep_stale(str(parent)) == sorted(str(p) for p in made)
    assert listing(parent) == []


def test_other_pid_namespaces_are_never_judged(parent: Path, ended: int) -> None:
    _, start, namespace = fields()
    other = "1" if namespace != "1" else "2"
    kept = [fake_dir(parent, ended, start, other, "otherns0")]
    if namespace != "x":
        kept.append(fake_dir(parent, ended, start, "x", "unknowns"))
    assert tempdirs.sweep_stale(str(parent)) == []
    assert listing(parent) == sorted(p.name for p in kept)


# ---- what the sweep never touches ------------------------------------------------------------------------


def test_non_spillkit_entries_symlinks_and_files_are_never_touched(parent: Path, tmp_path: Path, ended: int) -> None:
    _, start, namespace = fields()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    owner = f"{ended}-{start}-{namespace}"
    names = ["spillkit-abc12345", "spillkit-state-abc", "spillkit-bench-dask-x1", f"spillkit-{ended}",
             f"spillkit-{ended}-{start}", f"spillkit-{owner}-", f"spillkit-0-{start}-{namespace}-a",
             f"spillkit-{owner}-UPPER", f"xspillkit-{owner}-abc", f"spillkit-{owner}-a-b", "other"]  # fmt: skip
    for name in names:
        (parent / name).mkdir()
        (parent / name / "k0").write_text("data")
    plain_file = parent / f"spillkit-{ended}-{start}-{namespace}-file0000"
    plain_file.write_text("a file, not a directory")
    link = parent / f"spillkit-{ended}-{start}-{namespace}-link0000"
    link.symlink_to(victim, target_is_directory=True)
    # A stale directory holding a symlink: the link goes, what it points to stays.
    stale = fake_dir(parent, ended, start, namespace, "withlink")
    (stale / "escape").symlink_to(victim, target_is_directory=True)
    before = listing(parent)

    assert tempdirs.sweep_stale(str(parent)) == [str(stale)]
    assert listing(parent) == sorted(set(before) - {stale.name})
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert plain_file.read_text() == "a file, not a directory"
    assert all((parent / name / "k0").read_text() == "data" for name in names)
    assert (victim / "precious").read_text() == "keep me"


def test_another_users_directory_is_never_touched(parent: Path, ended: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _, start, namespace = fields()
    theirs = fake_dir(parent, ended, start, namespace, "theirs00")
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)  # really another user's (nobody)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)  # fault: the sweep runs as another user
    assert tempdirs.sweep_stale(str(parent)) == []
    assert (theirs / "k0").read_bytes() == b"value"


# ---- the command line -------------------------------------------------------------------------------


def test_the_sweep_command_lists_then_removes(parent: Path, ended: int, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--help"])
    assert info.value.code == EXIT_OK
    assert "usage: spillkit sweep" in capsys.readouterr().out
    _, start, namespace = fields()
    stale = fake_dir(parent, ended, start, namespace)
    (parent / "other").mkdir()
    assert main(["sweep", "--dir", str(parent), "--dry-run"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(stale)] and "found 1" in err
    assert stale.is_dir()
    assert main(["sweep", "--dir", str(parent)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(stale)] and "removed 1" in err
    assert listing(parent) == ["other"]
    done = subprocess.run([sys.executable, "-m", "spillkit", "sweep", "--dir", str(parent / "missing")],
                          env=child_env(parent), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == EXIT_BAD_INPUT
    assert "missing" in done.stderr


# ---- create and remove_all, called directly ------------------------------------------------------------


def test_create_makes_a_private_directory_a_sweep_can_judge_and_keeps(parent: Path) -> None:
    # Catches: a name that does not record this process (a sweep could never remove it after a SIGKILL, or
    # would remove it while we live), a directory others can read, or two calls sharing a directory.
    first, second = tempdirs.create(str(parent)), tempdirs.create(str(parent))
    assert first != second
    for path in (first, second):
        assert os.path.dirname(path) == str(parent)
        name = os.path.basename(path)
        assert name.startswith(tempdirs.owner_prefix())
        assert tempdirs._NAME.fullmatch(name) is not None  # the form a sweep judges
        assert os.path.isdir(path) and os.stat(path).st_mode & 0o777 == 0o700
    assert tempdirs.stale(str(parent)) == []  # its owner (this process) lives


def test_create_defaults_to_the_temp_directory(parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Catches: a default parent other than tempfile's (TMPDIR would be ignored).
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    path = tempdirs.create()
    assert os.path.dirname(path) == str(parent)


def test_create_sweeps_its_parent_once_first(parent: Path, ended: int) -> None:
    # Catches: no sweep (a killed process's directories pile up), or a sweep (a listdir) at every create.
    _, start, namespace = fields()
    before = fake_dir(parent, ended, start, namespace, "before00")
    made = tempdirs.create(str(parent))
    assert not before.exists()
    after = fake_dir(parent, ended, start, namespace, "after000")
    tempdirs.create(str(parent))
    assert after.is_dir()  # swept once per parent and process
    assert str(after) in tempdirs.stale(str(parent)) and made not in tempdirs.stale(str(parent))


def test_create_is_never_refused_because_the_sweep_failed(parent: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Catches: an OSError of the sweep raised out of create (a Chest refused because of leftovers).
    real_listdir = os.listdir

    def listdir_refused(path: Any = ".") -> list[str]:  # fault: the parent cannot be listed
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "listdir", listdir_refused)
    path = tempdirs.create(str(parent))
    monkeypatch.setattr(os, "listdir", real_listdir)
    assert os.path.isdir(path)


def tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    for name in ("k0", "k1", "a/k2", "a/b/k3"):
        (root / name).write_bytes(b"value")
    return root


def test_remove_all_removes_a_whole_tree_and_a_missing_one_silently(tmp_path: Path) -> None:
    # Catches: a partial removal, or a warning (or an error) for a directory already gone.
    root = tree(tmp_path / "root")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tempdirs.remove_all(str(root))
        assert not root.exists()
        tempdirs.remove_all(str(root))  # gone already: what was wanted


def test_remove_all_warns_about_what_it_cannot_remove_and_removes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: an error raised (a close or drop would fail half-way), a silent leftover, or a removal that
    # stops at the first failure.
    root = tree(tmp_path / "root")
    real_unlink = os.unlink

    def unlink_refusing_k2(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fsdecode(path)) == "k2":  # fault: a file that cannot be removed
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_refusing_k2)
    with pytest.warns(SpillWarning, match=r"could not remove \d+ entries of the directory .*k2.*Permission"):
        tempdirs.remove_all(str(root))
    assert (root / "a" / "k2").exists()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["a", "a/k2"]


def test_remove_all_does_not_warn_about_an_entry_that_vanished_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: FileNotFoundError (another process removed the file first) reported as a failure.
    root = tree(tmp_path / "root")
    real_unlink = os.unlink

    def unlink_finding_k1_gone(path: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(path, *args, **kwargs)
        if os.path.basename(os.fsdecode(path)) == "k1":  # fault: removed by someone else just before us
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)

    monkeypatch.setattr(os, "unlink", unlink_finding_k1_gone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tempdirs.remove_all(str(root))
    assert not root.exists()
