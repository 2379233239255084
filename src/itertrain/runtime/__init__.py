"""The runtime: processes and the machine under a run.

dist (ranks, and the one rank-0 helper for deciding and logging), stop (stop requests, agreed over
ranks; exit 75), engines (DeepSpeed and FSDP), async_save (checkpoints written in the background),
restore (verify what the plan loads, fall back, rename aside), handoff (iter_K's model kept in
memory for iteration K+1).
"""
