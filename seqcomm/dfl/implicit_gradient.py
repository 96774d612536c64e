"""Implicit hypergradient of Optimal Model Design and its unrolled ablation (docs/method.md §3.3).

Bilevel problem: ``w*(theta) = argmin_w L_model(w; theta)``, ``min_theta L_true(w*(theta))``.
By the implicit function theorem (Nikishin et al. 2022; Lorraine et al. 2020)

    dL_true/dtheta = - (d^2 L_model / dtheta dw)^T v,   (H + lambda I) v = dL_true/dw,

with ``H = d^2 L_model / dw^2``. ``v`` is found from Hessian-vector products only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, minres
from torch import Tensor
from torch.nn.utils import parameters_to_vector

Solver = Literal["minres", "cg", "neumann", "identity"]
Curvature = Literal["hessian", "gauss_newton"]
SOLVERS: tuple[str, ...] = get_args(Solver)
CURVATURES: tuple[str, ...] = get_args(Curvature)


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys, strict=True))


def _norm(xs: Sequence[Tensor]) -> float:
    return float(_dot(xs, xs).sqrt())


def _grad_or_zeros(
    outputs: Sequence[Tensor], inputs: Sequence[Tensor], grad_outputs: Sequence[Tensor],
    retain_graph: bool,
) -> list[Tensor]:
    """``sum_i grad_outputs_i . d outputs_i / d inputs`` with zeros where there is no path."""
    live = [i for i, x in enumerate(inputs) if x.requires_grad]
    grads: Sequence[Tensor | None] = [None] * len(live)
    if outputs and live:
        grads = torch.autograd.grad(
            outputs, [inputs[i] for i in live], grad_outputs=grad_outputs,
            retain_graph=retain_graph, allow_unused=True,
        )
    result = [torch.zeros_like(x) for x in inputs]
    for i, g in zip(live, grads, strict=True):
        if g is not None:
            result[i] = g.detach()
    return result


def check_solver_settings(solver: str, iters: int, damping: float, neumann_lr: float,
                          prefix: str = "") -> None:
    """One ``ValueError`` line for a bad solver, iteration count, damping or Neumann step
    (``prefix``: the config path the settings come from, e.g. ``implicit.``)."""
    if solver not in SOLVERS:
        raise ValueError(f"{prefix}solver={solver!r}; choose one of {SOLVERS}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"{prefix}iters={iters!r} must be an integer >= 0")
    if damping < 0:
        raise ValueError(f"{prefix}damping={damping} must be >= 0 (the ridge lambda)")
    if solver == "neumann" and neumann_lr <= 0:
        raise ValueError(f"{prefix}neumann_lr={neumann_lr} must be > 0")


def implicit_hypergradient(
    inner_grad: Sequence[Tensor | None],
    outer_grad: Sequence[Tensor | None],
    w: Sequence[Tensor],
    theta: Sequence[Tensor],
    solver: Solver = "cg",
    iters: int = 5,
    damping: float = 1e-3,
    neumann_lr: float = 0.01,
    tol: float = 0.0,
    retain_graph: bool = False,
    gn_outputs: Tensor | None = None,
    gn_scale: float = 1.0,
) -> tuple[tuple[Tensor, ...], dict[str, float]]:
    """Return ``(dL_true/dtheta per theta tensor, info)``.

    Args:
        inner_grad: ``dL_model/dw`` computed with ``create_graph=True`` (so it depends on
            ``w`` and ``theta``), one entry per ``w`` tensor; ``None`` counts as no graph.
        outer_grad: ``dL_true/dw`` at the inner solution (no graph); ``None`` means zeros.
        w: inner (value) parameters, e.g. ``list(value_module.parameters())``.
        theta: outer (world-model) parameters; entries without a path get zeros.
        solver: ``"minres"`` (MINRES: symmetric systems that need not be positive definite,
            as the Hessian of a TD loss is not), ``"cg"`` (conjugate gradient: positive
            definite systems only, stops at the first direction of non-positive curvature),
            ``"neumann"`` (truncated Neumann series
            ``lr * sum_{k=0..iters} (I - lr (H + lambda I))^k b``) or ``"identity"``
            (``v = dL_true/dw``, the OMD default; ignores ``iters`` and ``damping``).
        iters: MINRES/CG iterations or Neumann terms beyond the first.
        damping: ``lambda`` in ``(H + lambda I) v = dL_true/dw``.
        neumann_lr: step ``lr`` of the Neumann series; it converges when
            ``lr < 2 / lambda_max(H + lambda I)``.
        tol: CG stops early once the relative residual falls below ``tol``.
        retain_graph: keep the graph of ``inner_grad`` after the call.
        gn_outputs: when given, ``H`` is replaced by the Gauss-Newton matrix
            ``gn_scale * J^T J`` of these outputs (``J = d gn_outputs / dw``, built with a
            graph to ``w``): for a squared loss ``mean((f(w) - y(theta))^2)`` it is the
            Hessian without the term weighted by the residuals, positive semi-definite, so
            CG applies (``gn_scale = 2 / f.numel()``). The mixed term stays exact.
        gn_scale: the scale of ``J^T J``.

    ``info`` holds ``residual`` (relative residual ``||(H + lambda I) v - b|| / ||b||`` of
    the returned ``v``, for every solver: log it as ``dfl/cg_residual``), ``iters`` (the
    iterations actually run) and ``v_norm``.
    """
    check_solver_settings(solver, iters, damping, neumann_lr)
    w, theta = list(w), list(theta)
    if not len(inner_grad) == len(outer_grad) == len(w):
        raise ValueError(
            f"inner_grad ({len(inner_grad)}), outer_grad ({len(outer_grad)}) and w ({len(w)}) "
            "must have one entry per inner parameter tensor, in the same order."
        )
    b = [
        torch.zeros_like(p) if g is None else g.detach()
        for g, p in zip(outer_grad, w, strict=True)
    ]
    for g, p in zip(b, w, strict=True):
        if g.shape != p.shape:
            raise ValueError(f"outer_grad entry of shape {tuple(g.shape)} != w shape "
                             f"{tuple(p.shape)}; pass gradients in the order of w.")
    live = [i for i, g in enumerate(inner_grad) if g is not None and g.requires_grad]
    if not live:
        raise ValueError(
            "inner_grad carries no graph: compute it with "
            "torch.autograd.grad(L_model, w, create_graph=True)."
        )
    outs = [inner_grad[i] for i in live]

    # Hessian-vector products by double backward through the graph the caller already built
    # for inner_grad: one forward pass serves every CG iteration, and the caller's
    # nn.Modules need no functional rewrite (torch.func's forward-over-reverse would redo
    # the forward per product and needs the loss as a pure function of w and theta).
    curvature_product = (_hessian_product(outs, live, w) if gn_outputs is None
                         else _gauss_newton_product(gn_outputs, gn_scale, w))

    def damped_hvp(vec: list[Tensor]) -> list[Tensor]:
        hv = curvature_product(vec)
        return [h + damping * x for h, x in zip(hv, vec, strict=True)]

    b_norm = _norm(b)
    n_run = 0
    if solver == "identity":
        v = [x.clone() for x in b]
    elif solver == "neumann":
        term, acc = [x.clone() for x in b], [x.clone() for x in b]
        for _ in range(iters):
            a_term = damped_hvp(term)
            term = [t - neumann_lr * at for t, at in zip(term, a_term, strict=True)]
            acc = [a + t for a, t in zip(acc, term, strict=True)]
            n_run += 1
        v = [neumann_lr * a for a in acc]
    elif solver == "minres":
        v, n_run = _minres(damped_hvp, b, iters, tol)
    else:  # conjugate gradient from v = 0
        v = [torch.zeros_like(x) for x in b]
        r = [x.clone() for x in b]
        p = [x.clone() for x in b]
        rr = _dot(r, r)
        for _ in range(iters):
            if b_norm == 0.0 or float(rr.sqrt()) <= tol * b_norm:
                break
            ap = damped_hvp(p)
            p_ap = _dot(p, ap)
            if float(p_ap) <= 0.0:  # non-positive curvature: H + lambda I is not PD here
                break
            alpha = rr / p_ap
            v = [x + alpha * d for x, d in zip(v, p, strict=True)]
            r = [x - alpha * d for x, d in zip(r, ap, strict=True)]
            rr_new = _dot(r, r)
            p = [x + (rr_new / rr) * d for x, d in zip(r, p, strict=True)]
            rr = rr_new
            n_run += 1

    if b_norm == 0.0:
        residual = 0.0
    else:  # explicit residual (not CG's recursive one), so solvers compare on equal terms
        av = damped_hvp(v)
        residual = _norm([x - y for x, y in zip(av, b, strict=True)]) / b_norm

    mixed = _grad_or_zeros(outs, theta, [v[i] for i in live], retain_graph=retain_graph)
    hypergrad = tuple(-m for m in mixed)
    info = {"residual": residual, "iters": float(n_run), "v_norm": _norm(v)}
    return hypergrad, info


class ImplicitSolver:
    """How ``SeqCommDFL`` solves ``(H + lambda I) v = dL_true/dw`` for the implicit gradient
    (docs/method.md §3.3): configured as ``model.init_args.implicit`` by ``class_path``.

    Args:
        solver: linear solver: ``minres`` (indefinite Hessians), ``cg`` (positive definite
            only), ``neumann`` or ``identity`` (see ``implicit_hypergradient``).
        iters: solver iterations (MINRES/CG iterations or Neumann terms).
        curvature: the ``H`` of the linear system: ``hessian`` (exact Hessian-vector
            products of the inner objective, indefinite for a TD loss) or ``gauss_newton``
            (``2/N J^T J`` of ``L_model``'s online ``Q_tot``, ``J = dQ_tot/dw``: positive
            semi-definite, so ``cg`` applies; it leaves out the curvature weighted by the TD
            residuals and that of the awareness hinge).
        damping: ``lambda`` in ``(H + lambda I) v = dL_true/dw``.
        neumann_lr: step of the Neumann series.
    """

    def __init__(self, solver: Solver = "minres", iters: int = 5,
                 curvature: Curvature = "hessian", damping: float = 1e-3,
                 neumann_lr: float = 0.01) -> None:
        if curvature not in CURVATURES:  # LightningCLI checks the Literals too
            raise ValueError(f"implicit.curvature={curvature!r}; choose one of {CURVATURES}")
        check_solver_settings(solver, iters, damping, neumann_lr, prefix="implicit.")
        self.solver, self.iters, self.curvature = solver, iters, curvature
        self.damping, self.neumann_lr = damping, neumann_lr

    def __repr__(self) -> str:
        return (f"ImplicitSolver(solver={self.solver!r}, iters={self.iters}, curvature="
                f"{self.curvature!r}, damping={self.damping}, neumann_lr={self.neumann_lr})")

    def __call__(self, inner_grad: Sequence[Tensor | None], outer_grad: Sequence[Tensor | None],
                 w: Sequence[Tensor], theta: Sequence[Tensor], q_tot: Tensor | None = None,
                 retain_graph: bool = False) -> tuple[tuple[Tensor, ...], dict[str, float]]:
        """``implicit_hypergradient`` with these settings; ``q_tot``: the online ``Q_tot`` of
        ``L_model`` whose Gauss-Newton matrix stands for ``H`` (``gauss_newton`` only)."""
        gn = {}
        if self.curvature == "gauss_newton":
            if q_tot is None:
                raise ValueError("implicit.curvature='gauss_newton' needs q_tot")
            gn = {"gn_outputs": q_tot, "gn_scale": 2.0 / q_tot.numel()}
        return implicit_hypergradient(inner_grad, outer_grad, w, theta, solver=self.solver,
                                      iters=self.iters, damping=self.damping,
                                      neumann_lr=self.neumann_lr, retain_graph=retain_graph,
                                      **gn)


#: The implicit solver configured by class_path (no arguments at build time).
ImplicitSolverFactory = Callable[[], ImplicitSolver]


def _hessian_product(outs: list[Tensor], live: list[int],
                     w: list[Tensor]) -> Callable[[list[Tensor]], list[Tensor]]:
    """``u -> H u`` by double backward through ``inner_grad``'s graph (``outs``)."""
    def product(vec: list[Tensor]) -> list[Tensor]:
        return _grad_or_zeros(outs, w, [vec[i] for i in live], retain_graph=True)
    return product


