"""registry.writer: nothing of the user's replaced without consent, locks, atomic writes, disk faults."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry import writer
from registry.errors import OutputError


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def fill_with(name: str, text: str):
    def fill(folder: Path) -> None:
        (folder / name).write_text(text)
    return fill


def test_a_new_folder_is_written_whole_and_nothing_else_is_left(tmp_path):
    target = writer.write_folder(tmp_path / "a" / "b", fill_with("x.txt", "1"))
    assert (target / "x.txt").read_text() == "1"
    assert listing(tmp_path) == ["a", "a/b", "a/b/x.txt"]
    assert writer.held_locks() == []


def test_an_existing_folder_needs_overwrite_and_is_then_replaced_whole(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "precious.txt").write_text("x")
    with pytest.raises(OutputError, match="already exists; choose a new path or pass --overwrite"):
        writer.write_folder(target, fill_with("new.txt", "2"))
    assert listing(tmp_path) == ["d", "d/precious.txt"]
    writer.write_folder(target, fill_with("new.txt", "2"), overwrite=True)
    assert listing(tmp_path) == ["d", "d/new.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_is_never_replaced_by_a_folder(tmp_path, overwrite):
    target = tmp_path / "out_isfile"
    target.write_text("mine")
    with pytest.raises(OutputError, match="not a folder.*not even with --overwrite"):
        writer.write_folder(target, fill_with("x", "y"), overwrite=overwrite)
    assert target.read_text() == "mine" and listing(tmp_path) == ["out_isfile"]


def test_a_folder_is_never_replaced_by_a_file(tmp_path):
    (tmp_path / "report.json").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        writer.write_file(tmp_path / "report.json", "{}", overwrite=True)


def test_a_failing_fill_leaves_the_previous_folder_and_no_staging(tmp_path):
    target = tmp_path / "d"
    writer.write_folder(target, fill_with("old.txt", "old"))

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("the editor failed")

    with pytest.raises(RuntimeError):
        writer.write_folder(target, broken, overwrite=True)
    assert listing(tmp_path) == ["d", "d/old.txt"]


def test_a_full_disk_is_one_line_naming_the_path(tmp_path):
    target = tmp_path / "d"

    def full(folder: Path) -> None:
        (folder / "part").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as info:
        writer.write_folder(target, full)
    message = str(info.value)
    assert "\n" not in message and str(target) in message and "no space left" in message
    assert listing(tmp_path) == []


def test_a_real_enospc_from_dev_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """/dev/full answers every write with ENOSPC: the kernel's error, through the real write path."""
    real_open = open

    def staging_on_dev_full(path, mode="r", *args, **kwargs):
        if "x" in mode and ".tmp-" in str(path):
            return real_open("/dev/full", "wb")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(writer, "open", staging_on_dev_full, raising=False)
    (tmp_path / "report.json").write_text("old")
    with pytest.raises(OutputError) as info:
        writer.write_file(tmp_path / "report.json", "x" * 10000, overwrite=True)
    assert "no space left" in str(info.value) and str(tmp_path / "report.json") in str(info.value)
    assert (tmp_path / "report.json").read_text() == "old" and listing(tmp_path) == ["report.json"]


def test_the_parent_is_checked_for_real_before_any_work(tmp_path):
    with pytest.raises(OutputError, match="cannot write in /sys"):
        writer.check_output("/sys/x", overwrite=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        writer.check_output(tmp_path / "f" / "x", overwrite=False)
    assert writer.check_output(tmp_path / "new" / "deeper", overwrite=False) == tmp_path / "new" / "deeper"
    assert listing(tmp_path) == ["f"]  # the check creates nothing


def test_a_lock_held_by_another_process_refuses_at_once(tmp_path):
    target = tmp_path / "out"
    code = ("import sys, time; from registry import writer; writer.reserve(sys.argv[1], overwrite=False); "
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="being written by another detox process"):
            writer.reserve(target, overwrite=False)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    writer.reserve(target, overwrite=False)  # the dead holder's lock is gone with it
    writer.release_all()
    assert not (tmp_path / ".out.lock").exists()


def test_reservations_are_reentrant_and_empty_parents_go_again(tmp_path):
    target = tmp_path / "new" / "out"
    writer.reserve(target, overwrite=False)
    writer.reserve(target, overwrite=False)
    assert writer.held_locks() == [str(target)]
    writer.release_all()
    assert writer.held_locks() == [] and listing(tmp_path) == []


def test_ensure_folder_names_the_variable_to_fix(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is not a folder; set DETOX_CACHE to a writable folder"):
        writer.ensure_folder(tmp_path / "file", what="the model cache", env="DETOX_CACHE")
    with pytest.raises(OutputError, match="not writable.*set DETOX_CACHE"):
        writer.ensure_folder("/sys/x", what="the model cache", env="DETOX_CACHE")
    assert writer.ensure_folder(tmp_path / "cache", what="c").is_dir()


def test_describe_os_error_names_each_cause():
    assert "no space" in writer.describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert "read-only" in writer.describe_os_error(OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert "permission denied" in writer.describe_os_error(OSError(errno.EACCES, "x"))
