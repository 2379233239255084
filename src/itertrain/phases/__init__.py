"""The phases of an iteration besides training: generate (HF's generate, batched and seeded per
batch), vllm_backend and vllm_worker (a vLLM process per rank), shards (the generate phase's
committed pieces), samples (verify, select, commit samples_K), pairs (preference pairs for DPO),
evaluate (greedy accuracy on held-out prompts)."""
