"""``python -m fwm_rl.zoo``: forwards to :mod:`fwm_rl.agents.zoo` (rl-zoo3 train/enjoy with our algorithms)."""
import runpy

if __name__ == "__main__":
    runpy.run_module("fwm_rl.agents.zoo", run_name="__main__", alter_sys=True)