def _gauss_newton_product(outputs: Tensor, scale: float,
                          w: list[Tensor]) -> Callable[[list[Tensor]], list[Tensor]]:
    """``u -> scale J^T J u`` with ``J = d outputs / dw``. ``J u`` by the double-backward
    trick: ``g(z) = J^T z`` is linear in a dummy ``z``, and ``d (g(z) . u) / dz = J u``."""
    dummy = torch.zeros_like(outputs, requires_grad=True)
    jt_z = torch.autograd.grad(outputs, w, grad_outputs=dummy, create_graph=True,
                               allow_unused=True)
    live = [i for i, g in enumerate(jt_z) if g is not None]

    def product(vec: list[Tensor]) -> list[Tensor]:
        ju = torch.autograd.grad([jt_z[i] for i in live], dummy,
                                 grad_outputs=[vec[i] for i in live], retain_graph=True)[0]
        jtju = _grad_or_zeros([outputs], w, [ju.detach()], retain_graph=True)
        return [scale * h for h in jtju]
    return product


def _minres(
    operator: Callable[[list[Tensor]], list[Tensor]], b: list[Tensor], iters: int, tol: float
) -> tuple[list[Tensor], int]:
    """SciPy's MINRES on the flattened system, each product one Hessian-vector product."""
    shapes = [x.shape for x in b]
    sizes = [x.numel() for x in b]
    ref = b[0]

    def unflatten(flat: np.ndarray) -> list[Tensor]:
        t = torch.as_tensor(flat, dtype=ref.dtype, device=ref.device)
        return [c.view(s) for c, s in zip(t.split(sizes), shapes, strict=True)]

    def matvec(flat: np.ndarray) -> np.ndarray:
        return parameters_to_vector(operator(unflatten(flat.ravel()))).double().cpu().numpy()

    total = sum(sizes)
    b_flat = parameters_to_vector(b).double().cpu().numpy()
    if iters == 0 or not np.any(b_flat):
        return [torch.zeros_like(x) for x in b], 0
    count = [0]
    op = LinearOperator((total, total), matvec=matvec, dtype=np.float64)
    sol, _ = minres(op, b_flat, maxiter=iters, rtol=max(tol, 1e-10),
                    callback=lambda _x: count.__setitem__(0, count[0] + 1))
    return unflatten(sol), count[0]


