"""What machine a benchmark ran on: CPU model, the instruction-set flags that decide kernels, threads.

Every speed figure in aelab is stated beside this (hosts of one machine kind differ: one BLAS ran
AVX2 kernels where the next ran AVX-512).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

#: the flags that change which kernels PyTorch, oneDNN and the BLAS pick
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def host_info(threads: int | None = None) -> dict[str, Any]:
    """``{"cpu", "flags", "cpu_capability", "cores", "threads", "torch"}`` of this process's host."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"cpu": model, "flags": [f for f in FLAGS if f in flags],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "threads": threads if threads is not None else torch.get_num_threads(), "torch": torch.__version__}
