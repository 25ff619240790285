"""Resident memory of this process on CPU: now, and its high-water mark since the last reset.

The kernel's high-water mark (``VmHWM``, also ``ru_maxrss``) covers the process's whole life, so a
measurement that only reads it also counts whatever peaked before it started (a float32 temporary
made while building the inputs, a model load). Writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0)
resets the mark to the current resident size; :func:`reset_peak` does that and says whether it could.
"""

from __future__ import annotations

import os
import resource


def rss_mb() -> float:
    """The resident set size now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Set the high-water mark to the current resident size; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """The resident high-water mark (since the last :func:`reset_peak`, else since the process started), MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # ru_maxrss is in KB on Linux, where /proc exists; other systems report it here
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
