"""GPU pinning. Kept free of torch imports: it must run before CUDA is initialised."""

from __future__ import annotations

import os


def pin_gpu(gpu: int) -> None:
    """Make GPU `gpu`, numbered as nvidia-smi numbers them, this process's only CUDA device
    (it becomes `cuda:0`)."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
