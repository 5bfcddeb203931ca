"""Build the compiled kernels ahead of first use (run by the Makefile's install step).

``python -m fwm_rl.build_ext`` compiles the fused FWM recurrence into its cache (see :mod:`fwm_rl.fused.extension`)
and always exits 0: where it cannot be built, the package falls back to the PyTorch reference with a warning. The
one library holds the kernel for every x86 instruction set torch dispatches to (AVX-512, AVX2, baseline), so
processes run under any ``ATEN_CPU_CAPABILITY`` load it without compiling.
"""
import time


def main() -> None:
    from fwm_rl.fused.extension import build, build_directory

    print(f"fwm_rl: building the fused FWM recurrence in {build_directory()} (one library for AVX-512, AVX2 and the baseline; 3-6 minutes, once)", flush=True)
    start = time.perf_counter()
    try:
        build()
    except Exception as error:  # no compiler or a failed build must not fail the installation
        print("fwm_rl: WARNING: could not build the fused FWM recurrence; the PyTorch reference will be used.")
        print(error)
        return
    print(f"fwm_rl: fused FWM recurrence ready ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
