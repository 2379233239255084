"""The Recovering mixin's own arithmetic, against HF's."""

import torch
from transformers import Trainer, TrainingArguments

from itertrain.tasks.tinymodel import make_model, make_tokenizer
from itertrain.training.trainer import IterTrainer, Recovery


def test_floating_point_ops_are_hfs_with_the_parameters_counted_once(tmp_path, monkeypatch):
    model = make_model(0, len(make_tokenizer()))
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[])
    trainer = IterTrainer(model=model, args=args, recovery=Recovery(experiment_dir=str(tmp_path), iteration=0,
                                                                    step_offset=0, iteration_steps=1))
    batches = [{"input_ids": torch.ones(b, w, dtype=torch.long)} for b, w in [(8, 11), (64, 7), (1, 1)]]
    want = [Trainer.floating_point_ops(trainer, b) for b in batches]
    counted = []
    real = type(model).num_parameters
    monkeypatch.setattr(type(model), "num_parameters", lambda self, **kw: counted.append(kw) or real(self, **kw))
    assert [trainer.floating_point_ops(b) for b in batches] == want
    assert want[1] == 6 * 64 * 7 * real(model, exclude_embeddings=True) and len(counted) == 1
    assert trainer.floating_point_ops({"prompt_input_ids": torch.ones(2, 3)}) == 0  # no main input: HF's 0
