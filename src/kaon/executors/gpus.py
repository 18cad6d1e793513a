"""GPU discovery through NVML, and declared GPUs for hosts where NVML cannot see them."""

from __future__ import annotations

from kaon.core.nodes import GpuInfo


def discover_gpus() -> list[GpuInfo]:
    """The GPUs NVML reports, or none when there is no driver."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            model = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(GpuInfo(index=i, model=model, memory=int(memory)))
        return gpus
    except Exception:  # pragma: no cover - a broken driver must not stop the server
        return []
    finally:
        pynvml.nvmlShutdown()


def declared_gpus(spec: str) -> list[GpuInfo]:
    """GPUs from a declaration like ``"2"`` or ``"H100:2"`` (``KAON_NODE_GPUS``)."""
    model, _, count = spec.rpartition(":")
    n = int(count)
    if n < 0:
        raise ValueError("KAON_NODE_GPUS must not be negative")
    return [GpuInfo(index=i, model=model or "declared", memory=80 * 2**30) for i in range(n)]
