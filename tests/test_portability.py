"""The numeric core, fused-kernel and chunked-recurrence tests pass under every CPU code path that torch can take on
this machine.

torch picks its vectorised kernels from ``ATEN_CPU_CAPABILITY`` (``default``, ``avx2``, ``avx512``), and the fused FWM
kernel is compiled with the instruction set of that capability, so a float tolerance tuned on one CPU can fail on
another. Each capability the CPU supports, other than the one this process already runs the suite under, gets a
child pytest run of the numeric test files; the children run concurrently, one per core.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import torch

from fwm_rl.fused import load_extension

REPO = Path(__file__).resolve().parents[1]
NUMERIC_TEST_FILES = ("tests/test_cores.py", "tests/test_fused.py", "tests/test_chunked.py")
# The non-numeric tests of those files that cost seconds (a failing build, a missing compiler, the malformed-call
# cases in their own child process); the main run has them.
NOT_NUMERIC = "not build_ext and not fallback and not malformed"
CAPABILITIES = ("default", "avx2", "avx512")
CHILD_TIMEOUT_S = 540  # below pytest-timeout's 600 s, so a hung child is reported here, with its output
KERNEL_SKIP = "fused kernel unavailable"


class ChildRun(NamedTuple):
    returncode: int
    output: str


# Vectorised float32 and float64 element-wise ops and reductions, run before the capability is reported.
CAPABILITY_PROBE = ("import torch\n"
                    "for dtype in (torch.float32, torch.float64):\n"
                    "    x = torch.randn(4096, dtype=dtype)\n"
                    "    ((x - x.sum()) ** 2).exp().sum().item()\n"
                    "print(torch.backends.cpu.get_cpu_capability())")


def capability_under(requested: str) -> str:
    """The capability torch reports in a fresh process with ``ATEN_CPU_CAPABILITY=requested`` (torch ignores a
    capability the CPU lacks, so this equals ``requested.upper()`` exactly when the CPU supports it). A VM whose
    CPUID offers AVX-512 while its kernel does not enable it (no avx512f in /proc/cpuinfo: seen on an AMD EPYC)
    passes torch's check and then dies of SIGILL on the first vectorised op; the probe reports that instead."""
    result = subprocess.run(
        [sys.executable, "-c", CAPABILITY_PROBE],
        env={**os.environ, "ATEN_CPU_CAPABILITY": requested}, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        return f"none: a vectorised op exits with status {result.returncode}"
    return result.stdout.strip()


def run_numeric_tests(capability: str, threads: int) -> ChildRun:
    """pytest on the numeric test files in a child process under ``ATEN_CPU_CAPABILITY=capability``."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "pytest", "-q", "-rfEs", "--tb=short", "-p", "no:cacheprovider",
               "-k", NOT_NUMERIC, *NUMERIC_TEST_FILES]
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        output = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        return ChildRun(-1, f"timed out after {CHILD_TIMEOUT_S} s\n{output}")
    return ChildRun(result.returncode, result.stdout + result.stderr)


class Children(NamedTuple):
    current: str
    detected: dict[str, str]
    runs: dict[str, Future]


@pytest.fixture(scope="module")
def children(request: pytest.FixtureRequest) -> Iterator[Children]:
    """Detect the supported capabilities, then start one child run per selected capability to check, all at once."""
    test = test_numeric_core_and_fused_tests_pass_under_cpu_capability
    selected = {item.callspec.params["capability"] for item in request.session.items
                if getattr(item, "function", None) is test}
    with ThreadPoolExecutor(len(CAPABILITIES)) as pool:
        detected = dict(zip(CAPABILITIES, pool.map(capability_under, CAPABILITIES)))
        current = torch.backends.cpu.get_cpu_capability()
        to_check = [c for c in CAPABILITIES if c in selected and detected[c] == c.upper() and c.upper() != current]
        threads = max(1, (os.cpu_count() or 1) // max(1, len(to_check)))
        yield Children(current, detected, {c: pool.submit(run_numeric_tests, c, threads) for c in to_check})


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_numeric_core_and_fused_tests_pass_under_cpu_capability(capability, children):
    if capability.upper() == children.current:
        pytest.skip(f"this process runs under {children.current}: the rest of the suite checks it")
    if children.detected[capability] != capability.upper():
        fallback = children.detected[capability]
        pytest.skip(f"this CPU does not support {capability.upper()} "
                    f"(ATEN_CPU_CAPABILITY={capability} gives {fallback})")
    run = children.runs[capability].result()
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.output, flags=re.MULTILINE)
    tail = "\n".join(run.output.splitlines()[-40:])
    if run.returncode != 0:
        pytest.fail(f"under ATEN_CPU_CAPABILITY={capability}, {len(failed)} test(s) failed: "
                    f"{', '.join(failed) or '(see the output)'}\n{tail}", pytrace=False)
    if load_extension().module is not None and KERNEL_SKIP in run.output:
        pytest.fail(f"the fused kernel loads here but not under ATEN_CPU_CAPABILITY={capability}, so its tests were "
                    f"skipped there:\n{tail}", pytrace=False)
