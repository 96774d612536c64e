"""Implicit hypergradient (docs/method.md §3.3) against analytic and unrolled gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from seqcomm.dfl.implicit_gradient import (
    ImplicitSolver,
    implicit_hypergradient,
    unrolled_inner,
)
from seqcomm.dfl.world_model import WorldModel

DT = torch.float64


def quadratic_problem(n_w: int = 6, n_theta: int = 4, seed: int = 0, indefinite: bool = False):
    """Inner L(w; theta) = 1/2 w^T A w - w^T B theta, outer 1/2 ||w - c||^2.

    w*(theta) = A^-1 B theta and dL_outer/dtheta = B^T A^-1 (w* - c).
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_w, n_w, generator=gen, dtype=DT)
    a = q @ q.T + 0.5 * torch.eye(n_w, dtype=DT)
    if indefinite:  # the Hessian of a TD loss need not be positive definite
        a = q + q.T
    b_mat = torch.randn(n_w, n_theta, generator=gen, dtype=DT)
    c = torch.randn(n_w, generator=gen, dtype=DT)
    theta = torch.randn(n_theta, generator=gen, dtype=DT).requires_grad_()
    w_star = torch.linalg.solve(a, b_mat @ theta.detach())
    w = w_star.clone().requires_grad_()  # a leaf at the inner solution
    inner = 0.5 * w @ a @ w - w @ (b_mat @ theta)
    (inner_grad,) = torch.autograd.grad(inner, w, create_graph=True)
    outer_grad = w_star - c
    analytic = b_mat.T @ torch.linalg.solve(a, outer_grad)
    return dict(a=a, b=b_mat, inner_grad=inner_grad, outer_grad=outer_grad, w=w,
                theta=theta, analytic=analytic)


def hypergrad(p, **kw):
    (g,), info = implicit_hypergradient(
        [p["inner_grad"]], [p["outer_grad"]], [p["w"]], [p["theta"]], retain_graph=True, **kw
    )
    return g, info


def test_cg_matches_analytic_hypergradient():
    p = quadratic_problem()
    g, info = hypergrad(p, solver="cg", iters=20, damping=0.0)
    assert torch.allclose(g, p["analytic"], atol=1e-5, rtol=0)
    assert info["residual"] < 1e-8
    # CG is exact in dim(w) = 6 steps in exact arithmetic and stops early at tol
    g_tol, info_tol = hypergrad(p, solver="cg", iters=20, damping=0.0, tol=1e-10)
    assert info_tol["iters"] <= 7 and info_tol["residual"] < 1e-8
    assert torch.allclose(g_tol, p["analytic"], atol=1e-5, rtol=0)


