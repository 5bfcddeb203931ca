"""Watch a trained agent: one episode rendered frame by frame (the env draws the trajectory so far) into a GIF,
each frame captioned with the step, action, reward, return and goals."""
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
        while not done:
            action, state = agent.predict(obs[None], state=state, episode_start=episode_start, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(int(action[0]))
            step, total, done = step + 1, total + float(reward), terminated or truncated
            goals = int(info.get("goals_reached", goals))
            episode_start = np.zeros(1, dtype=bool)
            frames.append(env.render())
            captions.append(f"step {step}  action {int(action[0])}  reward {reward:+.2f}  return {total:.2f}  "
                            f"goals {goals}")
    return frames, captions


def write_gif(frames: list[np.ndarray], captions: list[str], path: Path, fps: float = 4.0) -> Path:
    """Frames with a caption strip under each, as a looping GIF written atomically."""
    from PIL import Image, ImageDraw

    images = []
    for frame, caption in zip(frames, captions):
        frame = np.asarray(frame, dtype=np.uint8)
        canvas = Image.new("RGB", (frame.shape[1], frame.shape[0] + CAPTION_HEIGHT), "white")
        canvas.paste(Image.fromarray(frame[..., :3]), (0, 0))
        ImageDraw.Draw(canvas).text((4, frame.shape[0] + 3), caption, fill="black")
        images.append(canvas)
    duration_ms = int(round(1000 / fps))
    atomic_write(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                                                  duration=duration_ms, loop=0))
    return Path(path)


def watch(path: str | Path, out: str | Path, layout: Optional[str] = None, split: Optional[str] = None,
          seed: int = 0, deterministic: bool = False, fps: float = 4.0, best: bool = False,
          device: str = "auto") -> dict[str, Any]:
    """Render one episode of the model of a run directory (or a model file in one) to the GIF ``out``: on the
    layout file ``layout`` if given, else on a layout of the held-out ``split`` chosen by ``seed``."""
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
    env_kwargs = heldout_env_kwargs(config.env_kwargs, split=split or config.eval_split or "test")
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
