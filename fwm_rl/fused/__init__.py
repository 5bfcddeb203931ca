"""Fused CPU kernel of the FWM recurrence: a C++ extension (``fwm_fused.cpp``) with a hand-written backward.

``extension`` builds, caches and loads it; ``function`` wraps it as an autograd function. Callers go through
:func:`fwm_rl.recurrence.fwm_recurrence`, which falls back to the PyTorch reference where the kernel is unavailable.
"""
from fwm_rl.fused.extension import ExtensionStatus, build, build_directory, load_extension
from fwm_rl.fused.function import fwm_recurrence_fused, unsupported_reason

__all__ = [
    "ExtensionStatus", "build", "build_directory", "load_extension", "fwm_recurrence_fused", "unsupported_reason",
]
