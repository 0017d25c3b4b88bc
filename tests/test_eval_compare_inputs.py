"""`hsr-compare` under bad input, through its installed entry point in the serving venv.

Every bad input is refused with one `error:` line and exit code 2 before any server starts (no
`vllm serve` log is written anywhere, and the model folder's digest is unchanged); a failure
after the start names the model, its root cause and its log, keeps the models that finished, and
`--resume` skips them; SIGTERM and Ctrl-C leave no server behind. The model is a copy of
organism-text."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from hsr_eval.files import folder_digest
from tests.fake_guard import FakeGuard
from tests.helpers import serve_bin

REPO = Path(__file__).resolve().parents[1]
ORGANISM = REPO / "integration" / "organisms" / "organism-text"

pytestmark = pytest.mark.vllm


@pytest.fixture
def model(tmp_path) -> Path:
    folder = tmp_path / "organism"
    shutil.copytree(ORGANISM, folder)
    return folder


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSR_JUDGE")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)
    return env


def compare(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [str(serve_bin("hsr-compare")), *map(str, args)]
    return subprocess.run(
        cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout
    )


def refused(result: subprocess.CompletedProcess, *phrases: str, root: Path) -> str:
    """Exit 2 with one `error:` line holding `phrases`, and no server was started under `root`."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "[serve]" not in result.stdout
    assert not list(root.rglob("vllm_serve.log"))
    return lines[0]


@pytest.mark.parametrize(
    "where, phrase",
    [
        (lambda m: m, "is the input --models dense"),
        (lambda m: m / "eval", "lies inside the input --models dense"),
        (lambda m: m.parent, "contains the input --models dense"),
    ],
    ids=["the-model", "inside-it", "above-it"],
)
def test_an_out_that_is_inside_or_above_a_model_is_refused(model, tmp_path, where, phrase):
    before = folder_digest(model)
    result = compare("--out", where(model), "--models", f"dense={model}")
    refused(result, phrase, root=tmp_path)
    assert folder_digest(model) == before and not (model / "eval").exists()


def test_a_link_to_the_model_is_the_model(model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(model)
    before = folder_digest(model)
    refused(compare("--out", link, "--models", f"dense={model}"), "is the input", root=tmp_path)
    refused(
        compare("--out", link / "eval", "--models", f"dense={model}"), "lies inside", root=tmp_path
    )
    assert folder_digest(model) == before


def test_an_out_holding_other_files_is_refused_even_with_overwrite(model, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = compare("--out", out, "--models", f"dense={model}", *extra)
        refused(result, "holds files hsr-compare did not write (notes.txt)", root=tmp_path)
    assert (out / "notes.txt").read_text() == "mine\n" and len(list(out.iterdir())) == 1


def test_an_earlier_comparison_needs_resume_or_overwrite(model, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "hsr_compare_run.json").write_text(json.dumps({"models": ["dense"]}))
    (out / "comparison.md").write_text("earlier\n")
    result = compare("--out", out, "--models", f"dense={model}")
    refused(result, "holds an earlier comparison", "--resume", "--overwrite", root=tmp_path)
    assert (out / "comparison.md").read_text() == "earlier\n"


@pytest.mark.parametrize(
    "extra, phrases",
    [
        (["--metadata", "{data_dir: x}"], ["--metadata is not JSON"]),
        (["--metadata", "[1, 2]"], ["--metadata must be a JSON object, got list"]),
        (["--tasks", "hsr_safety,hsr_nonesuch"], ["unknown task(s) hsr_nonesuch"]),
        (
            ["--metadata", '{"data_dir": "/nonexistent/held-out"}'],
            ["task hsr_harmful cannot read its data", "/nonexistent/held-out"],
        ),
        (["--backend", "hf-multimodal"], ["--backend hf-multimodal runs picture tasks"]),
        (["-tp", "0"], ["--tensor-parallel-size must be at least 1, not 0"]),
        (
            ["--backend", "hf", "--data-parallel-size", "2"],
            ["--data-parallel-size 2 needs --backend vllm-serve or vllm, not hf"],
        ),
        # the serving venv has no ray, which lm-eval's offline engine needs for replicas
        (
            ["--backend", "vllm", "-dp", "2"],
            ["--data-parallel-size 2 with --backend vllm needs ray"],
        ),
    ],
    ids=[
        "metadata-not-json",
        "metadata-not-object",
        "unknown-task",
        "no-data",
        "backend",
        "tensor-parallel-0",
        "parallel-without-vllm",
        "data-parallel-without-ray",
    ],
)
def test_task_inputs_are_checked_before_any_server(model, tmp_path, extra, phrases):
    result = compare("--out", tmp_path / "out", "--models", f"dense={model}", *extra)
    refused(result, *phrases, root=tmp_path)
    assert not (tmp_path / "out").exists()


def test_the_data_a_task_reads_must_have_its_rows(model, tmp_path):
    data = tmp_path / "held-out"
    shutil.copytree(REPO / "integration" / "hsr_eval" / "data" / "text", data)
    (data / "heldout_harmful.jsonl").write_text("")
    metadata = json.dumps({"data_dir": str(data)})
    result = compare(
        "--out", tmp_path / "out", "--models", f"dense={model}", "--metadata", metadata
    )
    refused(result, "task hsr_harmful cannot read its data", root=tmp_path)


def test_the_judge_settings_and_server_are_checked_before_any_server(model, tmp_path):
    args = ("--out", tmp_path / "out", "--models", f"dense={model}")
    refused(compare(*args, env=_env(HSR_JUDGE="oracle")), "judge settings", root=tmp_path)
    closed = _env(
        HSR_JUDGE="llamaguard",
        HSR_JUDGE_URL="http://127.0.0.1:9/v1",
        HSR_JUDGE_MODEL="guard",
        HSR_JUDGE_TRIES="1",
        HSR_JUDGE_TIMEOUT="5",
    )
    refused(compare(*args, env=closed), "judge model 'guard' at http://127.0.0.1:9/v1 did not "
            "answer", root=tmp_path)  # fmt: skip
    with FakeGuard("llamaguard") as guard:
        wrong = _env(HSR_JUDGE="llamaguard", HSR_JUDGE_URL=guard.url, HSR_JUDGE_MODEL="guard-x")
        refused(compare(*args, env=wrong), "the server serves", "not this one", root=tmp_path)
        assert guard.requests == []  # no judging request was spent on the check


def _no_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").unlink()
    (model / "tokenizer_config.json").unlink()


def _truncated(model: Path) -> None:
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])


