"""Peak tensor memory of one U-Net call: CUDA allocator statistics on a GPU, profiler allocation events on a CPU.

torch keeps no allocator statistics for CPU tensors, tracemalloc does not see them, and the process's resident size
keeps freed heap pages (sampling it from a thread also stalls the call on two cores). The torch profiler with
profile_memory records every CPU tensor allocation and free; the peak of their running sum is the CPU counterpart of
torch.cuda.max_memory_allocated. The profiler slows the call, so the benchmark measures memory on warm-up calls only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class PeakMemory:
    """Bytes that one call added at its peak over what was allocated when it started (`.peak_bytes`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - start
            return
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            yield
        allocations = sorted(
            (event.start_ns(), event.nbytes())
            for event in profiler.profiler.kineto_results.events()
            if event.name() == "[memory]"
        )
        running = peak = 0
        for _, nbytes in allocations:
            running += nbytes
            peak = max(peak, running)
        self.peak_bytes = peak
