"""Files that appear whole: atomic writers for files and folders, generated blocks, digests and
the user cache folder.

Readers never see a half-written output, and outputs get the permissions the user's umask asks for
(as `save_pretrained` does), not mkstemp's 0600. Only the standard library is imported here: the
plugin and both virtualenvs' scripts share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "OutputBusyError",
    "atomic_path",
    "file_sha256",
    "folder_digest",
    "published_dir",
    "replace_generated_block",
    "user_cache_dir",
    "write_json_atomic",
    "write_text_atomic",
]


def user_cache_dir() -> Path:
    """`$HSR_CACHE_DIR`, else `$XDG_CACHE_HOME/hsr-plugin`, else `~/.cache/hsr-plugin`."""
    explicit = os.environ.get("HSR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hsr-plugin"


# ----------------------------------------------------------------------------- atomic outputs
def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a hidden temporary sibling of `path`; on success it is renamed onto `path`.

    For writers that need a file name (matplotlib, PIL, safetensors). On error the temporary
    file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) through a temporary sibling and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class OutputBusyError(RuntimeError):
    """Another process is writing the same output folder."""


@contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `target`; a second writer fails at once instead of mixing."""
    import fcntl

    lock = target.parent / f".{target.name}.lock"
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            raise OutputBusyError(
                f"another process (pid {owner}) is writing {target}: wait for it, or choose "
                "another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(target: Path) -> None:
    """Staging folders of earlier writers that were killed (SIGKILL leaves them behind)."""
    for folder in target.parent.glob(f".{target.name}.pid*.*"):
        pid = folder.name[len(target.name) + 5 :].split(".", 1)[0]
        if folder.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def published_dir(target: str | Path) -> Iterator[Path]:
    """Yields a hidden staging folder next to `target`; on success it replaces `target`.

    On error the staging folder is removed, so readers never see a half-written folder. The
    published folder and its files get the umask's permissions (mkdtemp alone would give 0700).
    One writer at a time: a second one raises OutputBusyError. Staging folders left by killed
    writers (named with their pid) are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target):
        remove_stale_staging(target)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.pid{os.getpid()}.", dir=target.parent)
        )
        with _publish(staging, target):
            yield staging


@contextmanager
def _publish(staging: Path, target: Path) -> Iterator[None]:
    try:
        yield
        _apply_umask(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _apply_umask(root: Path) -> None:
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            file = os.path.join(folder, name)
            executable = os.stat(file).st_mode & 0o100
            os.chmod(file, (0o777 if executable else 0o666) & ~mask)


def replace_generated_block(path: str | Path, name: str, body: str) -> Path:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` in a Markdown file.

    Tables in READMEs are written by their scripts through this, never typed. The markers must
    already be in the file.
    """
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {begin} ... {end} block to replace")
    return write_text_atomic(path, pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", text))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of one file's bytes, read in blocks (weights and data files of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over every file's relative path and bytes, in sorted order."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
