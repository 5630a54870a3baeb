"""Shared by the benchmark scripts: what machine ran them, and timing that waits for the GPU."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict

import torch


def machine(device: str = "cpu") -> Dict[str, object]:
    """Python/torch versions, CPU model, cores, torch threads, load average, and the GPU if any."""
    info: Dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "threads": torch.get_num_threads(), "loadavg": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def describe(info: Dict[str, object]) -> str:
    """One line for a results table: CPU (or GPU), cores, threads, torch."""
    where = f"GPU {info['gpu']}, " if "gpu" in info else ""
    return (f"{where}{info.get('cpu_model', info['cpu'])}, {info['cpus']} CPUs, {info['threads']} torch threads, "
            f"torch {info['torch']}")


def sync(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    """Seconds one call of ``fn`` takes, GPU work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0
