"""hsr_eval.files: staging folders of ended writers, umask permissions, the user cache folder and
generated README blocks."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from hsr_eval import files


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_alive_tells_a_running_process_from_an_ended_one():
    assert files.process_alive(os.getpid()) is True
    assert files.process_alive(_dead_pid()) is False


def test_only_the_staging_folders_of_ended_writers_are_removed(tmp_path):
    target = tmp_path / "out"
    dead = tmp_path / f".out.pid{_dead_pid()}.abc"
    live = tmp_path / f".out.pid{os.getpid()}.def"
    other = tmp_path / f".outer.pid{_dead_pid()}.ghi"  # another output's staging
    for folder in (dead, live, other):
        folder.mkdir()
    files.remove_stale_staging(target)
    assert not dead.exists() and live.is_dir() and other.is_dir()


def test_published_folders_and_subfolders_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        with files.published_dir(tmp_path / "out") as staging:
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "data.bin").write_bytes(b"x")
            script = staging / "run.sh"
            script.write_text("#!/bin/sh\n")
            script.chmod(0o700)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    out = tmp_path / "out"
    assert (mode(out), mode(out / "sub")) == (0o750, 0o750)
    assert (mode(out / "sub" / "data.bin"), mode(out / "run.sh")) == (0o640, 0o750)


def test_user_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HSR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.user_cache_dir() == tmp_path / "xdg" / "hsr-plugin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert files.user_cache_dir() == tmp_path / "home" / ".cache" / "hsr-plugin"
    monkeypatch.setenv("HSR_CACHE_DIR", str(tmp_path / "mine"))
    assert files.user_cache_dir() == tmp_path / "mine"


def test_replace_generated_block_rewrites_only_its_own_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Titel ✓\n<!-- a:begin -->\nold a\n<!-- a:end -->\nkept\n"
        "<!-- b:begin -->\nold b\n<!-- b:end -->\n"
    )
    files.replace_generated_block(readme, "a", "\n| new | ✓ |\n\n")
    assert readme.read_text() == (
        "# Titel ✓\n<!-- a:begin -->\n| new | ✓ |\n<!-- a:end -->\nkept\n"
        "<!-- b:begin -->\nold b\n<!-- b:end -->\n"
    )
    with pytest.raises(ValueError, match=r"has no <!-- c:begin --> \.\.\. <!-- c:end --> block"):
        files.replace_generated_block(readme, "c", "x")


def test_a_stale_staging_folder_that_cannot_be_removed_does_not_stop_a_run(tmp_path, monkeypatch):
    stale = tmp_path / f".out.pid{_dead_pid()}.abc"
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"x")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "unlink", refuse)
    files.remove_stale_staging(tmp_path / "out")  # best effort: no error
    assert (stale / "weights.bin").is_file()
