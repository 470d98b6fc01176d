"""What machine a benchmark ran on, and which precision is "our default" there."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field

import torch

from ..training.precision import cpu_bf16_flags


@dataclass
class MachineInfo:
    device: str
    device_name: str
    cpu_model: str
    cpu_count: int
    cpu_flags_bf16: list[str] = field(default_factory=list)
    torch_version: str = torch.__version__
    torch_threads: int = 1
    python_version: str = platform.python_version()
    omp_wait_policy: str = field(default_factory=lambda: os.environ.get("OMP_WAIT_POLICY", "default"))

    @property
    def cpu_has_fast_bf16(self) -> bool:
        return bool(self.cpu_flags_bf16)

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu_has_fast_bf16": self.cpu_has_fast_bf16}

    def one_line(self) -> str:
        bf16 = ", ".join(self.cpu_flags_bf16) if self.cpu_flags_bf16 else "no amx_bf16/avx512_bf16"
        where = f"{self.device_name}; host " if self.device != "cpu" else ""
        return (
            f"{where}CPU {self.cpu_model} ({self.cpu_count} cores, {bf16}), torch {self.torch_version} "
            f"({self.torch_threads} threads, OMP_WAIT_POLICY {self.omp_wait_policy}), Python {self.python_version}"
        )


def _lscpu_fields() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _cpuinfo_fields() -> dict[str, str]:
    """Fallback for machines without lscpu: the first processor block of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return {"Model name": fields.get("model name", "")}


def describe_machine(device: str = "cpu") -> MachineInfo:
    """CPU model and core count (from lscpu), the bf16 flags `mixed_precision: auto` decides on, torch
    version and the accelerator's name."""
    fields = _lscpu_fields() or _cpuinfo_fields()
    device_name = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    return MachineInfo(
        device=device,
        device_name=device_name,
        cpu_model=fields.get("Model name") or platform.processor() or "unknown",
        cpu_count=os.cpu_count() or 1,
        cpu_flags_bf16=list(cpu_bf16_flags()),
        torch_threads=torch.get_num_threads(),
    )


def default_precision(machine: MachineInfo) -> str:
    """Our default training precision on this machine, the rule of `resolve_mixed_precision("auto")`: bf16
    autocast on GPUs and on CPUs with hardware bf16, fp32 elsewhere (emulated bf16 is far slower)."""
    if machine.device != "cpu" or machine.cpu_has_fast_bf16:
        return "bf16"
    return "fp32"
