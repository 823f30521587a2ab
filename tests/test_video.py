"""`ctrlrl eval RUN --video out.mp4`: deterministic episodes rendered offscreen into a real mp4,
and one line naming the fix wherever rendering cannot work."""

from __future__ import annotations

import os
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_one_line_error, make_algo, run_cli

from ctrlrl import cli
from ctrlrl.core import video
from ctrlrl.core.errors import UserError


def _frames(path) -> np.ndarray:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:  # ffmpeg does not know the count up front: iterate
        return np.stack([frame for frame in reader])


def _run(tmp_path, env: str):
    run_dir = tmp_path / "run"
    algo = make_algo("ppo", run_dir, env=env, total_steps=64)
    algo.setup_run_dir()
    algo.learn()
    return run_dir, algo


@pytest.fixture(scope="module")
def mujoco_renders() -> None:
    """Skip where MuJoCo cannot render offscreen at all (no EGL/OSMesa): plain gymnasium, with
    the default ctrlrl gives MUJOCO_GL."""
    video.default_offscreen_gl()
    env = gym.make("InvertedPendulum-v5", render_mode="rgb_array")
    try:
        env.reset(seed=0)
        env.render()
    except Exception as exc:
        pytest.skip(f"MuJoCo cannot render offscreen here ({type(exc).__name__}: {exc})")
    finally:
        env.close()


def test_video_of_a_mujoco_run(mujoco_renders, tmp_path, monkeypatch):
    run_dir, algo = _run(tmp_path, "InvertedPendulum-v5")
    out = tmp_path / "talk" / "pendulum.mp4"
    # a newcomer's headless machine: nothing set, so ctrlrl picks the offscreen backend itself
    for key in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(key, raising=False)
    proc = run_cli("eval", str(run_dir), "--video", str(out), "--episodes", "2")
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    assert f"wrote {out}: 2 deterministic episode(s)" in printed

    frames = _frames(out)
    # the same episodes as evaluation's first two (seeds run seed + 10000, + 10001)
    returns = algo.evaluate(2)
    algo.close()
    lengths = [int(n) for n in printed.rsplit(" over ", 1)[1].split(" steps")[0].split(", ")]
    assert f"return {returns[0]:.2f}, {returns[1]:.2f}" in printed
    assert len(frames) == sum(lengths) + 2  # each episode: its reset frame, one frame per step
    assert frames.shape[1:] == (480, 480, 3)
    assert frames[0].std() > 0  # an image, not a blank
    assert np.abs(frames[lengths[0]].astype(int) - frames[0]).mean() > 0  # the pendulum moved
    assert not list(out.parent.glob(".*partial*"))


def test_video_defaults_to_one_episode(mujoco_renders, tmp_path, capsys):
    run_dir, algo = _run(tmp_path, "InvertedPendulum-v5")
    algo.close()
    out = tmp_path / "one.mp4"
    assert cli.main(["eval", str(run_dir), "--video", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 deterministic episode(s)" in printed
    length = int(printed.rsplit(" over ", 1)[1].split(" steps")[0])
    assert len(_frames(out)) == length + 1


def test_an_interrupted_video_leaves_no_file(mujoco_renders, tmp_path):
    steps = []

    def act(obs):
        steps.append(obs)
        if len(steps) == 5:
            raise KeyboardInterrupt
        return np.zeros(1, np.float32)

    out = tmp_path / "cut.mp4"
    with pytest.raises(KeyboardInterrupt):
        video.record_video(act, "InvertedPendulum-v5", out)
    assert list(tmp_path.iterdir()) == []


def test_mujoco_without_an_offscreen_backend_is_one_line(tmp_path):
    run_dir, algo = _run(tmp_path, "InvertedPendulum-v5")
    algo.close()
    # GLFW needs a display: with none, rendering cannot start (a real process: GLFW's failed
    # start must not touch this test process's OpenGL state)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = run_cli("eval", str(run_dir), "--video", str(tmp_path / "x.mp4"),
                   env={**env, "MUJOCO_GL": "glfw", "DISPLAY": ""})
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "InvertedPendulum-v5", "MUJOCO_GL=glfw", "MUJOCO_GL=egl")
    assert not (tmp_path / "x.mp4").exists()


def test_classic_control_without_pygame_is_one_line(tmp_path, capsys, monkeypatch):
    run_dir, algo = _run(tmp_path, "CartPole-v1")
    algo.close()
    monkeypatch.setitem(sys.modules, "pygame", None)  # as on a machine without pygame
    assert cli.main(["eval", str(run_dir), "--video", str(tmp_path / "c.mp4")]) == 2
    assert_one_line_error(capsys.readouterr().err, "CartPole-v1", "gymnasium[classic-control]")
    assert not (tmp_path / "c.mp4").exists()


def test_video_of_a_classic_control_run(tmp_path, capsys):
    pytest.importorskip("pygame", reason="classic-control envs render through pygame")
    run_dir, algo = _run(tmp_path, "CartPole-v1")
    algo.close()
    out = tmp_path / "cartpole.mp4"
    assert cli.main(["eval", str(run_dir), "--video", str(out)]) == 0
    length = int(capsys.readouterr().out.rsplit(" over ", 1)[1].split(" steps")[0])
    frames = _frames(out)
    assert len(frames) == length + 1 and frames[0].std() > 0


def test_without_imageio_ffmpeg_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(UserError, match=r"imageio-ffmpeg .*pip install 'ctrlrl\[video\]'"):
        video.record_video(lambda obs: 0, "CartPole-v1", tmp_path / "x.mp4")


@pytest.mark.parametrize(("env_id", "path", "needle"), [
    ("ctrlrl/Tomato-v0", "x.mp4", "render_mode='rgb_array'"),  # text rendering only
    ("ctrlrl/RiverSwim-v0", "x.mp4", "render modes: none"),
    ("NoSuchEnv-v0", "x.mp4", "NoSuchEnv-v0"),
    ("CartPole-v1", "x.gif", "x.mp4"),
])
def test_what_cannot_be_recorded(env_id, path, needle, tmp_path):
    with pytest.raises(UserError) as err:
        video.record_video(lambda obs: 0, env_id, tmp_path / path)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_video_flag_with_the_heuristic_is_refused(capsys):
    assert cli.main(["eval", "--policy", "heuristic", "--env", "ctrlrl/LotSizing-15x5-v0",
                     "--video", "x.mp4"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--video", "--policy heuristic")


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "egl"),  # headless: EGL
    ({"DISPLAY": ":0"}, None),  # a display: MuJoCo's own default
    ({"MUJOCO_GL": "osmesa"}, "osmesa"),  # the user's choice stands
])
def test_offscreen_default(environ, expected, monkeypatch):
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "MUJOCO_GL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "platform", "linux")
    video.default_offscreen_gl()
    assert os.environ.get("MUJOCO_GL") == expected
