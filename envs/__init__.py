"""fwm_rl.envs"""
