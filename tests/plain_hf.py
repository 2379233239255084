"""A plain HF Trainer run, no itertrain: the output directory a user brings to be adopted.

python tests/plain_hf.py MODEL_DIR OUTPUT_DIR MAX_STEPS SAVE_STEPS [--peft]
(--peft: a LoRA adapter with peft's defaults, as a user of HF + peft trains one)
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments


def main(model_dir: str, output_dir: str, max_steps: int, save_steps: int, use_peft: bool = False) -> None:
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = [f"{i}+{i}={2 * i}" for i in range(64)]
    rows = [{"input_ids": ids, "labels": ids} for ids in tok(texts)["input_ids"]]

    def collate(batch):
        n = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([[tok.pad_token_id] * (n - len(r["input_ids"])) + r["input_ids"] for r in batch])
        pad = ids == tok.pad_token_id
        return {"input_ids": ids, "labels": ids.masked_fill(pad, -100), "attention_mask": (~pad).long()}

    args = TrainingArguments(output_dir, max_steps=max_steps, save_steps=save_steps, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=7)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if use_peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))
    Trainer(model=model, args=args, train_dataset=rows,
            data_collator=collate, processing_class=tok).train()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "--peft" in sys.argv[5:])
