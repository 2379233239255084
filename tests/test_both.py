""""both" really takes the weights from the iteration model and the optimizer, scheduler, RNG and
step counters from the checkpoint (checked inside the HF Trainer, at its first step)."""

import copy
import random

import pytest
import torch
from conftest import SMALL, copy_experiment, weights
from transformers import AutoTokenizer, TrainerCallback

pytestmark = pytest.mark.e2e


class Captured(Exception):
    pass


class Capture(TrainerCallback):
    def __init__(self):
        self.seen = {}

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        self.seen = {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scheduler": lr_scheduler.state_dict(),
                     "python_rng": random.getstate(), "local_step": state.global_step}
        raise Captured


def test_both_loads_weights_from_iteration_and_state_from_checkpoint(tmp_path, reference):
    from itertrain.app.config import parse
    from itertrain.app.starts import Start, both_view
    from itertrain.tasks import load_task
    from itertrain.training.data import Collator, encode
    from itertrain.training.trainer import IterTrainer, Recovery

    out = copy_experiment(reference, tmp_path / "exp")
    cfg = parse([*SMALL, "--output_dir", str(out)])
    tok = AutoTokenizer.from_pretrained(str(out / "base"))
    gold = load_task(cfg.it, cfg.train.seed).gold
    targs = copy.deepcopy(cfg.train)
    targs.output_dir = str(out / ".staging" / "trainer")
    start = Start(1, str(out / "iter_0"), None, 9, "iter_0", view_of=("iter_0", "checkpoint-9"))
    from transformers import AutoModelForCausalLM

    trainer = IterTrainer(model=AutoModelForCausalLM.from_pretrained(str(out / "iter_0")), args=targs,
                          train_dataset=encode(gold, tok), data_collator=Collator(tok.pad_token_id),
                          recovery=Recovery(experiment_dir=str(out), iteration=1, step_offset=9, iteration_steps=6,
                                            started_from="iter_0"))
    cap = Capture()
    trainer.add_callback(cap)
    with pytest.raises(Captured):
        trainer.train(resume_from_checkpoint=both_view(cfg, start, trainer, 6))
    seen = cap.seen
    want_w = weights(out / "iter_0")
    ckpt_w = weights(out / "checkpoint-9")
    for k, v in want_w.items():
        assert torch.equal(seen["weights"][k], v), k
    assert any(not torch.equal(ckpt_w[k], want_w[k]) for k in want_w)  # the two sources really differ
    opt = torch.load(out / "checkpoint-9" / "optimizer.pt", weights_only=True)
    assert seen["optimizer"]["state"].keys() == opt["state"].keys() and opt["state"]
    for i, st in opt["state"].items():
        for name, t in st.items():
            assert torch.equal(seen["optimizer"]["state"][i][name], t), (i, name)
    sched = torch.load(out / "checkpoint-9" / "scheduler.pt", weights_only=True)
    assert seen["scheduler"]["last_epoch"] == sched["last_epoch"] == 3
    from transformers.trainer_pt_utils import safe_globals

    with safe_globals():
        rng = torch.load(out / "checkpoint-9" / "rng_state.pth", weights_only=True)
    assert seen["python_rng"] == rng["python"]
    assert seen["local_step"] == 0 and trainer.step_offset == 9  # global step continues from 9