def _bad_header(model: Path) -> None:
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")


def _bad_config(model: Path) -> None:
    (model / "config.json").write_text("{not json")


def _missing_shard(model: Path) -> None:
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "damage, phrase",
    [
        (_no_tokenizer, "has no tokenizer or processor files"),
        (_truncated, "(truncated copy?)"),
        (_bad_header, "its header claims"),
        (_bad_config, "config.json is not JSON"),
        (_missing_shard, "names missing shard(s) model-00002-of-00002.safetensors"),
    ],
    ids=["no-tokenizer", "truncated", "bad-header", "config", "missing-shard"],
)
def test_a_broken_model_folder_is_refused_before_any_server(model, tmp_path, damage, phrase):
    damage(model)
    result = compare("--out", tmp_path / "out", "--models", f"dense={model}")
    refused(result, f"--models dense={model}", phrase, root=tmp_path)


def test_labels_name_folders_so_they_are_checked(model, tmp_path):
    result = compare("--out", tmp_path / "out", "--models", f"../up={model}")
    refused(result, "--models label '../up'", root=tmp_path)


def _servers_of(path: Path) -> list[int]:
    """Processes whose command line names `path` (a vllm serve of that model)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(path) in cmdline and "serve" in cmdline:
                found.append(int(proc.name))
    return found


def test_a_model_that_fails_to_load_names_its_cause_and_resume_keeps_the_finished(model, tmp_path):
    """The second model's weights do not fit its config: vLLM fails at load. hsr-compare names
    the model, vLLM's root cause and the log, exits 1, and keeps the first model's results;
    --resume evaluates only what did not finish."""
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[name] = tensors[name][:-8].contiguous()  # fewer rows than the config's vocab_size
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    args = ["--out", out, "--tasks", "hsr_harmful", "--limit", "2"]
    args += ["--models", f"dense={model}", f"broken={broken}"]
    before = folder_digest(model), folder_digest(broken)

    first = compare(*args, timeout=600)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "error: model broken failed: vllm serve exited" in first.stderr
    assert "full log: " + str(out / "broken.partial" / "vllm_serve.log") in first.stderr
    cause = first.stderr.split("before it was healthy:", 1)[1].split("full log:", 1)[0]
    assert "Error" in cause and len(cause.strip().splitlines()) <= 6, first.stderr
    assert (out / "dense" / "result.json").is_file() and not (out / "broken").exists()
    assert not (out / "comparison.json").exists()  # no half-written comparison

    again = compare(*args, "--resume", timeout=600)
    assert again.returncode == 1
    assert "dense: finished earlier; kept" in again.stdout
    served = [line for line in again.stdout.splitlines() if line.startswith("[serve] ")]
    assert served and not [line for line in served if f"{model} " in line + " "]
    assert (folder_digest(model), folder_digest(broken)) == before
    assert not _servers_of(model) and not _servers_of(broken)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_an_interrupt_stops_the_server_and_writes_no_comparison(model, tmp_path, signum):
    out = tmp_path / "out"
    cmd = [str(serve_bin("hsr-compare")), "--out", str(out), "--models", f"dense={model}"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not _servers_of(model) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert _servers_of(model), "vllm serve never started"
    time.sleep(2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], stderr[-2000:]
    assert "servers are stopped" in stderr
    time.sleep(1)
    assert not _servers_of(model)
    assert not (out / "comparison.json").exists() and not (out / "dense").exists()
