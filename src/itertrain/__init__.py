"""itertrain: iterative training of Hugging Face causal LMs that never loses work.

The package, in the order data flows through a run:
  cli, config, defaults     flags (ours and HF's TrainingArguments) -> Config; bad input exits 2
  run                       start-up: check inputs, claim --output_dir (lock), plan, banner, prepare
  artifacts, inventory      what is on disk and its state (pure names; the one "complete" check)
  selectors, plan, banner   --resume_from* values -> where to start and why (pure, no torch, no I/O)
  restore                   verify what the plan loads, fall back, rename aside; the starting state
  loop                      each iteration: generate, verify, select, train, evaluate, save iter_K
  samples, shards, generate, vllm_backend, vllm_worker, tasks, data, evaluate
                            the generate phase (HF or vLLM), in committed shards; tasks and verifiers
  trainer, async_save, engines   the Trainer subclass, background checkpoints, DeepSpeed and FSDP
  adapters                  --use_peft: the frozen model and its adapter, the fp32 merge, what a resume must match
  commit, manifest, retention    the commit protocol (stage, fsync, manifest, rename); pruning after it
  stop, lock, dist, failpoints   stop requests, one writer, rank-0 decisions, crash points for tests
  status, plot, trackers, curve  what a user reads: status, progress.png, TensorBoard/W&B/MLflow, curves
"""

__version__ = "0.1.0"
