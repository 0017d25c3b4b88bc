"""hsr_eval.tasks.sandbox: model-written programs run in a child process with a timeout, no
network, no writes outside their folder and no child processes, and none of it harms the caller."""

from __future__ import annotations

import socket

import pytest

from hsr_eval.tasks.sandbox import run_program


def test_a_clean_exit_passes_and_an_assertion_fails_with_its_traceback():
    assert run_program("assert 1 + 1 == 2\n").passed
    result = run_program("def f():\n    return 3\n\nassert f() == 4, 'wrong answer'\n")
    assert result.status == "failed"
    assert "AssertionError: wrong answer" in result.detail


def test_an_infinite_loop_times_out_and_leaves_no_process():
    result = run_program("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout"
    assert not result.passed


def test_endless_output_is_cut_without_filling_the_callers_memory():
    result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout=5)
    assert result.status in ("failed", "timeout")


def test_the_network_is_refused_even_to_a_listening_local_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        result = run_program(program, timeout=5)
        # a connection would sit in the backlog, accepted or not: none is there
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert result.status == "failed"
    assert "sandbox: socket" in result.detail


@pytest.mark.parametrize(
    "attack",
    [
        "open({path!r}, 'w').write('pwned')",
        "import os\nos.remove({victim!r})",
        "import os\nos.rename({victim!r}, {path!r})",
        "import shutil\nshutil.rmtree({folder!r})",
        "import pathlib\npathlib.Path({victim!r}).write_text('pwned')",
        "import os\nfd = os.open({path!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'pwned')",
    ],
)
def test_writes_outside_the_sandbox_are_refused_and_leave_the_files_alone(tmp_path, attack):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    path = tmp_path / "planted.txt"
    result = run_program(attack.format(path=str(path), victim=str(victim), folder=str(tmp_path)))
    assert result.status == "failed"
    assert "sandbox:" in result.detail
    assert victim.read_text() == "intact"
    assert not path.exists()


@pytest.mark.parametrize(
    "attack",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.fork()",
        "import ctypes\nctypes.CDLL(None)",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))",
        "import os, signal\nos.kill(os.getppid(), signal.SIGTERM)",
    ],
)
def test_processes_ctypes_and_limits_are_refused(attack):
    result = run_program(attack)
    assert result.status == "failed"
    assert "sandbox:" in result.detail


def test_the_program_may_use_its_own_folder_and_import_the_standard_library():
    program = (
        "import json, math, tempfile, os\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as handle:\n"
        "    handle.write('fine')\n"
        "os.remove('scratch.txt')\n"
        "assert math.isclose(json.loads('[0.5]')[0], 0.5)\n"
    )
    assert run_program(program).passed
