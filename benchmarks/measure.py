"""Measuring tools of bench_speed.py: the peak extra memory of one call (CUDA allocator, or
Linux's peak RSS), wall-clock or CUDA-event timing, the measured bf16 matmul peak, and the
environment a result was measured in.  See bench_speed.py's docstring for the method."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Callable, Optional

#: glibc's variable that makes it mmap every allocation above this many bytes (child process).
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


# -- memory --------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak extra memory (bytes) of one call; see the module docstring."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.available = device == "cuda" or (_reset_peak_rss() and _proc_status_kb("VmHWM") is not None)
        self.note = (
            "torch.cuda.max_memory_allocated - allocated before the call"
            if device == "cuda"
            else "peak RSS (VmHWM after clear_refs) - RSS before the call, in a child process "
            f"with {MMAP_ENV}=65536"
            if self.available
            else "n/a: /proc/self/clear_refs is not writable, peak RSS cannot be reset"
        )

    def measure(self, fn: Callable[[], None]) -> Optional[int]:
        torch = self.torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        if not self.available:
            return None
        before = _proc_status_kb("VmRSS")
        _reset_peak_rss()
        fn()
        return (_proc_status_kb("VmHWM") - before) * 1024


# -- timing --------------------------------------------------------------------------------
class Timer:
    """Seconds of one call: CUDA events on cuda (after the call completes), perf_counter on CPU."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable[[], None]) -> float:
        torch = self.torch
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def measured_bf16_peak(n: int, timer: Timer, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n bf16 matmul on the current GPU (median of `repeats`)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = [timer(lambda: a @ b) for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times)


def environment(args) -> dict:
    """What a result was measured on: versions, platform, CPU or GPU, threads, load, flags."""
    import timm
    import torch

    import convit

    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "convit": convit.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "flush_denormal": args.flush_denormal,
        "compile": args.compile,
        "dtype": args.dtype,
    }
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    env["cpu"] = cpu
    if args.device == "cuda":
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["sdpa_backends"] = {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
            "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)(),
            "math": torch.backends.cuda.math_sdp_enabled(),
        }
    else:
        env["device"] = f"cpu: {cpu}"
    return env
