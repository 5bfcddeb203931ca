"""`fwm-rl probe`: ridge probes of a GridMaze agent's state, checked against a direct solve, on features that do and
do not encode a label, and on the recording of a tiny FWM run (its `seen` masks against a brute-force replay)."""
import json

import numpy as np
import pytest
import torch

from fwm_rl.train import rl
from fwm_rl.train.cli import main
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.errors import UserError
from fwm_rl.train.probe import folds, record, ridge_probe, run_probes


@pytest.mark.parametrize("n_samples, n_features", [(60, 8), (8, 60)], ids=["primal", "dual"])
def test_ridge_probe_predicts_as_a_direct_solve_of_the_normal_equations(n_samples, n_features):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_samples + 10, n_features, generator=gen, dtype=torch.float64) * 3 + 1
    y = torch.randn(n_samples + 10, 3, generator=gen, dtype=torch.float64)
    x_fit, y_fit, x_eval = x[:n_samples], y[:n_samples], x[n_samples:]
    predicted, penalty = ridge_probe(x_fit, y_fit, x_eval, x_eval, lambda p: 0.0, penalties=(0.3,))
    mean, std = x_fit.mean(0), x_fit.std(0)
    z_fit, z_eval = (x_fit - mean) / std, (x_eval - mean) / std
    weight = torch.linalg.solve(z_fit.T @ z_fit + 0.3 * n_samples * torch.eye(n_features),
                                z_fit.T @ (y_fit - y_fit.mean(0)))
    assert penalty == 0.3
    torch.testing.assert_close(predicted, z_eval @ weight + y_fit.mean(0), rtol=1e-7, atol=1e-7)


def test_ridge_probe_reads_a_label_the_features_encode_and_not_one_they_do_not():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (3000,), generator=gen)
    one_hot = torch.nn.functional.one_hot(labels, 10).double()
    encoded = one_hot @ torch.randn(10, 40, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        3000, 40, generator=gen, dtype=torch.float64)
    noise = torch.randn(3000, 40, generator=gen, dtype=torch.float64)
    fit, sel, ev = slice(0, 2000), slice(2000, 2500), slice(2500, 3000)
    for x, low, high in ((encoded, 0.95, 1.0), (noise, 0.0, 0.2)):
        predicted, _ = ridge_probe(x[fit], one_hot[fit], x[sel], x[ev],
                                   lambda p: (p.argmax(1) == labels[sel]).double().mean().item())
        assert low <= (predicted.argmax(1) == labels[ev]).double().mean().item() <= high


def test_folds_split_by_layout_half_quarter_quarter():
    layout = np.repeat(np.arange(40), 3)
    fold = folds(layout)
    for k, count in ((0, 20), (1, 10), (2, 10)):
        assert len(np.unique(layout[fold == k])) == count
    assert all(len(np.unique(fold[layout == i])) == 1 for i in range(40))


@pytest.fixture(scope="module")
def fwm_maze_run(tmp_path_factory):
    """A tiny GridMaze FWM run (5 x 5 cells, 80 steps of PPO; the 3 x 3 val split has only 2 layouts)."""
    config = TrainConfig(experiment="maze", env_id="FWM/GridMaze-v0",
                         env_kwargs={"size": 5, "obs": "both", "split": "train"}, eval_split="val", eval_episodes=4,
                         eval_freq=80, core="fwm", hidden_size=8, core_kwargs={"memory_size": 4}, n_envs=4,
                         n_steps=10, batch_size=20, n_epochs=1, total_timesteps=80, checkpoint_freq=80, threads=1)
    run_dir = tmp_path_factory.mktemp("runs") / "maze"
    rl.train(config, run_dir=run_dir, progress_bar=False, quiet=True)
    return run_dir


def test_record_keeps_each_state_tensor_and_the_walls_the_view_has_covered(fwm_maze_run):
    rec = record(fwm_maze_run, lifetimes=4, every=1)
    steps = len(rec.position) // 4  # one round of 4 envs, every step recorded: row t * 4 + i
    assert steps == 250 and set(rec.features) == {"h", "c", "F"} and rec.features["F"].shape == (1000, 64)
    assert rec.n_tiles == 121 and rec.width == 11 and len(rec.tiles) == rec.walls.shape[1] > 0
    rows, cols = np.divmod(rec.tiles, rec.width)
    assert np.all((rows + cols) % 2 == 1)  # the tiles that vary between cell mazes are doors
    tile_rows, tile_cols = np.divmod(np.arange(rec.n_tiles), rec.width)
    for env in range(4):
        path = rec.position[env::4]
        covered = np.zeros(rec.n_tiles, dtype=bool)
        for t, tile in enumerate(path):
            r, c = divmod(int(tile), rec.width)
            covered |= (np.abs(tile_rows - r) <= 1) & (np.abs(tile_cols - c) <= 1)
            np.testing.assert_array_equal(rec.seen[t * 4 + env], covered[rec.tiles])
        found = rec.found[env::4]
        assert not found[0] and np.all(np.diff(found.astype(int)) >= 0)  # once found, found for the lifetime
        assert len(np.unique(rec.goal[env::4])) == 1 and len(np.unique(rec.layout[env::4])) == 1


def test_probe_command_prints_every_target_for_every_state_tensor(fwm_maze_run, tmp_path, capsys):
    out = tmp_path / "probe.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", str(fwm_maze_run), "--lifetimes", "8", "--every", "3", "--json-file", str(out)])
    assert exit_info.value.code == 0
    table = capsys.readouterr().out
    assert "| target | probe on h % | probe on c % | probe on F % | majority % |" in table
    probes = json.loads(out.read_text())["probes"]
    assert {row["state"] for row in probes} == {"h", "c", "F"}
    assert {"position", "walls (seen)", "walls (unseen)"} <= {row["target"] for row in probes}
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["majority"] <= 1 for row in probes)


def test_probe_rejects_too_few_lifetimes_in_one_line(fwm_maze_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", str(fwm_maze_run), "--lifetimes", "2"])
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.strip() == "fwm-rl: error: --lifetimes must be >= 4 and --every >= 1, got 2 and 5"


def test_run_probes_skips_a_target_without_samples_and_needs_four_layouts(fwm_maze_run):
    rec = record(fwm_maze_run, lifetimes=4, every=10)
    rec.found[:] = False
    assert "goal (found)" not in {row["target"] for row in run_probes(rec)}
    rec.layout[:] = rec.layout[0]
    with pytest.raises(UserError, match="need >= 4 layouts; these hold 1"):
        run_probes(rec)
