"""Build, cache and load the fused C++ kernel of the FWM recurrence.

The kernel is compiled with ``torch.utils.cpp_extension`` (ninja) into a directory keyed by a hash of the source, its
folder, the torch and Python versions and the compile flags, under ``$FWM_RL_EXTENSIONS_DIR`` if set, else
``$XDG_CACHE_HOME/fwm_rl/extensions`` (``~/.cache/fwm_rl/extensions``). ``python -m fwm_rl.build_ext`` (run by
``make install``) builds it ahead of time, so later processes only load the compiled library; a process that finds
no build compiles it once on first use. ``FWM_RL_NO_FUSED=1`` disables the kernel.

One library serves every x86-64 CPU: it holds the kernel compiled for AVX-512, for AVX2 and for the baseline
(``#pragma GCC target`` regions, not ``-march``), and at run time it takes the one PyTorch itself dispatches to
(``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` overrides). A test run under each
capability therefore checks each set of instructions, and none of them needs its own build.
"""
from __future__ import annotations

import fcntl
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
# The binding and one translation unit per instruction set (ninja compiles them in parallel).
SOURCES = tuple(Path(__file__).with_name(f"{name}.cpp")
                for name in ("fwm_fused", "fwm_isa_avx512", "fwm_isa_avx2", "fwm_isa_baseline"))
HEADERS = tuple(Path(__file__).with_name(name)
                for name in ("fwm_views.h", "fwm_kernel.h", "fwm_scan.h", "fwm_rank_one.h"))
DISABLE_ENV = "FWM_RL_NO_FUSED"
CACHE_ENV = "FWM_RL_EXTENSIONS_DIR"
LIBRARY_SUFFIX = ".pyd" if sys.platform == "win32" else ".so"
BUILD_LOCK = "build.flock"  # an OS lock held by the process that compiles into a build directory

# -ffp-contract=fast lets a·b + c become one fused multiply-add (ISO C++ mode turns contraction off).
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]


class ExtensionStatus(NamedTuple):
    """The loaded extension module, or None and the reason it is unavailable."""

    module: Optional[ModuleType]
    reason: str


def compile_flags() -> list[str]:
    """C++ flags: -O3, OpenMP (for at::parallel_for), FMA contraction; the instruction sets are in the source."""
    return list(CFLAGS)


def build_directory() -> Path:
    """The cache directory of the build that matches this source, torch, Python and CPU.

    The source folder is part of the key: ninja rebuilds when a source path changes, so two checkouts with the same
    source sharing one directory would rebuild it for each other in turn."""
    key = hashlib.sha256(str(SOURCES[0].resolve().parent).encode())
    for source in SOURCES + HEADERS:
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
    with open(directory / BUILD_LOCK, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released by the OS if this process dies
        # torch's own baton is a plain file that a killed build leaves behind, and a later build would wait on it
        # forever; every builder holds the lock above first, so a baton found now is stale.
        (directory / "lock").unlink(missing_ok=True)
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
        module = _import_built(build_directory())
        if module is None:  # say so: the first call, inside a timed run perhaps, waits minutes for the compiler
            print(f"fwm_rl: compiling the fused FWM kernel into {build_directory()} (3-6 minutes, once; "
                  "`make install` or `python -m fwm_rl.build_ext` does it ahead)", file=sys.stderr, flush=True)
            module = build()
    except Exception as error:  # no compiler, no ninja, failed build or import: all mean "use the reference"
        summary = (str(error).strip().splitlines() or [""])[0].split(": [")[0][:120]
        return ExtensionStatus(
            None, f"could not build it ({type(error).__name__}: {summary}; `python -m fwm_rl.build_ext` shows why)"
        )
    return ExtensionStatus(module, "")
