"""PG, normalised momentum PG, N-PG-IGT and (N)-HARPG (Fatkhullin et al., ICML 2023).

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
        const_eta: bool = False, seed: int = 0, first: str = "gradient"):
    """Iterate `method` with exact oracles; yields (t, θ_t, θ_{t+1}, info) per iteration."""
    rng = np.random.default_rng(seed)
    theta = f.theta0.clone()
    theta_prev, d = theta.clone(), torch.zeros_like(theta)
    for t in range(iters):
        new, info = npg_update(method, theta, theta_prev, d, t, gamma0, eta0, f.grad, f.hvp,
                               float(rng.uniform()), const_eta, first)
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
@pytest.mark.parametrize("first", ["gradient", "scaled"])
def test_harpg_direction_tracks_the_gradient_exactly(method, eta0, first):
    """d_t − ∇f(θ_t) = (1−η_t)(d_{t−1} + H(θ_t − θ_{t−1}) − ∇f(θ_t)) = (1−η_t)(d_{t−1} − ∇f(θ_{t−1}))
    for every random q: when d_0 = ∇f(θ_0) (the first gradient, or η_0 = 1) the direction is the
    exact gradient at every iterate; with d_{−1} = 0 and η_0 < 1 the start-up gap
    d_0 − ∇f(θ_0) = (η_0 − 1)∇f(θ_0) decays exactly as Π_{1≤s≤t}(1−η_s)."""
    f = Quadratic(seed=3)
    gap0, prod = None, 1.0
    for t, theta, _, info in run(method, f, iters=15, eta0=eta0, gamma0=0.05, first=first):
        gap = info.d - f.grad(theta)
        if t == 0:
            gap0 = gap
            start = eta0 - 1 if first == "scaled" else 0.0
            torch.testing.assert_close(gap0, start * f.grad(theta), rtol=0, atol=1e-12)
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
                  horizon=0, hidden_sizes=[16, 16])
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


# ---- what train_iteration really does: schedules, carried state, sampling points ---------------
def _small(algo: str, tmp_path, **extra):
    """A fast Pendulum learner: 20-step trajectories, 2 per gradient batch, 1 per Hessian batch."""
    settings = {"batch_steps": 40, "horizon": 20, "hidden_sizes": [8, 8], "gamma0": 0.05,
                **({"hess_batch_steps": 20} if algo in ("harpg", "n-harpg") else {}), **extra}
    return make_algo(algo, tmp_path / algo, env="Pendulum-v1", total_steps=10**6, **settings)


class Spy:
    """Records what `train_iteration` feeds the estimators and the sampler, returning their real
    results: `collects` (point, min_steps, batch), `grads` (point, g), `hvps` (point, v, Bv)."""

    def __init__(self, algo, monkeypatch):
        import ctrlrl.algos.npg as npg

        self.collects, self.grads, self.hvps = [], [], []
        collect, grad, hvp = algo.collect, npg.surrogate_gradient, npg.surrogate_hvp

        def spy_collect(point, min_steps):
            batch = collect(point, min_steps)
            self.collects.append((point.clone(), min_steps, batch))
            return batch

        def spy_grad(logp_fn, theta, psi, n_traj):
            g = grad(logp_fn, theta, psi, n_traj)
            self.grads.append((theta.detach().clone(), g))
            return g

        def spy_hvp(logp_fn, theta, psi, traj, n_traj, v):
            out = hvp(logp_fn, theta, psi, traj, n_traj, v)
            self.hvps.append((theta.detach().clone(), v.clone(), out))
            return out

        algo.collect = spy_collect
        monkeypatch.setattr(npg, "surrogate_gradient", spy_grad)
        monkeypatch.setattr(npg, "surrogate_hvp", spy_hvp)


def _iterate(algo, n: int):
    """Runs n iterations; per iteration (θ_t, θ_{t+1}, d_{t−1}, d_t, θ_{t−1} as carried, metrics)."""
    out = []
    for _ in range(n):
        theta, prev, d_prev = (algo.flat.param.detach().clone(), algo.theta_prev.clone(),
                               algo.d.clone())
        algo.train_iteration()
        out.append((theta, algo.flat.param.detach().clone(), d_prev, algo.d.clone(), prev,
                    dict(algo.metrics)))
    return out


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2)


# γ_t and η_t of the reference's optimisers, by hand; t = 0 is the first step (iteration −1 + 1)
REFERENCE_SCHEDULES = {
    "pg": lambda t, g0, e0: (g0 * (2 / (t + 2)) ** (2 / 3), 1.0),
    "npg-momentum": lambda t, g0, e0: (g0 * 2 / (t + 2), e0 * (2 / (t + 2)) ** (2 / 3)),
    "npg-igt": lambda t, g0, e0: (g0 * 2 / (t + 2), e0 * (2 / (t + 2)) ** 0.8),
    "n-harpg": lambda t, g0, e0: (g0 * 2 / (t + 2), e0 * 2 / (t + 2)),
    "harpg": lambda t, g0, e0: (g0 * (2 / (t + 2)) ** 0.5, e0 * 2 / (t + 2)),
}


@pytest.mark.parametrize("method", METHODS)
def test_schedules_start_where_the_reference_starts(method, tmp_path):
    """The first step uses γ_0 and η_0 (capped at 1), the second γ_1 and η_1, … — in the pure
    schedule and in what train_iteration logs and uses."""
    for t in range(4):
        assert schedule(method, t, 0.3, 0.9) == pytest.approx(REFERENCE_SCHEDULES[method](t, 0.3, 0.9))
    a = _small(method, tmp_path, gamma0=0.02, **({} if method == "pg" else {"eta0": 0.9}))
    for t, (theta, new, *_, metrics) in enumerate(_iterate(a, 3)):
        gamma, eta = REFERENCE_SCHEDULES[method](t, 0.02, 0.9)
        assert metrics["step_size"] == pytest.approx(gamma, rel=1e-12)
        assert metrics["momentum"] == pytest.approx(eta, rel=1e-12)
        if NORMALISED[method]:
            assert torch.linalg.vector_norm(new - theta).item() == pytest.approx(gamma, rel=1e-4)
    a.close()


def _features(obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    o = obs.double().clamp(-10, 10)
    k = t.double()[:, None] / 100
    return torch.cat([o, o * o, k, k * k, k ** 3, torch.ones_like(k)], 1)


def test_pg_step_is_gamma_times_the_per_trajectory_discounted_gradient(tmp_path, monkeypatch):
    """θ_{t+1} − θ_t = γ_t ĝ with ĝ = (1/N) Σ_i Σ_k ∇log π(a_k|s_k) γ^k (G_k − b(s_k, k)), recomputed
    here from the batch pg collected; b is the ridge fit on the previous batch's (s, k) → G."""
    import copy

    a = _small("pg", tmp_path, gamma0=0.003)
    spy = Spy(a, monkeypatch)
    gamma = a.cfg.gamma
    w_fit = torch.zeros(2 * a.obs_dim + 4, dtype=torch.float64)
    for t in range(2):
        policy = copy.deepcopy(a.policy)
        theta = a.flat.param.detach().clone()
        a.train_iteration()
        (point, min_steps, b), = spy.collects[t:]
        _close(point, theta, 0)
        assert min_steps == 40
        rew, k = b.rewards.double(), b.t.double()
        ret = torch.zeros_like(rew)  # G_k = Σ_{t'≥k} γ^{t'−k} r_{t'} within its trajectory
        for i in reversed(range(len(rew))):
            last = i + 1 == len(rew) or b.traj[i + 1] != b.traj[i]
            ret[i] = rew[i] + (0.0 if last else gamma * ret[i + 1])
        psi = gamma ** k * (ret - _features(b.obs, b.t) @ w_fit)
        params = list(policy.parameters())
        logp = policy.log_prob_entropy(b.obs, b.actions)[0]
        grads = torch.autograd.grad((psi.float() * logp).sum() / b.n_traj, params)
        g = torch.cat([x.reshape(-1) for x in grads])
        step = REFERENCE_SCHEDULES["pg"](t, 0.003, 1.0)[0]
        _close(a.flat.param.detach() - theta, step * g)
        # the baseline for the next batch: ridge regression of this batch's G on its features
        x = _features(b.obs, b.t)
        w_fit = torch.linalg.solve(x.T @ x + 1e-5 * torch.eye(x.shape[1], dtype=x.dtype),
                                   x.T @ ret)
        torch.testing.assert_close(a.baseline_w, w_fit, rtol=1e-6, atol=1e-8)
    assert w_fit.abs().sum() > 0
    a.close()


