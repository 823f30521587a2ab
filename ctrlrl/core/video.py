"""Videos of a policy: deterministic episodes rendered offscreen and written as mp4.

Frames come from the env's own `render_mode="rgb_array"`: MuJoCo envs render through an offscreen
OpenGL context (EGL on a machine without a display), classic-control envs through pygame. imageio
with its bundled ffmpeg encodes them (`pip install 'ctrlrl[video]'`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator

from ctrlrl.core.errors import UserError

INSTALL = "pip install 'ctrlrl[video]'"


def default_offscreen_gl() -> None:
    """Choose EGL for MuJoCo's offscreen rendering on a Linux machine without a display, where its
    first choice (GLFW) needs a window. A MUJOCO_GL set by the user is kept.

    Set when a video starts, not on `import ctrlrl`: mujoco reads MUJOCO_GL on import and loads
    that OpenGL backend then, so a default of egl on a machine without EGL could break every
    command. gymnasium's MuJoCo renderer reads it again when its first frame is rendered (mujoco
    imported with MUJOCO_GL unset loads no OpenGL), so setting it here, later, takes effect."""
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if sys.platform.startswith("linux") and headless:
        os.environ.setdefault("MUJOCO_GL", "egl")


def record_video(act: Callable[[np.ndarray], Any], env_id: str, path: str | Path, episodes: int = 1,
                 seed: int = 0) -> list[tuple[float, int]]:
    """Render `episodes` episodes of `act` (a raw observation → the env's action) on `env_id`,
    seeded seed, seed+1, … (the seeds evaluation gives its episodes), one after the other into the
    mp4 `path`: each episode's reset frame, then one frame per step. Returns each episode's
    (return, length). The file appears only once complete."""
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"--video {path}: videos are written as mp4; name the file "
                        f"{out.with_suffix('.mp4').name}")
    if episodes < 1:
        raise UserError(f"--episodes {episodes}: record at least one episode")
    imageio = _mp4_encoder()
    default_offscreen_gl()
    env = _rendering_env(env_id)
    partial = out.with_name(f".{out.name}.partial.mp4")
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            writer = imageio.get_writer(partial, fps=env.metadata.get("render_fps") or 30,
                                        macro_block_size=2, ffmpeg_log_level="error")
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or exc}; choose another --video "
                            "path") from None
        results = []
        with writer:
            for i in range(episodes):
                obs, _ = env.reset(seed=seed + i)
                writer.append_data(env.render())
                total, length, done = 0.0, 0, False
                while not done:
                    obs, reward, terminated, truncated, _ = env.step(act(obs))
                    writer.append_data(env.render())
                    total, length, done = total + float(reward), length + 1, terminated or truncated
                results.append((total, length))
        os.replace(partial, out)
    finally:
        env.close()
        partial.unlink(missing_ok=True)
    return results


def _mp4_encoder() -> Any:
    """imageio's v2 API, once it is known to find an ffmpeg binary."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise UserError(f"writing mp4 needs imageio and imageio-ffmpeg ({str(exc).splitlines()[0]}); "
                        f"{INSTALL}") from None
    return imageio


def _rendering_env(env_id: str) -> gym.Env:
    """`env_id` made with render_mode="rgb_array", reset and rendered once: a renderer that
    cannot start (no EGL, pygame missing) fails here, before any file is written."""
    from ctrlrl.core.envs import check_env_id, is_continuing  # torch: not on `import ctrlrl`'s path

    check_env_id(env_id)
    spec = gym.spec(env_id)
    creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    modes = getattr(creator, "metadata", {}).get("render_modes", [])
    if "rgb_array" not in modes:
        raise UserError(f"{env_id} does not render images (its render modes: "
                        f"{', '.join(modes) or 'none'}); a video needs an env with "
                        "render_mode='rgb_array', such as the MuJoCo and classic-control envs")
    if is_continuing(env_id):
        raise UserError(f"{env_id} is a continuing task without a time limit: its episodes never "
                        "end, so there is no episode to record")
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        with warnings.catch_warnings():  # a backend that cannot start warns before it fails
            warnings.simplefilter("ignore")
            env.reset(seed=0)
            frame = env.render()
    except gym.error.DependencyNotInstalled as exc:
        env.close()
        raise UserError(f"{env_id} cannot render here: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # whatever the OpenGL stack raises when no context can be opened
        env.close()
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
        if not hasattr(env.unwrapped, "mujoco_renderer"):
            raise UserError(f"{env_id} cannot render here ({detail})") from None
        raise UserError(f"{env_id} cannot render offscreen with MUJOCO_GL="
                        f"{os.environ.get('MUJOCO_GL', '(unset)')} ({detail}); without a display "
                        "MuJoCo needs EGL (libegl1, MUJOCO_GL=egl) or OSMesa (libosmesa6, "
                        "MUJOCO_GL=osmesa)") from None
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        env.close()
        raise UserError(f"{env_id} rendered {type(frame).__name__}, not an RGB image; a video needs "
                        "an env whose render() returns frames in render_mode='rgb_array'")
    return env
