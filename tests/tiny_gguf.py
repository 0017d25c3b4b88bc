"""A tiny Qwen2 written as a real GGUF file (the `gguf` package's writer), so that the fast suite
runs transformers' own GGUF loading path on it, as organism-qwen's materialization does on the
real file. Float32 tensors: they round-trip exactly, so a test can compare every weight."""

from __future__ import annotations

from pathlib import Path

import torch

# Qwen2's chat layout (<|im_start|>role ... <|im_end|>), as the real model's GGUF carries one.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MERGES = ["h e", "l l", "Ġ w"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# transformers' Qwen2 parameter names -> GGUF's (llama.cpp's tensor naming)
TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    **{
        f"self_attn.{p}_proj.{kind}": f"attn_{p}.{kind}"
        for p in ("q", "k", "v")
        for kind in ("weight", "bias")
    },
}


def tiny_qwen2(layers: int = 2, seed: int = 0):
    """A random Qwen2ForCausalLM with GQA (4 heads, 2 KV heads) over write_tiny_gguf's tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = len(bytes_to_unicode()) + len(MERGES) + len(SPECIAL)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def write_tiny_gguf(path: Path, model) -> Path:
    """`model` (from tiny_qwen2) as a GGUF with a byte-level BPE tokenizer and a chat template."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    config = model.config
    byte_tokens = list(bytes_to_unicode().values())
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = byte_tokens + merged + SPECIAL
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny qwen2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(SPECIAL)) + [3] * len(SPECIAL))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    names = dict(TOP)
    for i in range(config.num_hidden_layers):
        names |= {f"model.layers.{i}.{k}": f"blk.{i}.{v}" for k, v in PER_LAYER.items()}
    for name, tensor in model.state_dict().items():
        writer.add_tensor(names[name], tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
