"""What this CPU computes natively in reduced precision, so ``auto`` offers only precisions that pay here.

bf16 is fast only with AMX tiles or AVX512-BF16 (elsewhere oneDNN emulates it: ~5x slower than fp32, measured on an
AVX2 AMD EPYC), and int8 matrix products need VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8) to beat fp32 without
saturating 16-bit accumulators. The flags are the kernel's (``/proc/cpuinfo``); torch 2.11-2.13 exposes no AMX query.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """The reduced-precision units of this CPU, from its flags."""

    model: str
    flags: frozenset[str]

    @property
    def amx_bf16(self) -> bool:
        return {"amx_tile", "amx_bf16"} <= self.flags

    @property
    def amx_int8(self) -> bool:
        return {"amx_tile", "amx_int8"} <= self.flags

    @property
    def fast_bf16(self) -> bool:
        """bf16 matrix products in hardware: AMX tiles or AVX512-BF16 dot products."""
        return self.amx_bf16 or "avx512_bf16" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products with 32-bit accumulation: no 16-bit saturation, so int8 needs no reduced range."""
        return self.amx_int8 or bool({"avx512_vnni", "avx_vnni"} & self.flags)

    def units(self) -> str:
        """The units found, for reports: e.g. ``AMX-BF16, AMX-INT8, AVX512-BF16, AVX512-VNNI``."""
        names = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2")
        found = [name.upper().replace("_", "-") for name in names if name in self.flags]
        return ", ".join(found) or "none of AMX, AVX512-BF16, VNNI, AVX2"

    def lacks(self, precision: str) -> str | None:
        """Why ``precision`` would be slow on this CPU, or None when it runs natively (fp32 always does)."""
        if precision == "bf16" and not self.fast_bf16:
            return f"{self.model} has no AMX-BF16 or AVX512-BF16 ({self.units()}): bf16 would be emulated, slower than fp32"
        if precision == "fp16" and "amx_fp16" not in self.flags:
            return f"{self.model} has no AMX-FP16 ({self.units()}): fp16 matrix products would be emulated, slower than fp32"
        if precision == "int8" and not self.vnni:
            return f"{self.model} has no VNNI or AMX-INT8 ({self.units()}): int8 products saturate 16-bit accumulators"
        return None


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The first processor's model name and flags (every core of one machine has the same)."""
    model, flags = platform.processor() or "unknown CPU", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", "unknown CPU", platform.processor()):
            model = value.strip()
        elif key == "flags":
            flags = frozenset(value.split())
            break
    return CpuFeatures(model, flags)


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU; without ``/proc/cpuinfo`` (not Linux) no reduced-precision unit is assumed."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        return CpuFeatures(platform.processor() or "unknown CPU", frozenset())
