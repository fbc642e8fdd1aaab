"""Tiny Hugging Face models built from configs, shared by the tests (no weights downloaded)."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)


def tiny_llama(
    layers: int = 2,
    hidden: int = 32,
    kv_heads: int = 2,
    intermediate: int = 48,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A seeded Llama (4 heads, vocabulary 64) in eval mode."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    """A seeded GPT-2 (Conv1D projections, vocabulary 64) in eval mode."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def tiny_bert(vocab: int = 64, intermediate: int = 48) -> BertModel:
    """A seeded 2-layer BERT of width 32 (4 heads) in eval mode."""
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=intermediate,
        vocab_size=vocab,
    )
    return BertModel(cfg).eval()
