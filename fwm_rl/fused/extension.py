"""Build, cache and load the fused C++ kernel of the FWM recurrence.

The kernel is compiled with ``torch.utils.cpp_extension`` (ninja) into a directory keyed by a hash of the source,
the torch and Python versions and the compile flags, under ``$FWM_RL_EXTENSIONS_DIR`` if set, else
``$XDG_CACHE_HOME/fwm_rl/extensions`` (``~/.cache/fwm_rl/extensions``). ``python -m fwm_rl.build_ext`` (run by
``make install``) builds it ahead of time, so later processes only load the compiled library; a process that finds
no build compiles it once on first use. ``FWM_RL_NO_FUSED=1`` disables the kernel.

The vector instruction set is the one PyTorch itself dispatches to on this CPU (``AVX512``, ``AVX2`` or none), not
``-march=native``, and it is part of the cache key, so a cache shared by different machines never hands one a
library built for instructions it lacks.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Optional

import torch

NAME = "fwm_fused"
SOURCES = (Path(__file__).with_name("fwm_fused.cpp"),)
DISABLE_ENV = "FWM_RL_NO_FUSED"
CACHE_ENV = "FWM_RL_EXTENSIONS_DIR"
LIBRARY_SUFFIX = ".pyd" if sys.platform == "win32" else ".so"

# Flags per torch.backends.cpu.get_cpu_capability(); the AVX-512 set is the one PyTorch builds its own kernels with.
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


class ExtensionStatus(NamedTuple):
    """The loaded extension module, or None and the reason it is unavailable."""

    module: Optional[ModuleType]
    reason: str


def compile_flags() -> list[str]:
    """C++ flags: -O3, OpenMP (for at::parallel_for) and the vector instruction set of this CPU."""
    return ["-O3", "-fopenmp", *ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]


def build_directory() -> Path:
    """The cache directory of the build that matches this source, torch, Python and CPU."""
    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.read_bytes())
    conditions = [torch.__version__, sys.version, sysconfig.get_platform(), str(torch._C._GLIBCXX_USE_CXX11_ABI)]
    key.update("\0".join(conditions + compile_flags()).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get(CACHE_ENV) or cache / "fwm_rl" / "extensions")
    return root / f"{NAME}_{key.hexdigest()[:16]}"


def build(verbose: bool = False) -> ModuleType:
    """Compile the extension into :func:`build_directory` (a no-op when it is up to date) and import it."""
    from torch.utils.cpp_extension import load

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    return load(
        name=NAME,
        sources=[str(source) for source in SOURCES],
        extra_cflags=compile_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=verbose,
    )


def _import_built(directory: Path) -> Optional[ModuleType]:
    """Import a finished build from ``directory``; None if there is none (or a build holds its lock)."""
    library = directory / f"{NAME}{LIBRARY_SUFFIX}"
    if not library.is_file() or (directory / "lock").exists():
        return None
    spec = importlib.util.spec_from_file_location(NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def load_extension() -> ExtensionStatus:
    """The extension, loaded once per process: from the cache, else compiled now; never raises."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return ExtensionStatus(None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    try:
        module = _import_built(build_directory()) or build()
    except Exception as error:  # no compiler, no ninja, failed build or import: all mean "use the reference"
        summary = (str(error).strip().splitlines() or [""])[0].split(": [")[0][:120]
        return ExtensionStatus(
            None, f"could not build it ({type(error).__name__}: {summary}; `python -m fwm_rl.build_ext` shows why)"
        )
    return ExtensionStatus(module, "")