@pytest.mark.parametrize("eta0", [1.0, 0.6])
def test_npg_igt_samples_at_the_extrapolation_of_the_carried_previous_iterate(eta0, tmp_path,
                                                                          monkeypatch):
    """θ̃_t = θ_t + ((1−η_t)/η_t)(θ_t − θ_{t−1}) with θ_{t−1} the last iterate (θ̃_0 = θ_0);
    d_t = (1−η_t) d_{t−1} + η_t ĝ(θ̃_t) with d_0 = ĝ(θ_0); θ_{t+1} = θ_t + γ_t d_t/‖d_t‖."""
    a = _small("npg-igt", tmp_path, gamma0=0.1, eta0=eta0)
    spy = Spy(a, monkeypatch)
    steps = _iterate(a, 4)
    for t, (theta, new, d_prev, d, prev, _) in enumerate(steps):
        gamma, eta = REFERENCE_SCHEDULES["npg-igt"](t, 0.1, eta0)
        if t == 0:
            _close(prev, theta, 0)
            want_point = theta
        else:
            _close(prev, steps[t - 1][0], 0)  # θ_{t−1} carried between iterations
            want_point = theta + (1 - eta) / eta * (theta - prev)
            assert torch.linalg.vector_norm(want_point - theta) > 1e-3
        point, min_steps, _ = spy.collects[t]
        assert min_steps == 40
        _close(point, want_point)
        _close(spy.grads[t][0], want_point)
        g = spy.grads[t][1]
        _close(d, g if t == 0 else (1 - eta) * d_prev + eta * g)
        _close(new, theta + gamma * d / torch.linalg.vector_norm(d))
    a.close()


