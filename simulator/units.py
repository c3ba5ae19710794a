"""Units enter once, at load: key names carry them (``bandwidth_GBps``), values become SI here.

SI inside parasim: seconds, bytes, bytes/s, FLOP/s. Decimal prefixes for rates (GB/s = 1e9 B/s,
as vendors quote link and memory bandwidth), binary prefixes for capacities (GiB = 2**30 B).
"""

from __future__ import annotations

US = 1e-6
MS = 1e-3
GB = 1e9
GIB = 2**30
MIB = 2**20
KIB = 2**10
TFLOPS = 1e12
GBIT = 1e9 / 8  # bytes per second in one Gbit/s

# key suffix -> factor to SI. A key ``bandwidth_GBps: 25`` becomes ``bandwidth = 25e9`` (B/s).
SUFFIXES: dict[str, float] = {
    "_GBps": GB,
    "_Gbps": GBIT,
    "_us": US,
    "_ms": MS,
    "_s": 1.0,
    "_GiB": GIB,
    "_MiB": MIB,
    "_KiB": KIB,
    "_TFLOPS": TFLOPS,
    "_GHz": 1e9,
}

# tf32: fp32 storage, matrix products on TF32 tensor cores (the device's tf32 peak, else fp32)
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8, "fp8": 1, "tf32": 4}
