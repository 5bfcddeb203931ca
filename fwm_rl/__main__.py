"""``python -m fwm_rl`` forwards to the ``fwm-rl`` command line."""
from fwm_rl.train.cli import main

if __name__ == "__main__":
    main()
