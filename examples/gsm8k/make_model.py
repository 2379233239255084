"""Writes a tiny instruct-shaped model (a Llama of 2 layers, a character tokenizer, a ChatML chat
template) into the directory given, made here from a seed: nothing is downloaded. It stands where a
real instruct model (Qwen2.5-1.5B-Instruct, say) would: the commands are the same."""

import sys

from itertrain.tasks.tinymodel import write_chat_model

if __name__ == "__main__":
    write_chat_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-instruct", seed=0)
