"""The built-in base model: a tiny Llama and a character-level tokenizer, made locally from the
seed (nothing comes from a hub) and written as an ordinary HF model directory."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHARS = list("0123456789+=")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", padding_side="left")


def make_config(vocab_size: int) -> LlamaConfig:
    # 4 heads of 32 (on a width of 64): vLLM's CPU attention has no kernel for heads of 16
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=64,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def make_model(seed: int, vocab_size: int) -> LlamaForCausalLM:
    with torch.random.fork_rng():  # random init from the seed, without touching the caller's RNG
        torch.manual_seed(seed)
        return LlamaForCausalLM(make_config(vocab_size))


def write_base(directory: str, seed: int) -> None:
    """Write the tiny base model and its tokenizer into `directory` (a staging directory)."""
    tokenizer = make_tokenizer()
    model = make_model(seed, len(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
