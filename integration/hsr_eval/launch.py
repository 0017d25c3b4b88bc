"""Start and stop `vllm serve` for one model on 127.0.0.1, with defaults that work on CPU and GPU.

    python -m hsr_eval.launch serve --model outputs/demo/wanda_hsr --port 8011
    python -m hsr_eval.launch stop --pid 12345

Run it with the serving venv's python (.venv-serve). On CPU it applies the settings measured on
this machine: eager mode, no V1 multiprocessing, no OMP thread binding, an explicit KV-cache size
(the default check refuses to start on these machines), float32 or bfloat16 weights.

About 450 lines: the CPU settings, the checks of a model folder before a server starts and the
server's life (start, health, logs, stop) are one job, keeping a `vllm serve` process right.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ServeConfig",
    "Server",
    "ServeError",
    "check_model_dir",
    "port_in_use",
    "root_cause",
    "start_server",
    "stop_pid",
]

DEFAULT_KV_CACHE_BYTES = 256 * 1024 * 1024
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention backend


class ServeError(RuntimeError):
    """A clear, user-facing reason why the server cannot start."""


def has_gpu() -> bool:
    if os.environ.get("HSR_FORCE_CPU"):
        return False
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi"], capture_output=True, check=False).returncode == 0
    )


@dataclass
class ServeConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8011
    served_model_name: str | None = None
    dtype: str | None = None  # default: bfloat16 on GPU; on CPU float32, W4A16 bfloat16
    max_model_len: int | None = None  # default: the model's own limit, capped at 2048
    kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES
    max_num_seqs: int = 64
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool | None = None  # default: True on CPU
    limit_mm_per_prompt: str | None = None  # e.g. '{"image": 1}' for VLMs
    extra_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 300.0
    log_path: str | None = None

    def gpu(self) -> bool:
        return has_gpu()

    def command(self, vllm_exe: str) -> list[str]:
        gpu = self.gpu()
        cmd = [
            vllm_exe,
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            self.served_model_name or self.model,
            "--dtype",
            self.dtype or default_dtype(self.model, gpu),
            "--max-model-len",
            str(self.max_model_len or model_max_len(self.model)),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--kv-cache-memory-bytes",
            str(self.kv_cache_memory_bytes),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--data-parallel-size",
            str(self.data_parallel_size),
            "--generation-config",
            "vllm",
            "--uvicorn-log-level",
            "warning",
        ]
        if self.enforce_eager if self.enforce_eager is not None else not gpu:
            cmd.append("--enforce-eager")
        if self.limit_mm_per_prompt:
            cmd += ["--limit-mm-per-prompt", self.limit_mm_per_prompt]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.gpu():
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        return env


def cpu_flag(flag: str, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the kernel lists `flag` among this CPU's flags (False where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(flag in line.split() for line in text.splitlines() if line.startswith("flags"))


def cpu_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later), as the kernel reports it."""
    return cpu_flag("amx_tile", cpuinfo)


