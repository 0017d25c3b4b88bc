"""Run one model-written Python program in a child process: a timeout, no network, no writes
outside its own temporary folder, no child processes.

The guard is the one HumanEval's own harness relies on (a separate process, limits, dangerous
calls disabled), made harder to undo: the child installs a Python audit hook (PEP 578) before the
program runs, and audit hooks cannot be removed from Python code. The hook refuses

- every socket (the network) and every process launch (subprocess, os.system, exec, fork, spawn,
  kill);
- every file write, removal, rename, link, permission or owner change whose path lies outside the
  sandbox folder (reading stays allowed: imports need it);
- ctypes (which could bypass the hook) and raising the resource limits set before it.

Limits: CPU seconds, address space and file size (so output loops end), and the wall-clock timeout
kills the child's whole process group. The program's stdout and stderr go to files in the sandbox,
so no output can fill the caller's memory. This guards against what a model writes by accident or
naively; it is not a container. Run untrusted code at scale inside one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExecutionResult", "run_program"]

DEFAULT_TIMEOUT = 10.0
MEMORY_BYTES = 2 << 30
FILE_BYTES = 16 << 20

# The child's first code: limits, then the audit hook, then the program (read before the hook).
_GUARD = r"""
import os, sys, resource
sandbox = os.path.realpath(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as handle:
    source = handle.read()
cpu = int(sys.argv[3])
memory = int(sys.argv[4])
file_size = int(sys.argv[5])
for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory),
                     (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_FORBIDDEN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
              "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.startfile", "pty.spawn",
              "resource.setrlimit", "resource.prlimit", "os.chroot", "webbrowser.open")
_PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2,
                "os.truncate": 1, "os.chmod": 1, "os.chown": 1, "os.mkdir": 1, "os.utime": 1,
                "os.setxattr": 1, "os.removexattr": 1, "shutil.rmtree": 1, "shutil.move": 2,
                "shutil.copyfile": 2, "shutil.copytree": 2, "shutil.chown": 1}
_realpath, _isabs, _join, _sep = os.path.realpath, os.path.isabs, os.path.join, os.sep

def _inside(path):
    if isinstance(path, int):
        return True  # an open descriptor: opened (and checked) before
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    path = _realpath(path if _isabs(str(path)) else _join(sandbox, str(path)))
    return path == sandbox or path.startswith(sandbox + _sep)

def _guard(event, args):
    if event.startswith(("socket.", "ctypes.")) or event.startswith(_FORBIDDEN):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writes and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox")
    elif event in _PATH_EVENTS:
        for path in args[: _PATH_EVENTS[event]]:
            if path is not None and not _inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the sandbox")

sys.addaudithook(_guard)
del resource
exec(compile(source, "solution.py", "exec"), {"__name__": "__hsr_solution__"})
"""


@dataclass(frozen=True)
class ExecutionResult:
    status: str  # "passed", "failed" or "timeout"
    detail: str = ""  # the end of stderr, or why it stopped

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _tail(path: Path, limit: int = 2000) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace").strip()


def run_program(program: str, timeout: float = DEFAULT_TIMEOUT) -> ExecutionResult:
    """Run `program` in a fresh sandbox folder; passed when it exits 0 within `timeout`."""
    with tempfile.TemporaryDirectory(prefix="hsr-sandbox-") as folder:
        sandbox = Path(folder)
        (sandbox / "solution.py").write_text(program, encoding="utf-8")
        env = {
            "PATH": os.defpath,
            "HOME": str(sandbox),
            "TMPDIR": str(sandbox),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
        }
        argv = [
            sys.executable,
            "-I",  # isolated: no user site, no PYTHON* variables, no cwd on sys.path
            "-B",  # no .pyc writes (they would land outside the sandbox)
            "-c",
            _GUARD,
            str(sandbox),
            str(sandbox / "solution.py"),
            str(int(timeout) + 1),
            str(MEMORY_BYTES),
            str(FILE_BYTES),
        ]
        stdout, stderr = sandbox / "stdout.txt", sandbox / "stderr.txt"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            process = subprocess.Popen(
                argv,
                cwd=sandbox,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed whole on timeout
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return ExecutionResult("timeout", f"no exit within {timeout:g} s")
            finally:
                _kill_group(process)
        if code == 0:
            return ExecutionResult("passed")
        return ExecutionResult("failed", _tail(stderr) or f"exit code {code}")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