@pytest.mark.parametrize("method", ["n-harpg", "harpg"])
def test_harpg_corrects_with_the_hessian_at_a_random_point_of_the_last_step(method, tmp_path,
                                                                          monkeypatch):
    """Per iteration: the Hessian batch at θ̂ = qθ_t + (1−q)θ_{t−1} (q the run's next uniform),
    v_t = B̂(θ̂)(θ_t − θ_{t−1}) non-zero from t = 1, the gradient batch at θ_t, and
    d_t = (1−η_t)(d_{t−1} + v_t) + η_t ĝ(θ_t) (d_0 = ĝ_0), stepped normalised or plain."""
    import copy

    gamma0 = 0.1 if method == "n-harpg" else 0.002
    a = _small(method, tmp_path, gamma0=gamma0, eta0=0.8)
    spy = Spy(a, monkeypatch)
    rng = copy.deepcopy(a.np_rng)
    steps = _iterate(a, 4)
    for t, (theta, new, d_prev, d, prev, metrics) in enumerate(steps):
        gamma, eta = REFERENCE_SCHEDULES[method](t, gamma0, 0.8)
        q = rng.uniform()
        (hess_point, hess_steps, _), (grad_point, grad_steps, _) = spy.collects[2 * t: 2 * t + 2]
        assert (hess_steps, grad_steps) == (20, 40)
        _close(hess_point, q * theta + (1 - q) * prev)
        _close(grad_point, theta, 0)
        point, v, correction = spy.hvps[t]
        _close(point, hess_point, 0)
        _close(v, theta - prev, 0)
        g = spy.grads[t][1]
        if t == 0:
            _close(d, g)
            continue
        _close(prev, steps[t - 1][0], 0)
        _close(d, (1 - eta) * (d_prev + correction) + eta * g)
        # the correction is large enough to matter in d_t
        norm = torch.linalg.vector_norm
        assert norm((1 - eta) * correction) > 1e-3 * norm(d)
        assert metrics["correction_norm"] == pytest.approx(norm(correction).item(), rel=1e-5)
        step = gamma * d / norm(d) if NORMALISED[method] else gamma * d
        _close(new, theta + step)
    a.close()


def test_npg_momentum_averages_gradients_at_the_iterates(tmp_path, monkeypatch):
    """d_t = (1−η_t) d_{t−1} + η_t ĝ(θ_t), d_0 = ĝ(θ_0) even with η_0 < 1 (`first_direction:
    scaled` gives η_0 ĝ(θ_0)), θ_{t+1} = θ_t + γ_t d_t/‖d_t‖."""
    for first in ("gradient", "scaled"):
        a = _small("npg-momentum", tmp_path / first, gamma0=0.1, eta0=0.5, first_direction=first)
        spy = Spy(a, monkeypatch)
        for t, (theta, new, d_prev, d, _, _) in enumerate(_iterate(a, 3)):
            gamma, eta = REFERENCE_SCHEDULES["npg-momentum"](t, 0.1, 0.5)
            _close(spy.collects[t][0], theta, 0)
            g = spy.grads[t][1]
            mix = 1.0 if t == 0 and first == "gradient" else eta
            _close(d, (1 - mix) * d_prev + mix * g)
            _close(new, theta + gamma * d / torch.linalg.vector_norm(d))
        a.close()
    with pytest.raises(UserError, match="first_direction"):
        _small("npg-momentum", tmp_path / "bad", first_direction="zero")
