import fwm_rl


def test_subpackages_install_under_fwm_rl():
    import fwm_rl.agents
    import fwm_rl.envs
    import fwm_rl.train

    assert fwm_rl.envs.__name__ == "fwm_rl.envs"
