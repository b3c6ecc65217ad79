"""What this machine is, and the AMX trap.

Some hypervisors advertise AMX in the CPU flags but give no tile palette; oneDNN (inside torch and OpenVINO) trusts the
flags and the first AMX instruction kills the process with SIGILL. The only safe place to decide is before torch or
OpenVINO runs a kernel, so `apply_isa_workaround()` runs a tiny bf16 matmul in a subprocess, caches the verdict per CPU,
and caps oneDNN below AMX only when the probe dies. Machines where AMX works keep it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

ISA_FLAGS = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx": "amx_tile",
}
ISA_CAP = "AVX512_CORE_BF16"
_PROBE = "import torch; a = torch.ones(64, 64, dtype=torch.bfloat16); (a @ a).sum().item()"
LIBRARIES = ("qdeploy", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "openvino", "nncf", "numpy")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_generation() -> str | None:
    """Family and model numbers: a VM often names its CPU only "AMD EPYC", and Zen 3 and Zen 5 behave differently
    for int8 (VNNI or not). x86 only."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "cpu family" not in fields:
        return None
    return f"family {fields['cpu family']}, model {fields.get('model', '?')}"


def isa() -> dict[str, bool]:
    _, flags = _cpuinfo()
    return {name: flag in flags for name, flag in ISA_FLAGS.items()}


def has_bf16() -> bool:
    flags = isa()
    return flags["avx512_bf16"] or flags["amx"]


def has_vnni() -> bool:
    flags = isa()
    return flags["avx512_vnni"] or flags["avx_vnni"]


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "qdeploy" / "isa-probe.json"


def _probe_amx_dies(cpu_key: str) -> bool:
    cache = _cache_file()
    try:
        verdicts = json.loads(cache.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if cpu_key in verdicts:
        return bool(verdicts[cpu_key])
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=300)
    dies = proc.returncode < 0 or proc.returncode == 132
    verdicts[cpu_key] = dies
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(verdicts, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-probe next time
    return dies


def apply_isa_workaround() -> str | None:
    """Cap oneDNN below AMX when AMX is advertised but dies. Returns the cap in force, if any."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        return os.environ["ONEDNN_MAX_CPU_ISA"]
    model, flags = _cpuinfo()
    if "amx_tile" not in flags or os.environ.get("QDEPLOY_NO_ISA_PROBE"):
        return None
    key = hashlib.sha256((model + " ".join(sorted(flags))).encode()).hexdigest()[:16]
    if _probe_amx_dies(key):
        os.environ["ONEDNN_MAX_CPU_ISA"] = ISA_CAP
        return ISA_CAP
    return None


def build_record() -> dict:
    """Where an artifact was made: recorded in its manifest, compared with the machine that loads it."""
    model, _ = _cpuinfo()
    return {"cpu_model": model, "isa": isa(), "onednn_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def gpus() -> list[dict]:
    """NVIDIA GPUs by nvidia-smi (name, driver, memory); empty where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split(", ") for line in out.stdout.strip().splitlines()] if out.returncode == 0 else []
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) == 3]


@lru_cache(maxsize=1)
def describe() -> dict:
    """The machine description recorded beside every measurement."""
    import psutil

    model, _ = _cpuinfo()
    providers: list[str] = []
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return {
        "cpu_model": model,
        "cpu_generation": cpu_generation(),
        "cores_physical": psutil.cpu_count(logical=False) or os.cpu_count(),
        "cores_logical": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "isa": isa(),
        "onednn_isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES if _version(name)},
        "qdeploy_commit": _git_commit(),
        "execution_providers": providers,
        "gpus": gpus(),
    }
