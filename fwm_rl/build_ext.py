"""Build the compiled kernels ahead of first use (run by the Makefile's install step)."""


def main() -> None:
    print("fwm_rl: no compiled kernels to build")


if __name__ == "__main__":
    main()
