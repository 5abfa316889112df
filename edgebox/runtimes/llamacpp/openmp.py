"""OpenMP settings for llama.cpp's CPU backend, applied before llama-cpp-python loads.

llama.cpp runs each compute graph as an OpenMP parallel region, and libgomp gives every thread
that opens one a team of its own. A node serving two models has two engine threads, so two
teams: once the process holds more OpenMP threads than CPUs, libgomp cuts its barrier spin
from 300,000 iterations to 1,000 and every thread sleeps in the kernel at each of a graph's few
hundred barriers. On a 2-core Xeon the busy model then decoded at 34 tok/s instead of 78 while
the other model sat idle (benchmarks/bench_two_models.py). libgomp keeps the full spin in that
case only under `OMP_WAIT_POLICY=ACTIVE` with an explicit `GOMP_SPINCOUNT`: threads spin that
long (about a millisecond) and then sleep, as they do with one team. The price: two models
decoding at the same instant on too few cores spin against each other (80 → 60 tok/s in all
on that Xeon), a rarer case than one model busy and another loaded and idle.

libgomp reads these at load, so this runs before `import llama_cpp` (this package's
`__init__`); settings the user made are kept, and only libgomp builds are touched (other
OpenMP runtimes read OMP_WAIT_POLICY=ACTIVE as "spin forever").
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

SPIN_COUNT = "300000"  # libgomp's own spin count when it is not throttled


def uses_libgomp() -> bool:
    """Whether llama-cpp-python's CPU backend links GNU OpenMP (read from the library's
    dependency names; nothing is loaded)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for lib in sorted((Path(folder) / "lib").glob("libggml-cpu*.so*")):
            try:
                if b"libgomp.so" in lib.read_bytes():
                    return True
            except OSError:
                continue
    return False


def keep_spinning_across_teams() -> bool:
    """Set libgomp's wait policy for several engines in one process, unless llama-cpp-python
    is already loaded (too late) or the user chose their own; whether it was set."""
    if "llama_cpp" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    if not uses_libgomp():
        return False
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return True
