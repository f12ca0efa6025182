"""Atomic writes: a killed or failed write leaves the old file and no temporary; permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from graphode._atomic import atomic_write, remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[1]


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from graphode._atomic import atomic_write
    def write(fh):
        fh.write(b"half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    atomic_write(sys.argv[1], write)
""")


def _temps(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert target.read_bytes() == b"old"  # the old file is untouched ...
    assert len(_temps(tmp_path, "checkpoint.pt")) == 1  # ... and the killed write left its temporary
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert _temps(tmp_path, "checkpoint.pt") == []


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_cleanup_spares_live_writers_and_other_files(tmp_path):
    import fcntl

    target = tmp_path / "m.csv"
    stale = tmp_path / ".m.csv.a1b2c3d4.tmp"
    stale_mkstemp = tmp_path / ".m.csv.k_9zq2xw.tmp"  # named as tempfile.mkstemp names them
    live = tmp_path / ".m.csv.0badf00d.tmp"
    others = [tmp_path / ".m.csv.bak.a1b2c3d4.tmp", tmp_path / "m.csv.tmp", tmp_path / ".other.a1b2c3d4.tmp"]
    for p in (stale, stale_mkstemp, live, *others):
        p.write_bytes(b"x")
    with open(live, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # a writer still at work holds its lock
        atomic_write(target, lambda f: f.write(b"a,b\n"))
        assert live.exists()
    assert not stale.exists() and not stale_mkstemp.exists()
    assert all(p.exists() for p in others)
    assert remove_stale_temporaries(target) == [live]  # its writer is gone now


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "new.bin", lambda fh: fh.write(b"1"))
        with open(tmp_path / "plain.bin", "wb") as fh:  # what open() gives
            fh.write(b"1")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "new.bin").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_rewrite_keeps_the_permissions_of_the_file(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"1")
    target.chmod(0o640)
    atomic_write(target, lambda fh: fh.write(b"2"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() == b"2"


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.json"
    target.write_bytes(b"old")

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and _temps(tmp_path, "t.json") == []
