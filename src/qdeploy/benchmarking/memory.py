from __future__ import annotations

import ctypes
import gc
import threading


def release_memory() -> None:
    """Hand what was freed back to the system: glibc keeps freed blocks in per-thread arenas, and the runtimes'
    thread pools make many, so a language-model run grew by each session it had let go."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class RssSampler:
    """Peak resident memory of this process while the block runs, sampled every few milliseconds.

    Everything runs in one process (so speed-ups are same-run ratios); the peak therefore includes what earlier cells
    left in the allocator. `delta_mb` (peak minus the RSS when the block started) is the cell's own share.
    """

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.start_mb = self.peak_mb = 0.0

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _loop(self):
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> "RssSampler":
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def delta_mb(self) -> float:
        return round(self.peak_mb - self.start_mb, 1)
