"""Pick the torch device a worker runs its models on (``worker.device``)."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(setting: str) -> str:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a device that exists here.

    ``auto`` is the first CUDA device when torch sees one, else the CPU.

    Raises
    ------
    RuntimeError
        When a CUDA device is asked for and torch has none (or not that one).
    """
    import torch  # only models import torch: the receiving process never pays for it

    if setting == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if setting == "auto":
        return "cuda:0" if available else "cpu"
    index = int(setting.split(":", 1)[1]) if ":" in setting else 0
    if not available:
        raise RuntimeError(f"worker.device = {setting!r} but torch sees no CUDA device")
    if index >= torch.cuda.device_count():
        raise RuntimeError(
            f"worker.device = {setting!r} but only {torch.cuda.device_count()} CUDA devices exist"
        )
    return f"cuda:{index}"
