"""Tiny randomly initialised causal LMs of several architectures, built from configs (no downloads).

They live on `$TR_TEST_DEVICE` (default cpu), so the same lossless tests can check a GPU: run
`TR_TEST_DEVICE=cuda python -m pytest tests/test_lossless.py tests/test_drafts.py tests/test_sampling.py`.
"""

from __future__ import annotations

import os

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ARCHITECTURES = ("llama", "qwen2", "gpt2")
DEVICE = torch.device(os.environ.get("TR_TEST_DEVICE", "cpu"))


def tiny_model(arch: str, vocab_size: int = 96, seed: int = 0, dtype: torch.dtype = torch.float64):
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        model = LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        model = Qwen2ForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512,
                            bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    return model.to(DEVICE, dtype).eval()