def unrolled_inner(
    params: dict[str, Tensor],
    inner_loss: Callable[[dict[str, Tensor]], Tensor],
    steps: int,
    lr: float,
) -> dict[str, Tensor]:
    """``steps`` differentiable SGD steps ``w <- w - lr dL_model/dw`` (the ``unrolled`` ablation).

    Args:
        params: starting inner parameters by name (each must require grad, e.g.
            ``{k: p.detach().requires_grad_() for k, p in module.named_parameters()}``).
        inner_loss: ``L_model`` as a function of the parameter dict (e.g. through
            ``torch.func.functional_call``); its dependence on ``theta`` stays in the graph.
        steps: number of SGD steps, >= 0.
        lr: SGD step size, > 0.

    Returns the parameters after the steps, still attached to the graph of ``theta`` and of
    the starting ``params``, for ``functional_call(module, result, ...)`` in the outer loss.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r} must be an integer >= 0.")
    if lr <= 0:
        raise ValueError(f"lr={lr} must be > 0.")
    frozen = [k for k, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"params {frozen} do not require grad, so SGD cannot move them: call "
            ".requires_grad_() on the starting copies or leave them out of params."
        )
    names = list(params)
    current = dict(params)
    for _ in range(steps):
        loss = inner_loss(current)
        grads = torch.autograd.grad(
            loss, [current[k] for k in names], create_graph=True, allow_unused=True
        )
        current = {
            k: current[k] if g is None else current[k] - lr * g
            for k, g in zip(names, grads, strict=True)
        }
    return current
