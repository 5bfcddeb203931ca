"""Watch a trained agent: one episode rendered frame by frame (the env draws the trajectory so far) into a GIF,
each frame captioned with the step, action, reward, return, goals and (on tasks with goal visits) the steps of the
current visit and of the last finished one, so that shorter return trips after the first goal show."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write
from fwm_rl.train.runs import check_device_option, env_errors, find_model, heldout_env_kwargs, load_agent, seeded_rng

CAPTION_HEIGHT = 18


def play_episode(agent, env, seed: int = 0, deterministic: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Play one episode of a single env (render_mode="rgb_array") with ``agent.predict``; return its frames
    ([H, W, 3] uint8, the first before any step) and one caption per frame."""
    frames, captions = [], []
    with seeded_rng(seed):
        obs, _ = env.reset(seed=seed)
        frames.append(env.render())
        captions.append("step 0")
        state, episode_start, total, goals, done, step = None, np.ones(1, dtype=bool), 0.0, 0, False, 0
        visit_start, last_visit = 0, ""
        while not done:
            action, state = agent.predict(obs[None], state=state, episode_start=episode_start, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(int(action[0]))
            step, total, done = step + 1, total + float(reward), terminated or truncated
            goals = int(info.get("goals_reached", goals))
            episode_start = np.zeros(1, dtype=bool)
            frames.append(env.render())
            visit = ""
            if "goals_reached" in info:
                if "goal_visit" in info:
                    last_visit, visit_start = f"  visit {goals} took {step - visit_start}", step
                visit = f"  visit {goals + 1}: {step - visit_start} steps{last_visit}"
            captions.append(f"step {step}  action {int(action[0])}  reward {reward:+.2f}  return {total:.2f}  "
                            f"goals {goals}{visit}")
    return frames, captions


def write_gif(frames: list[np.ndarray], captions: list[str], path: Path, fps: float = 4.0) -> Path:
    """Frames with a caption strip under each, as a looping GIF written atomically. Frames of at most 254 colours
    (the envs' renders) are encoded with one shared palette, exactly and fast; others are quantised by Pillow."""
    from PIL import Image, ImageDraw

    rgb = [np.asarray(frame, dtype=np.uint8)[..., :3] for frame in frames]
    codes = [(f[..., 0].astype(np.uint32) << 16) | (f[..., 1].astype(np.uint32) << 8) | f[..., 2] for f in rgb]
    colours = np.unique(np.concatenate([np.unique(c) for c in codes]))
    images = []
    for frame, code, caption in zip(rgb, codes, captions):
        height, width = frame.shape[:2]
        if len(colours) <= 254:
            white, black = len(colours), len(colours) + 1
            canvas = np.full((height + CAPTION_HEIGHT, width), white, dtype=np.uint8)
            canvas[:height] = np.searchsorted(colours, code)
            image = Image.frombytes("P", (width, height + CAPTION_HEIGHT), canvas.tobytes())  # palette indices
            image.putpalette(np.concatenate([np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], 1).ravel(),
                                             [255, 255, 255, 0, 0, 0]]).astype(np.uint8).tolist())
        else:
            image, black = Image.new("RGB", (width, height + CAPTION_HEIGHT), "white"), "black"
            image.paste(Image.fromarray(frame), (0, 0))
        ImageDraw.Draw(image).text((4, height + 3), caption, fill=black)
        images.append(image)
    duration_ms = int(round(1000 / fps))
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=duration_ms, loop=0, optimize=False))
    return Path(path)


def watch(path: str | Path, out: str | Path, layout: Optional[str] = None, split: Optional[str] = None,
          seed: int = 0, deterministic: bool = False, fps: float = 4.0, best: bool = False,
          device: str = "auto", size: Optional[int] = None) -> dict[str, Any]:
    """Render one episode of the model of a run directory (or a model file in one) to the GIF ``out``: on the
    layout file ``layout`` if given, else on a layout of the held-out ``split`` chosen by ``seed``; ``size``
    plays mazes of that many cells per side instead of the run's (GridMaze; a curriculum run plays its largest)."""
    import gymnasium

    out = Path(out)
    if out.suffix.lower() != ".gif":
        raise UserError(f"--out must end in .gif, got {out}")
    if fps <= 0:
        raise UserError(f"--fps must be > 0, got {fps}")
    check_device_option(device)
    model_path, config = find_model(path, best=best)
    if config is None:
        raise UserError(f"no config.yaml beside {model_path}: watch a run directory made by `fwm-rl train`")
    if layout is not None and not Path(layout).exists():
        raise UserError(f"layout file not found: {layout}")
    env_kwargs = heldout_env_kwargs(config.env_id, config.env_kwargs, split=split or config.eval_split or "test",
                                    size=size)
    if layout is not None:
        env_kwargs = {key: value for key, value in env_kwargs.items() if key not in ("split", "layout_order")}
        env_kwargs["layout"] = layout
    agent = load_agent(model_path, config.algo, device=device)
    with env_errors(config.env_id, env_kwargs):
        env = gymnasium.make(config.env_id, render_mode="rgb_array", **env_kwargs)
    try:
        frames, captions = play_episode(agent, env, seed=seed, deterministic=deterministic)
    finally:
        env.close()
    write_gif(frames, captions, out, fps=fps)
    return {"out": str(out), "frames": len(frames), "caption": captions[-1]}
