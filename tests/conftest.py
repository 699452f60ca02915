"""Shared test setup: one torch thread (tiny tensors; threads only contend on a 2-core machine)."""
import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
