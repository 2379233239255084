#!/usr/bin/env python
"""The seed's entry point: torchrun --nproc_per_node=N train_iterative.py --model_name ... --output_dir ..."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from itertrain.app.cli import leave, train_command  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(leave(train_command(sys.argv[1:])))
