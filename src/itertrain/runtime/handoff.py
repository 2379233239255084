"""The model an iteration just trained and committed, kept in memory for the next iteration.

Iteration K+1 generates from, and (with --train_from previous and a fresh optimizer) trains from,
exactly the weights iter_K holds: those of the model object that wrote them. Reading them back
would cost a checksum pass and two full loads per iteration for the same values. A resume has no
such model and loads iter_K from disk, verified, as before; the values are the same either way.
Kept only where every rank holds the whole model as an ordinary module (not DeepSpeed, FSDP or a
PEFT adapter, whose trained model is not the one iter_K holds).
"""

from __future__ import annotations


class Handoff:
    def __init__(self):
        self.path: str | None = None
        self.model = None

    def keep(self, path: str, trainer) -> None:
        """After iter_K is committed at `path`: keep the trainer's model (every rank its own)."""
        self.drop()
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or trainer.peft:
            return
        # without the mixed-precision wrapper accelerate puts on forward: as a fresh load would be
        self.model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        self.path = path

    def holds(self, path: str) -> bool:
        return self.model is not None and path == self.path

    def loader(self, load):
        """`load`, except that the kept model's directory gives the kept model (to generate from:
        it is only read)."""
        return lambda path: self.model if self.holds(path) else load(path)

    def take(self, path: str):
        """The kept model, to be trained (it will change): given once, then no longer kept."""
        model = self.model if self.holds(path) else None
        self.drop()
        return model

    def drop(self) -> None:
        self.path = self.model = None
