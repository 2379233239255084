"""itertrain: iterative training of Hugging Face causal LMs that never loses work.

The package is cut in wings, innermost first; a module imports its own wing and those inside it,
never one further out, and no import closes a cycle (tests/test_layers.py checks both, counting
imports inside functions). docs/architecture.md draws the cut and says why it falls where it does.

  core       what is on disk and what to do about it, without torch: artifact names, manifests, the
             commit protocol, inventory -> plan, retention, the lock, failpoints, the banner, the
             progress record, loss curves, the error family
  runtime    processes and the machine: ranks (dist), stop requests, DeepSpeed/FSDP, background
             checkpoint writes, verifying what a plan loads (restore), a model kept between iterations
  tasks      what is trained on and how it is judged: the task types, the built-in task and tiny
             model, data files, chat templates, verifiers and the pool that runs them
  phases     the work of an iteration besides training: generate (HF or vLLM) in committed shards,
             samples, preference pairs, evaluation
  training   the Trainer subclass (the Recovering mixin), PEFT adapters, the objectives (sft, dpo),
             the training data's encoding, flag parsing
  trackers   TensorBoard, W&B and MLflow: one run per experiment on the global-step axis
  app        what a user runs: cli (the entry point: parse, run, exit status), config (the flags),
             startup (check, claim, plan, banner, prepare), starts and loop (each iteration as
             phases), status, plot, configdoc (docs/config.md)
"""

__version__ = "0.1.0"
