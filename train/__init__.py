"""fwm_rl.train"""