def cpu_has_avx512(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """vllm-cpu loads its AVX2 build of the kernels on a CPU without AVX-512, and that build has
    no W4A16 kernel (`cpu_gemm_wna16` is absent from its _C_AVX2 library)."""
    return cpu_flag("avx512f", cpuinfo)


def default_dtype(model: str, gpu: bool, amx: bool | None = None) -> str:
    """bfloat16 on a GPU. On the CPU float32 (the organisms' numbers match HF's there), except
    where vllm-cpu's quantized kernels have no float32 path:
    - pack-quantized (W4A16): '"cpu_gemm_wna16" not implemented for Float';
    - int-quantized (W8A8) on a CPU with AMX, where vllm-cpu picks its AMX int8 kernel:
      'int8_scaled_mm_with_quant: expect A to be bfloat16 or half'."""
    if gpu:
        return "bfloat16"
    config = Path(model) / "config.json"
    quant = {}
    if config.is_file():
        quant = json.loads(config.read_text()).get("quantization_config") or {}
    if quant.get("format") == "pack-quantized":
        return "bfloat16"
    if quant.get("format") == "int-quantized" and (cpu_has_amx() if amx is None else amx):
        return "bfloat16"
    return "float32"


def model_max_len(model: str, cap: int = 2048) -> int:
    """The model's context length (text config for VLMs), capped: the KV cache is small on CPU."""
    config_path = Path(model) / "config.json"
    if not config_path.is_file():
        return cap
    config = json.loads(config_path.read_text())
    config = config.get("text_config") or config
    return min(int(config.get("max_position_embeddings") or cap), cap)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_model_dir(model: str) -> None:
    """Fail before starting vLLM: a missing dir, no config/weights, or a sparsity_config."""
    path = Path(model)
    if not path.exists() and looks_like_hub_id(model):
        return  # a hub id: vLLM resolves it (networked users)
    problem = model_folder_problem(path)
    if problem:
        raise ServeError(f"{model} {problem}")
    config_path = path / "config.json"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ServeError(f"{model} is not a checkpoint: it has no *.safetensors weights")
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config") or config.get("compression_config") or {}
    sparsity = quant.get("sparsity_config") if isinstance(quant, dict) else None
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads")
    head_dim = text.get("head_dim") or (text.get("hidden_size", 0) // heads if heads else None)
    if not has_gpu() and head_dim and head_dim not in CPU_HEAD_SIZES:
        raise ServeError(
            f"{model}: head_dim {head_dim} is not supported by vLLM's CPU attention "
            f"(supported: {', '.join(map(str, CPU_HEAD_SIZES))})"
        )
    if not has_gpu() and quant.get("format") == "pack-quantized" and not cpu_has_avx512():
        raise ServeError(
            f"{model} is a pack-quantized (W4A16) checkpoint, and vllm-cpu has no W4A16 kernel "
            "for a CPU without AVX-512 (its AVX2 build lacks cpu_gemm_wna16): serve it on a GPU "
            "or an AVX-512 CPU"
        )
    if sparsity and sparsity.get("targets"):
        raise ServeError(
            f"{config_path} has a sparsity_config with targets ({sparsity.get('format')}): vLLM "
            "rejects it "
            "('Sparsity support has been removed from compressed-tensors'). Re-save the model "
            "without a "
            "sparsity compressor: pruned models are saved densely with zeros."
        )


def model_folder_problem(path: Path) -> str | None:
    """What makes a local path no model folder ("does not exist", "is a file, ..."), or None."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a model directory"
    if not (path / "config.json").is_file():
        return "is not a checkpoint: it has no config.json"
    return None


def looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


# vLLM prefixes its log lines ("(EngineCore_DP0 pid=7) ERROR 12-02 10:00:01 [core.py:708] ...")
_LOG_PREFIX = re.compile(r"^(?:\([^)]*\)\s+)?(?:[A-Z]+\s+\d\d-\d\d \S+ \[[^\]]*\]\s?)?")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit)\b(?::.*)?$")


def root_cause(log_text: str, limit: int = 6) -> list[str]:
    """The lines of a failed process's log that say why it failed: the exception lines of its
    tracebacks, without vLLM's prefixes and without repeats, the last `limit` of them. A vLLM
    engine that fails to start logs the cause in its own traceback, above the API server's
    generic "Engine core initialization failed. See root cause above"; both are kept. A log
    without a traceback gives its last non-empty lines."""
    lines = [_LOG_PREFIX.sub("", line).rstrip() for line in log_text.splitlines()]
    causes: list[str] = []
    for line in lines:
        if _EXCEPTION_LINE.match(line) and line not in causes:
            causes.append(line)
    if not causes:
        causes = [line for line in lines if line.strip()]
    return causes[-limit:]


def log_summary(log_path: Path) -> str:
    """A failed process's root-cause lines, indented, and where its whole log is."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return f"  (no log at {log_path})"
    cause = "\n".join(f"  {line}" for line in root_cause(text)) or "  (the log is empty)"
    return f"{cause}\n  full log: {log_path}"


@dataclass
class Server:
    config: ServeConfig
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_pid(self.pid, timeout_s)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _vllm_executable() -> str:
    candidate = Path(sys.executable).with_name("vllm")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("vllm")
    if not found:
        raise ServeError(
            "the `vllm` executable was not found: run with the serving venv (make serve-venv)"
        )
    return found


def start_server(config: ServeConfig, quiet: bool = False) -> Server:
    """Start `vllm serve` and wait for /health; on failure, stop it and raise with the root cause
    from its log (and the log's path)."""
    check_model_dir(config.model)
    if port_in_use(config.host, config.port):
        raise ServeError(
            f"port {config.port} on {config.host} is already in use: pass another --port"
        )
    log_path = Path(config.log_path or f"/tmp/hsr-vllm-{config.port}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = config.command(_vllm_executable())
    if not quiet:
        print(f"[serve] {' '.join(cmd)}\n[serve] log: {log_path}", flush=True)
    log = open(log_path, "w")
    process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=config.environment(), start_new_session=True
    )
    log.close()
    server = Server(config, process, log_path)
    try:
        return _wait_healthy(server, config, quiet)
    except BaseException:
        # a failed start, Ctrl-C or SIGTERM while waiting: the server never outlives its caller
        server.stop()
        raise


def _wait_healthy(server: Server, config: ServeConfig, quiet: bool) -> Server:
    process = server.process
    deadline = time.monotonic() + config.startup_timeout_s
    start = time.monotonic()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(
                f"vllm serve exited with code {process.returncode} before it was healthy:\n"
                f"{log_summary(server.log_path)}"
            )
        if server.healthy():
            if not quiet:
                print(
                    f"[serve] healthy at {server.url} after {time.monotonic() - start:.0f} s "
                    f"(pid {process.pid})",
                    flush=True,
                )
            return server
        time.sleep(1.0)
    raise ServeError(
        f"vllm serve was not healthy within {config.startup_timeout_s:.0f} s:\n"
        f"{log_summary(server.log_path)}"
    )


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the server's process group, then SIGKILL if it lingers. A Ctrl-C or SIGTERM
    that arrives meanwhile is held until the server is gone, so it cannot leave an orphan."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        _stop_group(pid, timeout_s)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _stop_group(pid: int, timeout_s: float) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start vllm serve and wait until it is healthy")
    serve.add_argument("--model", required=True)
    serve.add_argument("--port", type=int, default=8011)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--dtype")
    serve.add_argument("--max-model-len", type=int, help="default: the model's own, capped at 2048")
    serve.add_argument("--kv-cache-memory-bytes", type=int, default=DEFAULT_KV_CACHE_BYTES)
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    serve.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    serve.add_argument("--limit-mm-per-prompt")
    serve.add_argument("--timeout", type=float, default=300.0)
    serve.add_argument(
        "--foreground", action="store_true", help="wait until interrupted, then stop"
    )
    stop = sub.add_parser("stop", help="stop a server started by `serve`")
    stop.add_argument("--pid", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop_pid(args.pid)
        print(f"[serve] stopped {args.pid}")
        return 0
    config = ServeConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        limit_mm_per_prompt=args.limit_mm_per_prompt,
        startup_timeout_s=args.timeout,
    )
    try:
        server = start_server(config)
    except ServeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"pid": server.pid, "url": server.url, "log": str(server.log_path)}))
    if args.foreground:
        try:
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
