"""PG, normalised momentum PG, N-PG-IGT and (N)-HARPG (ALGORITHMS.md §6).

Exactness on deterministic quadratics (the update rules of `ctrlrl.algos.npg` driven with exact
gradient and Hessian oracles), the Monte-Carlo estimators against the true objective of small
MDPs, and the algorithms' sampling and sample counting on real envs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_algo

from ctrlrl.algos.npg import (
    METHODS,
    NORMALISED,
    discounted_tails,
    harpg_point,
    igt_point,
    npg_update,
    schedule,
    surrogate_gradient,
    surrogate_hvp,
)
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import gaussian_log_prob


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is fastest, and two contend on this 2-core machine (conftest
    restores the count after each test)."""
    torch.set_num_threads(1)


# ---- deterministic quadratics ------------------------------------------------------------------
class Quadratic:
    """f(θ) = −½ (θ − θ*)ᵀ A (θ − θ*) + bᵀθ with A symmetric (not necessarily definite)."""

    def __init__(self, n: int = 7, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.a = m @ m.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
        self.opt = torch.randn(n, generator=g, dtype=torch.float64)
        self.b = 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
        self.theta0 = torch.randn(n, generator=g, dtype=torch.float64)
        self.hvp_points: list[torch.Tensor] = []

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        return -self.a @ (theta - self.opt) + self.b

    def hvp(self, point: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.hvp_points.append(point)
        return -self.a @ v


def run(method: str, f: Quadratic, iters: int = 12, eta0: float = 1.0, gamma0: float = 0.3,
        const_eta: bool = False, seed: int = 0):
    """Iterate `method` with exact oracles; yields (t, θ_t, θ_{t+1}, info) per iteration."""
    rng = np.random.default_rng(seed)
    theta = f.theta0.clone()
    theta_prev, d = theta.clone(), torch.zeros_like(theta)
    for t in range(iters):
        new, info = npg_update(method, theta, theta_prev, d, t, gamma0, eta0, f.grad, f.hvp,
                               float(rng.uniform()), const_eta)
        yield t, theta, new, info
        theta_prev, theta, d = theta, new, info.d


def test_igt_transport_is_exact_on_a_quadratic():
    f = Quadratic()
    g = torch.Generator().manual_seed(1)
    for eta in (1.0, 0.7, 0.3, 0.05):
        theta, prev = torch.randn(7, generator=g, dtype=torch.float64), f.theta0
        moved = (1 - eta) * f.grad(prev) + eta * f.grad(igt_point(theta, prev, eta))
        torch.testing.assert_close(moved, f.grad(theta), rtol=0, atol=1e-12)
    # so the IGT direction is the exact gradient at θ_t for all t, with the paper's schedules
    # (η_0 = 1: the momentum starts from the first gradient)
    for t, theta, _, info in run("npg-igt", f, iters=20):
        torch.testing.assert_close(info.d, f.grad(theta), rtol=1e-10, atol=1e-10)
        assert t == 0 or info.eta < 1


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 1.0])
def test_harpg_correction_is_exact_on_a_quadratic_for_any_q(q):
    f = Quadratic()
    g = torch.Generator().manual_seed(2)
    theta, prev = torch.randn(7, generator=g, dtype=torch.float64), f.theta0
    point = harpg_point(theta, prev, q)
    torch.testing.assert_close(point, q * theta + (1 - q) * prev)
    corrected = f.grad(prev) + f.hvp(point, theta - prev)
    torch.testing.assert_close(corrected, f.grad(theta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["n-harpg", "harpg"])
@pytest.mark.parametrize("eta0", [1.0, 0.5])
def test_harpg_direction_tracks_the_gradient_exactly(method, eta0):
    """d_t − ∇f(θ_t) = (1−η_t)(d_{t−1} + H(θ_t − θ_{t−1}) − ∇f(θ_t)) = (1−η_t)(d_{t−1} − ∇f(θ_{t−1}))
    for every random q: with η_0 = 1 the direction is the exact gradient at every iterate; with
    η_0 < 1 the start-up gap d_0 − ∇f(θ_0) = (η_0 − 1)∇f(θ_0) decays exactly as Π_{s≤t}(1−η_s)."""
    f = Quadratic(seed=3)
    gap0, prod = None, 1.0
    for t, theta, _, info in run(method, f, iters=15, eta0=eta0, gamma0=0.05):
        gap = info.d - f.grad(theta)
        if t == 0:
            gap0 = gap
            torch.testing.assert_close(gap0, (eta0 - 1) * f.grad(theta), rtol=0, atol=1e-12)
        else:
            prod *= 1 - info.eta
            torch.testing.assert_close(gap, prod * gap0, rtol=1e-8, atol=1e-10)
    # the Hessian was queried once per iteration (at t = 0 with a zero displacement)
    assert len(f.hvp_points) == 15


@pytest.mark.parametrize("method", METHODS)
def test_step_lengths(method):
    """‖θ_{t+1} − θ_t‖ = γ_t for the normalised methods, γ_t ‖d_t‖ for the others."""
    f = Quadratic(seed=4)
    for t, theta, new, info in run(method, f, iters=10, gamma0=0.2):
        gamma, _ = schedule(method, t, 0.2, 1.0)
        assert info.gamma == gamma
        length = torch.linalg.vector_norm(new - theta).item()
        want = gamma if NORMALISED[method] else gamma * torch.linalg.vector_norm(info.d).item()
        assert math.isclose(length, want, rel_tol=1e-12), (t, length, want)


@pytest.mark.parametrize("method", ["npg-momentum", "npg-igt", "n-harpg"])
def test_eta_one_reduces_to_normalised_pg(method):
    """With η_t ≡ 1 there is no memory, no extrapolation and no correction."""
    f = Quadratic(seed=5)
    rng_grads = torch.Generator().manual_seed(6)
    noise = [0.5 * torch.randn(7, generator=rng_grads, dtype=torch.float64) for _ in range(10)]
    calls = iter(noise)

    def noisy(theta):  # a stochastic oracle: exactness must not rely on exact gradients
        return f.grad(theta) + next(calls)

    theta = f.theta0.clone()
    theta_prev, d = theta.clone(), torch.zeros_like(theta)
    ref = f.theta0.clone()
    for t in range(10):
        new, info = npg_update(method, theta, theta_prev, d, t, 0.3, 1.0, noisy, f.hvp, 0.37,
                               const_eta=True)
        assert info.eta == 1.0
        g = f.grad(ref) + noise[t]
        ref = ref + schedule(method, t, 0.3, 1.0)[0] * g / torch.linalg.vector_norm(g)
        torch.testing.assert_close(new, ref, rtol=0, atol=1e-12)
        theta_prev, theta, d = theta, new, info.d


def test_schedules():
    r = 2 / 10  # t = 8
    assert schedule("pg", 8, 0.3, 1.0) == pytest.approx((0.3 * r ** (2 / 3), 1.0))
    assert schedule("npg-momentum", 8, 0.3, 1.0) == pytest.approx((0.3 * r, r ** (2 / 3)))
    assert schedule("npg-igt", 8, 0.3, 1.0) == pytest.approx((0.3 * r, r ** 0.8))
    assert schedule("n-harpg", 8, 0.3, 1.0) == pytest.approx((0.3 * r, r))
    assert schedule("harpg", 8, 0.3, 1.0) == pytest.approx((0.3 * r ** 0.5, r))
    for method in METHODS:
        assert schedule(method, 0, 0.3, 1.0) == (0.3, 1.0)
        assert schedule(method, 0, 0.3, 5.0)[1] == 1.0  # η capped at 1
    with pytest.raises(UserError, match="not known"):
        npg_update("sgd", torch.zeros(2), torch.zeros(2), torch.zeros(2), 0, 0.1, 1.0,
                   lambda x: x)


# ---- the estimators against the true objective ------------------------------------------------
def test_discounted_tails():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    traj = torch.tensor([0, 0, 0, 1, 2, 2])
    t = torch.tensor([0, 1, 2, 0, 0, 1])
    g = 0.5
    want = torch.tensor([1 + g * 2 + g * g * 3, g * 2 + g * g * 3, g * g * 3, 4.0, 5 + g * 6, g * 6],
                        dtype=torch.float64)
    torch.testing.assert_close(discounted_tails(rewards, traj, t, g), want)


class TwoStepMDP:
    """Softmax-linear policy over 3 actions; step 1 reward c[a1]; action 2 ends the episode at once,
    otherwise a second step (which observes a1) earns R[a1, a2]. Trajectories have length 1 or 2.
    The exact objective J(θ) enumerates the 9 outcomes, so ∇J and ∇²J·v are known."""

    n_act, obs_dim, gamma = 3, 5, 0.9

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.c = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
        self.r = torch.randn(3, 3, generator=g, dtype=torch.float64)
        self.theta = 0.7 * torch.randn(3 * 5 + 3, generator=g, dtype=torch.float64)

    def obs(self, step: int, a1: torch.Tensor | None, n: int) -> torch.Tensor:
        o = torch.zeros(n, self.obs_dim, dtype=torch.float64)
        o[:, step] = 1.0
        if a1 is not None:
            o[torch.arange(n), 2 + a1] = 1.0
        return o

    @staticmethod
    def log_policy(theta: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        w, b = theta[:15].view(3, 5), theta[15:]
        return torch.log_softmax(obs @ w.T + b, -1)

    def objective(self, theta: torch.Tensor) -> torch.Tensor:
        p1 = self.log_policy(theta, self.obs(0, None, 1))[0].exp()
        j = (p1 * self.c).sum()
        for a1 in range(2):  # a1 = 2 ends the episode
            p2 = self.log_policy(theta, self.obs(1, torch.tensor([a1]), 1))[0].exp()
            j = j + self.gamma * p1[a1] * (p2 * self.r[a1]).sum()
        return j

    def sample(self, n: int, seed: int):
        """n trajectories as flat steps (obs, actions, rewards, traj, t) in trajectory order."""
        g = torch.Generator().manual_seed(seed)
        o1 = self.obs(0, None, n)
        a1 = torch.multinomial(self.log_policy(self.theta, o1).exp(), 1, generator=g).squeeze(1)
        o2 = self.obs(1, a1.clamp(max=1), n)
        a2 = torch.multinomial(self.log_policy(self.theta, o2).exp(), 1, generator=g).squeeze(1)
        two = a1 != 2
        # interleave: step 1 of trajectory i, then its step 2 if it has one
        obs = torch.stack([o1, o2], 1).reshape(2 * n, -1)
        act = torch.stack([a1, a2], 1).reshape(-1)
        rew = torch.stack([self.c[a1], self.r[a1.clamp(max=1), a2]], 1).reshape(-1)
        keep = torch.stack([torch.ones_like(two), two], 1).reshape(-1)
        traj = torch.arange(n).repeat_interleave(2)
        t = torch.tensor([0, 1]).repeat(n)
        return obs[keep], act[keep], rew[keep], traj[keep], t[keep]


def _mc_estimates(mdp: TwoStepMDP, v: torch.Tensor, n: int, chunks: int, baseline: bool):
    grads, hvps = [], []
    for k in range(chunks):
        obs, act, rew, traj, t = mdp.sample(n, seed=k)
        psi = discounted_tails(rew, traj, t, mdp.gamma)
        if baseline:  # any fixed function of (state, time) keeps both estimators unbiased
            psi = psi - mdp.gamma ** t.double() * (0.4 + 0.3 * obs[:, 2] - 0.2 * t.double())

        def logp_fn(theta, obs=obs, act=act):
            return mdp.log_policy(theta, obs).gather(1, act[:, None]).squeeze(1)

        grads.append(surrogate_gradient(logp_fn, mdp.theta, psi, n))
        hvps.append(surrogate_hvp(logp_fn, mdp.theta, psi, traj, n, v))
    return torch.stack(grads), torch.stack(hvps)


@pytest.mark.parametrize("baseline", [False, True])
def test_monte_carlo_hessian_vector_product_matches_finite_differences(baseline):
    """Stated tolerance: every coordinate of the Monte-Carlo B·v (and ĝ) within 4 standard errors
    of the finite-difference ∇²J·v of the exact objective (central differences, ε = 1e-4), and the
    whole vector within 5% relative error (320k trajectories)."""
    mdp = TwoStepMDP()
    v = torch.randn(18, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    def true_grad(theta):
        theta = theta.detach().requires_grad_(True)
        return torch.autograd.grad(mdp.objective(theta), theta)[0]

    eps = 1e-4
    fd_hvp = (true_grad(mdp.theta + eps * v) - true_grad(mdp.theta - eps * v)) / (2 * eps)
    grads, hvps = _mc_estimates(mdp, v, n=20_000, chunks=16, baseline=baseline)
    for est, truth in ((grads, true_grad(mdp.theta)), (hvps, fd_hvp)):
        mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
        assert torch.all((mean - truth).abs() <= 4 * se + 1e-6), (mean, truth, se)
        rel = torch.linalg.vector_norm(mean - truth) / torch.linalg.vector_norm(truth)
        assert rel < 0.05, rel
    # the score term matters: the surrogate's Hessian alone is far from ∇²J·v
    obs, act, rew, traj, t = mdp.sample(20_000, seed=99)
    psi = discounted_tails(rew, traj, t, mdp.gamma)

    def logp_fn(theta):
        return mdp.log_policy(theta, obs).gather(1, act[:, None]).squeeze(1)

    theta = mdp.theta.clone().requires_grad_(True)
    g = torch.autograd.grad((psi * logp_fn(theta)).sum() / 20_000, theta, create_graph=True)[0]
    hess_only = torch.autograd.grad(g @ v, theta)[0]
    assert torch.linalg.vector_norm(hess_only - fd_hvp) > 0.3 * torch.linalg.vector_norm(fd_hvp)


def test_gaussian_lqr_hessian_vector_product():
    """One-step LQR: a ~ N(w·s, σ²), r = −(a − k·s)², so J(w, log σ) = −E_s[(w·s − k·s)²] − σ².
    The Monte-Carlo B·v matches the exact ∇²J·v within 5% (800k draws, 4 standard errors)."""
    g = torch.Generator().manual_seed(9)
    n_states, dim = 16, 3
    states = torch.randn(n_states, dim, generator=g, dtype=torch.float64)
    k = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    theta0 = torch.tensor([0.1, 0.2, -0.3, math.log(0.8)], dtype=torch.float64)
    v = torch.tensor([0.3, -0.5, 0.2, 0.7], dtype=torch.float64)

    def objective(theta):
        w, log_std = theta[:3], theta[3]
        return -((states @ w - states @ k) ** 2).mean() - torch.exp(2 * log_std)

    th = theta0.clone().requires_grad_(True)
    gj = torch.autograd.grad(objective(th), th, create_graph=True)[0]
    exact = torch.autograd.grad(gj @ v, th)[0]
    hvps = []
    for chunk in range(16):
        gc = torch.Generator().manual_seed(100 + chunk)
        n = 50_000
        s = states[torch.randint(n_states, (n,), generator=gc)]
        mean = s @ theta0[:3]
        a = mean + theta0[3].exp() * torch.randn(n, generator=gc, dtype=torch.float64)
        rew = -(a - s @ k) ** 2
        traj, t = torch.arange(n), torch.zeros(n, dtype=torch.int64)
        psi = discounted_tails(rew, traj, t, 0.99) + (states @ (theta0[:3] - k)).pow(2).mean() \
            + theta0[3].exp() ** 2  # a constant baseline

        def logp_fn(theta, s=s, a=a):
            return gaussian_log_prob(a[:, None], (s @ theta[:3])[:, None], theta[3].expand(1))

        hvps.append(surrogate_hvp(logp_fn, theta0, psi, traj, n, v))
    est = torch.stack(hvps)
    mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
    assert torch.all((mean - exact).abs() <= 4 * se + 1e-6), (mean, exact, se)
    assert torch.linalg.vector_norm(mean - exact) < 0.05 * torch.linalg.vector_norm(exact)


# ---- the algorithms on real envs ---------------------------------------------------------------
@pytest.mark.parametrize("algo", METHODS)
def test_iterations_sample_whole_trajectories_and_count_every_step(algo, tmp_path):
    a = make_algo(algo, tmp_path / "run", env="CartPole-v1", total_steps=600, batch_steps=100,
                  hess_batch_steps=32, horizon=0, hidden_sizes=[16, 16])
    seen: list[int] = []
    collect = a.collect

    def spy(point, min_steps):
        batch = collect(point, min_steps)
        assert batch.n_traj == int(batch.traj.max()) + 1 and len(batch.t) >= min_steps
        assert int((batch.t == 0).sum()) == batch.n_traj  # every trajectory starts at a reset
        seen.append(len(batch.t))
        return batch

    a.collect = spy
    a.learn()
    assert a.step == sum(seen) >= 600
    assert len(seen) == a.n_updates * (2 if algo in ("n-harpg", "harpg") else 1)
    assert np.isfinite(list(a.metrics.values())).all()
    a.close()


def test_continuous_horizon_cap_and_normalised_step(tmp_path):
    a = make_algo("n-harpg", tmp_path / "run", env="Pendulum-v1", total_steps=300,
                  batch_steps=100, horizon=50, gamma0=0.05)
    lengths = []
    collect = a.collect

    def spy(point, min_steps):
        batch = collect(point, min_steps)
        lengths.extend(torch.bincount(batch.traj).tolist())
        return batch

    a.collect = spy
    before = a.flat.param.detach().clone()
    a.train_iteration()
    assert torch.linalg.vector_norm(a.flat.param.detach() - before).item() == pytest.approx(0.05)
    a.learn()
    assert set(lengths) == {50}
    assert a.metrics["update_norm"] == pytest.approx(a.metrics["step_size"], rel=1e-5)
    assert "std" in a.metrics and "correction_norm" in a.metrics
    a.close()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(UserError, match="n_envs=1"):
        make_algo("npg-igt", tmp_path / "a", n_envs=2)
    with pytest.raises(UserError, match="gamma0"):
        make_algo("npg-igt", tmp_path / "b", gamma0=0)
    with pytest.raises(UserError, match="baseline"):
        make_algo("npg-igt", tmp_path / "c", baseline="critic")