def test_gauss_newton_curvature_solves_with_j_transpose_j():
    """For L = mean((tanh(X w) - y(theta))^2) the GN matrix is 2/N J^T J: the hypergradient
    equals the closed form with that matrix, and CG runs on it (it is PSD)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, generator=gen, dtype=DT)
    m = torch.randn(12, 3, generator=gen, dtype=DT)
    theta = torch.randn(3, generator=gen, dtype=DT).requires_grad_()
    w = torch.randn(5, generator=gen, dtype=DT).requires_grad_()
    f = torch.tanh(x @ w)
    inner = (f - m @ theta).pow(2).mean()
    (inner_grad,) = torch.autograd.grad(inner, w, create_graph=True)
    outer_grad = torch.randn(5, generator=gen, dtype=DT)
    (g,), info = implicit_hypergradient([inner_grad], [outer_grad], [w], [theta], solver="cg",
                                        iters=20, damping=0.0, gn_outputs=f,
                                        gn_scale=2 / f.numel(), retain_graph=True)
    jac = (1 - f.detach().pow(2))[:, None] * x  # d tanh(Xw) / dw
    gn = 2 / f.numel() * jac.T @ jac
    v = torch.linalg.solve(gn, outer_grad)
    mixed = -2 / f.numel() * m.T @ jac  # d^2 L / dtheta dw, [3, 5]
    assert info["iters"] > 1 and info["residual"] < 1e-8
    assert torch.allclose(g, -mixed @ v, atol=1e-6, rtol=0)
    # the exact Hessian differs here (tanh has curvature), so the products are not the same
    (exact,), _ = implicit_hypergradient([inner_grad], [outer_grad], [w], [theta],
                                         solver="minres", iters=20, damping=0.0,
                                         retain_graph=True)
    assert not torch.allclose(g, exact, atol=1e-3)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_implicit_solver_component_is_implicit_hypergradient(curvature):
    """``ImplicitSolver`` (the learner's ``implicit`` component) runs ``implicit_hypergradient``
    with its settings; ``gauss_newton`` uses ``2/N J^T J`` of the ``q_tot`` it is given."""
    gen = torch.Generator().manual_seed(3)
    x, m = torch.randn(12, 5, generator=gen, dtype=DT), torch.randn(12, 3, generator=gen, dtype=DT)
    theta = torch.randn(3, generator=gen, dtype=DT).requires_grad_()
    w = torch.randn(5, generator=gen, dtype=DT).requires_grad_()
    f = torch.tanh(x @ w)
    (inner_grad,) = torch.autograd.grad((f - m @ theta).pow(2).mean(), w, create_graph=True)
    outer_grad = torch.randn(5, generator=gen, dtype=DT)
    solver = ImplicitSolver(solver="cg", iters=7, curvature=curvature, damping=0.01)
    (g,), info = solver([inner_grad], [outer_grad], [w], [theta], q_tot=f, retain_graph=True)
    gn = {"gn_outputs": f, "gn_scale": 2 / f.numel()} if curvature == "gauss_newton" else {}
    (expected,), expected_info = implicit_hypergradient(
        [inner_grad], [outer_grad], [w], [theta], solver="cg", iters=7, damping=0.01,
        retain_graph=True, **gn)
    assert torch.equal(g, expected) and info == expected_info


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(solver="lbfgs"), "solver"),
        (dict(curvature="fisher"), "curvature"),
        (dict(iters=-1), "iters"),
        (dict(damping=-1.0), "damping"),
        (dict(solver="neumann", neumann_lr=0.0), "neumann_lr"),
    ],
)
def test_implicit_solver_rejects_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        ImplicitSolver(**kw)


def test_minres_solves_an_indefinite_system_with_several_iterations():
    p = quadratic_problem(indefinite=True)
    eig = torch.linalg.eigvalsh(p["a"])
    assert eig.min() < 0 < eig.max()  # a saddle: CG does not apply
    g, info = hypergrad(p, solver="minres", iters=50, damping=0.0)
    assert info["iters"] > 1 and info["residual"] < 1e-6
    assert torch.allclose(g, p["analytic"], atol=1e-5, rtol=0)
    # CG stops at the first direction of non-positive curvature and is far off here
    _, info_cg = hypergrad(p, solver="cg", iters=50, damping=0.0)
    assert info_cg["residual"] > 1e-2
    # a budget of 3 iterations is used in full and leaves a residual
    _, info3 = hypergrad(p, solver="minres", iters=3, damping=0.0)
    assert info3["iters"] == 3 and 1e-6 < info3["residual"] < 1.0


def test_cg_damping_solves_the_damped_system():
    p = quadratic_problem()
    lam = 0.7
    g, _ = hypergrad(p, solver="cg", iters=20, damping=lam)
    a_damped = p["a"] + lam * torch.eye(6, dtype=DT)
    expected = p["b"].T @ torch.linalg.solve(a_damped, p["outer_grad"])
    assert torch.allclose(g, expected, atol=1e-8, rtol=0)
    assert not torch.allclose(g, p["analytic"], atol=1e-3)


def test_cg_residual_falls_with_iterations():
    p = quadratic_problem()
    residuals = [hypergrad(p, solver="cg", iters=k, damping=0.0)[1]["residual"]
                 for k in (0, 1, 3, 6)]
    assert residuals[0] == pytest.approx(1.0)  # v = 0
    assert residuals[-1] < 1e-8 < residuals[1] < residuals[0]
    assert residuals[2] < residuals[0]


def test_neumann_approaches_analytic_as_iters_grow():
    p = quadratic_problem()
    lr = 1.0 / torch.linalg.eigvalsh(p["a"]).max().item()
    errors, residuals = [], []
    for k in (2, 20, 200, 2000):
        g, info = hypergrad(p, solver="neumann", iters=k, damping=0.0, neumann_lr=lr)
        errors.append((g - p["analytic"]).norm().item())
        residuals.append(info["residual"])
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5 < errors[0]
    assert residuals == sorted(residuals, reverse=True)


def test_identity_uses_outer_gradient_as_v():
    p = quadratic_problem()
    g, info = hypergrad(p, solver="identity", iters=0)
    # -(d^2 L / dtheta dw)^T v with d^2 L / dtheta dw = -B and v = dL_outer/dw = w* - c
    assert torch.allclose(g, p["b"].T @ p["outer_grad"], atol=1e-12)
    expected_res = (p["a"] @ p["outer_grad"] + 1e-3 * p["outer_grad"] - p["outer_grad"]).norm()
    assert info["residual"] == pytest.approx((expected_res / p["outer_grad"].norm()).item())


def test_unused_theta_and_frozen_entries_get_zeros():
    p = quadratic_problem()
    unused = torch.ones(3, dtype=DT, requires_grad=True)
    frozen = torch.ones(2, dtype=DT)
    grads, _ = implicit_hypergradient(
        [p["inner_grad"]], [p["outer_grad"]], [p["w"]], [p["theta"], unused, frozen],
        solver="cg", iters=10, damping=0.0,
    )
    assert torch.allclose(grads[0], p["analytic"], atol=1e-5)
    assert torch.equal(grads[1], torch.zeros(3, dtype=DT))
    assert torch.equal(grads[2], torch.zeros(2, dtype=DT))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(solver="lbfgs"), "solver"),
        (dict(iters=-1), "iters"),
        (dict(damping=-1.0), "damping"),
        (dict(solver="neumann", neumann_lr=0.0), "neumann_lr"),
    ],
)
def test_bad_arguments_raise(kw, match):
    p = quadratic_problem()
    with pytest.raises(ValueError, match=match):
        hypergrad(p, **kw)


def test_inner_grad_without_graph_raises():
    p = quadratic_problem()
    with pytest.raises(ValueError, match="create_graph"):
        implicit_hypergradient([p["inner_grad"].detach()], [p["outer_grad"]], [p["w"]],
                               [p["theta"]])


def test_unrolled_inner_matches_closed_form_quadratic():
    p = quadratic_problem()
    a, b_mat, theta = p["a"], p["b"], p["theta"]
    lr, steps = 0.05, 5
    w0 = torch.zeros(6, dtype=DT, requires_grad=True)
    out = unrolled_inner({"w": w0}, lambda q: 0.5 * q["w"] @ a @ q["w"] - q["w"] @ (b_mat @ theta),
                         steps=steps, lr=lr)
    # w_K = sum_{k<K} (I - lr A)^k lr B theta from w_0 = 0
    m = torch.eye(6, dtype=DT) - lr * a
    expected = sum(torch.linalg.matrix_power(m, k) for k in range(steps)) @ (lr * b_mat)
    assert torch.allclose(out["w"], expected @ theta.detach(), atol=1e-12)
    (dtheta,) = torch.autograd.grad(out["w"].sum(), theta)
    assert torch.allclose(dtheta, expected.sum(0), atol=1e-12)
    with pytest.raises(ValueError, match="requires_grad"):
        unrolled_inner({"w": w0.detach()}, lambda q: q["w"].sum(), steps=1, lr=0.1)


# --- small real modules: world model + tiny Q-network -------------------------------------

N_AGENTS, OBS, STATE, ACTIONS, MSG, BATCH, GAMMA, RIDGE = 2, 3, 4, 3, 2, 16, 0.9, 0.1


class TinyQ(nn.Module):
    """VDN-style value with messages: utilities from (own obs, mean message), summed."""

    def __init__(self) -> None:
        super().__init__()
        self.msg = nn.Linear(OBS, MSG)
        self.util = nn.Sequential(nn.Linear(OBS + MSG, 8), nn.Tanh(), nn.Linear(8, ACTIONS))

    def utilities(self, obs):
        m = torch.tanh(self.msg(obs))
        pooled = m.mean(-2, keepdim=True).expand_as(m)
        return self.util(torch.cat([obs, pooled], -1)), m

    def forward(self, obs, action):
        u, m = self.utilities(obs)
        return u.gather(-1, action.unsqueeze(-1)).sum((-2, -1)), m


def real_modules_problem():
    """Inner: TD of the Q-net on world-model-imagined targets (+ ridge); outer: TD on real data.

    The Q-net's messages feed the world model, so theta and w also interact through them.
    """
    torch.manual_seed(0)
    wm = WorldModel(STATE, OBS, N_AGENTS, ACTIONS, msg_dim=MSG, hidden_dim=16).to(DT)
    q = TinyQ().to(DT)
    target = TinyQ().to(DT).requires_grad_(False)
    state = torch.randn(BATCH, STATE, dtype=DT)
    obs = torch.randn(BATCH, N_AGENTS, OBS, dtype=DT)
    action = torch.randint(ACTIONS, (BATCH, N_AGENTS))
    real_r = torch.randn(BATCH, dtype=DT)
    real_next_obs = torch.randn(BATCH, N_AGENTS, OBS, dtype=DT)

    def bootstrap(next_obs):
        return target.utilities(next_obs)[0].max(-1).values.sum(-1)

    def inner_loss(params):
        q_tot, msgs = functional_call(q, params, (obs, action))
        pred = wm(state, obs, action, msgs)
        cont = torch.sigmoid(-pred.terminated_logit).squeeze(-1)
        y = pred.reward.squeeze(-1) + GAMMA * cont * bootstrap(pred.next_obs)
        ridge = sum(v.pow(2).sum() for v in params.values())
        return (q_tot - y).pow(2).mean() + RIDGE * ridge

    def outer_loss(params):
        q_tot, _ = functional_call(q, params, (obs, action))
        y = real_r + GAMMA * bootstrap(real_next_obs)
        return (q_tot - y).pow(2).mean()

    return wm, q, inner_loss, outer_loss


def solve_inner(q, inner_loss, steps, lr):
    """Plain gradient descent to near-optimality (no graph kept)."""
    params = {k: v.detach().clone().requires_grad_() for k, v in q.named_parameters()}
    for _ in range(steps):
        grads = torch.autograd.grad(inner_loss(params), list(params.values()))
        with torch.no_grad():
            for v, g in zip(params.values(), grads, strict=True):
                v -= lr * g
    return params


def flat(xs):
    return torch.cat([t.flatten() for t in xs])


def cosine(xs, ys):
    x, y = flat(xs), flat(ys)
    return (x @ y / (x.norm() * y.norm())).item()


def rel_error(xs, ys):
    return ((flat(xs) - flat(ys)).norm() / flat(ys).norm()).item()


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cg_hypergradient_agrees_with_long_unrolled_gradient(one_thread):
    wm, q, inner_loss, outer_loss = real_modules_problem()
    theta = list(wm.parameters())
    lr, steps = 0.4, 100  # contraction (1 - lr * 2 * RIDGE) per step at worst

    # unrolled: backpropagate through many differentiable inner steps from w_0
    start = {k: v.detach().clone().requires_grad_() for k, v in q.named_parameters()}
    w_k = unrolled_inner(start, inner_loss, steps=steps, lr=lr)
    # the state head is unused here: zeros, as the implicit gradient returns for it
    unrolled = torch.autograd.grad(outer_loss(w_k), theta, materialize_grads=True)

    # implicit: solve the inner problem, then CG on Hessian-vector products at w*
    w_star = solve_inner(q, inner_loss, steps=4 * steps, lr=lr)
    w = list(w_star.values())
    inner_grad = torch.autograd.grad(inner_loss(w_star), w, create_graph=True)
    assert max(g.abs().max().item() for g in inner_grad) < 1e-8  # near-optimal
    outer_grad = torch.autograd.grad(outer_loss(w_star), w)
    implicit, info = implicit_hypergradient(inner_grad, outer_grad, w, theta, solver="cg",
                                            iters=100, damping=0.0, tol=1e-10,
                                            retain_graph=True)
    cos, err = cosine(implicit, unrolled), rel_error(implicit, unrolled)
    print(f"cg: cosine={cos:.6f} rel_err={err:.1e} residual={info['residual']:.1e} "
          f"iters={info['iters']:.0f}")
    assert cos > 0.9
    assert err < 1e-2
    assert info["residual"] < 1e-8
    names = [k for k, _ in wm.named_parameters()]
    for name, g in zip(names, implicit, strict=True):  # the unused state head gets zeros
        assert (g.abs().max() == 0) == name.startswith("state_head"), name

    # v = dL_true/dw ignores the curvature: right direction here, wrong size
    ident, ident_info = implicit_hypergradient(inner_grad, outer_grad, w, theta,
                                               solver="identity")
    ident_err = rel_error(ident, unrolled)
    print(f"identity: cosine={cosine(ident, unrolled):.4f} rel_err={ident_err:.1e} "
          f"residual={ident_info['residual']:.1e}")
    assert ident_err > 10 * err
    assert ident_info["residual"] > info["residual"]
