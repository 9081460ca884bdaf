"""What the hardware runs natively: low precision is fast only where it has instructions for it.

A CPU without bf16 instructions (AVX2 only, as many cloud and laptop CPUs are; or AVX-512
without the BF16 extension) computes bf16 by converting to fp32 and back around every
operation: the embedded default ran 15x slower in bf16 than in fp32 on such a CPU (AVX2 only), and
with oneDNN capped at AVX2 on an AVX-512 CPU our loop ran 6-7x slower (BENCHMARKS.md, "bf16 where
the CPU has no bf16 instructions"). So low precision is used only where it is native:

- CPU bf16: the avx512_bf16 or amx_bf16 instructions (from torch's cpuinfo), and oneDNN not
  capped below them by ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA);
- CPU fp16: avx512_fp16 or amx_fp16, oneDNN not capped below AVX512_CORE_FP16;
- CUDA bf16: compute capability 8.0 or newer (Ampere); fp16: 5.3 or newer; tf32: 8.0 or newer.

`--precision bf16` (or fp16) where it would be emulated is refused with one line that gives the
measured cost and the alternative; `--precision auto` takes bf16 where it is native and fp32
elsewhere. Nothing here changes a number: it decides which precision may run.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from landscape.errors import LandscapeError

PRECISION_CHOICES = ("fp32", "tf32", "bf16", "fp16", "auto")

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) from the least to the most capable
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16")
_NEEDS = {"bf16": "AVX512_CORE_BF16", "fp16": "AVX512_CORE_FP16"}  # the lowest ISA with the instructions
# measured without them (BENCHMARKS.md): bf16 time / fp32 time of our loop
EMULATED_SLOWDOWN = "6-15x"


def onednn_isa_cap() -> str | None:
    """The ISA oneDNN is capped at by ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA, upper-cased; None when unset."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip().upper()
        if value:
            return value
    return None


def _cap_allows(cap: str | None, needed: str) -> bool:
    if cap is None or cap in ("ALL", "DEFAULT") or cap not in _ONEDNN_ISAS:
        return True  # no cap, or one this table does not know: the hardware decides
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(needed)


def cpu_info() -> dict[str, Any]:
    """The CPU's name, torch's vector ISA, the low-precision instructions it has, oneDNN's cap, and
    whether bf16 and fp16 run natively."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # an older torch or an unknown CPU: nothing is native
        caps = {}
    flags = [f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16") if caps.get(f)]
    cap = onednn_isa_cap()
    native = {
        "bf16": bool(caps.get("avx512_bf16") or caps.get("amx_bf16")) and _cap_allows(cap, _NEEDS["bf16"]),
        "fp16": bool(caps.get("avx512_fp16") or caps.get("amx_fp16")) and _cap_allows(cap, _NEEDS["fp16"]),
    }
    info = {"kind": "cpu", "name": str(caps.get("cpu_name", "unknown")), "isa": torch.backends.cpu.get_cpu_capability(),
            "flags": flags, "native_bf16": native["bf16"], "native_fp16": native["fp16"]}
    if cap is not None:
        info["onednn_max_isa"] = cap
    return info


def cuda_info(device: torch.device) -> dict[str, Any]:
    """The GPU's name and compute capability, and whether bf16, fp16 and tf32 run natively."""
    major, minor = torch.cuda.get_device_capability(device)
    cc = (major, minor)
    return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}",
            "native_bf16": cc >= (8, 0), "native_fp16": cc >= (5, 3), "native_tf32": cc >= (8, 0)}


def device_info(device: torch.device | str) -> dict[str, Any]:
    """`cpu_info()` or `cuda_info(device)`; for other devices only their kind."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_info()
    if device.type == "cuda":
        return cuda_info(device)
    return {"kind": device.type, "native_bf16": None, "native_fp16": None}


def is_native(precision: str, device: torch.device | str, info: dict[str, Any] | None = None) -> bool:
    """Whether `precision` runs at the hardware's own speed on `device` (fp32 always; tf32 is fp32
    off CUDA)."""
    if precision in ("fp32", "tf32"):
        return True
    if precision not in ("bf16", "fp16"):
        raise LandscapeError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}",
                             "precision")
    info = info if info is not None else device_info(device)
    return bool(info.get(f"native_{precision}"))


def resolve_precision(asked: str, device: torch.device | str, info: dict[str, Any] | None = None) -> str:
    """The precision to run: `asked`, or for "auto" bf16 where the hardware runs it natively and fp32
    elsewhere. bf16 or fp16 where they would be emulated is refused (LandscapeError, one line)."""
    if asked not in PRECISION_CHOICES:
        raise LandscapeError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {asked!r}", "precision")
    device = torch.device(device)
    info = info if info is not None else device_info(device)
    if asked == "auto":
        return "bf16" if is_native("bf16", device, info) else "fp32"
    if is_native(asked, device, info):
        return asked
    if device.type == "cuda":
        where = f"this GPU (compute capability {info.get('compute_capability')})"
        cost = "emulated"
    else:
        missing = "avx512_bf16 or amx_bf16" if asked == "bf16" else "avx512_fp16 or amx_fp16"
        capped = f"; oneDNN is capped at {info['onednn_max_isa']}" if "onednn_max_isa" in info else ""
        where = f"this CPU ({info.get('isa')}, no {missing} instructions in use{capped})"
        cost = f"emulated: {EMULATED_SLOWDOWN} slower than fp32 measured on such a CPU"
    raise LandscapeError(f"precision {asked} is not native on {where}, so it would be {cost}; use fp32, or auto "
                         "for bf16 only where the hardware has it", "precision")


def describe(info: dict[str, Any]) -> str:
    """One line naming the hardware, for benchmark tables: 'Intel Xeon, AVX512 (avx512_bf16, amx_bf16:
    native bf16)', 'NVIDIA H100, compute capability 9.0'."""
    if info.get("kind") == "cuda":
        return f"{info['name']}, compute capability {info['compute_capability']}"
    if info.get("kind") != "cpu":
        return str(info.get("kind"))
    low = [f for f in info.get("flags", []) if "bf16" in f or "fp16" in f]
    native = "native bf16" if info.get("native_bf16") else "bf16 emulated"
    cap = f", oneDNN capped at {info['onednn_max_isa']}" if "onednn_max_isa" in info else ""
    return f"{info.get('name', 'CPU')}, {info.get('isa')} ({', '.join(low) or 'no bf16/fp16 instructions'}: {native}{cap})"


def auto_note(asked: str, resolved: str, device: torch.device | str) -> str | None:
    """The note for `precision auto`: what it chose and why (None for any other precision)."""
    if asked != "auto":
        return None
    why = "bf16 is native here" if resolved == "bf16" else "bf16 would be emulated here"
    return f"precision auto: {resolved} ({why}, {describe(device_info(device))})"
