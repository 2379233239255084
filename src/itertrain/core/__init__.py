"""The core: what is on disk, what it means, and what to do about it. Pure and torch-free.

names (artifact names and states), manifest (one artifact's record and checksums), commit (the
commit protocol: stage, fsync, manifest, rename), inventory (what is on disk, and the one check of
"complete"), selectors and plan (--resume_from* -> where to start and why), retention (pruning,
only after a commit), lock (one writer), failpoints (crash points for tests), banner, progress (the
live record status reads), curve (per-step loss), defaults, errors (the one error family).
"""
