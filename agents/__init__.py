"""fwm_rl.agents"""
