"""How many cores torch may use in this process: given by the caller (Settings.threads, a Dask worker's nthreads),
or, when 0, the cores this process may actually run on (affinity / cgroup aware, unlike os.cpu_count)."""
from __future__ import annotations

import os


def cpu_threads(threads: int = 0) -> int:
    """`threads` when positive, else the cores this process may use."""
    if threads > 0:
        return int(threads)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads to `threads` (0 = the cores this process may use); returns the number set.
    Identical bits across runs need identical thread counts, so callers pass the count they were configured with."""
    import torch

    n = cpu_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
