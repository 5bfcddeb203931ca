"""The ``fwm-rl`` command line."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fwm-rl", description="Fast Weight Memory agents for meta-RL.")
    parser.parse_args(argv)


if __name__ == "__main__":
    main()
