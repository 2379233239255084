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


def make_config(vocab_size: int, max_positions: int = 64) -> LlamaConfig:
    # 4 heads of 32 (on a width of 64): vLLM's CPU attention has no kernel for heads of 16
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=max_positions,
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


# An instruct-shaped tiny model for examples and tests of real-task input: characters of English text,
# ChatML turns (<|im_start|>role ... <|im_end|>, as Qwen's instruct models write them), the end of a
# turn as EOS, and room for a few hundred characters of prompt and reasoning.
CHAT_SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_chat_model(directory: str, seed: int) -> None:
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(CHAT_SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(CHAT_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                        unk_token="<unk>", padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = make_config(len(tokenizer), max_positions=2048)
    config.bos_token_id, config.eos_token_id = None, vocab["<|im_end|>"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
