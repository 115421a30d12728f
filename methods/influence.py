"""Influence functions (Koh & Liang, ICML 2017): the value of a point is how much the total
validation loss would rise if the point were removed, to first order, without retraining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.methods import _inverse_hessian as ih
from valbench.nets import is_deep
from valbench.params import Interval, Options, Param

__all__ = ["InfluenceFunction", "fit_for_gradients", "SOLVERS"]

#: The inverse-Hessian solvers: exact ones and, for influence at scale, approximations.
SOLVERS: tuple[str, ...] = (*gr.SOLVERS, "arnoldi", "ekfac", "datainf")
#: ``damping=None``: λ of the logreg and MLP models, and of the deep ones (Koh & Liang's
#: released code uses 0.01 for its CNN on MNIST, whose Hessian is not positive definite).
SHALLOW_DAMPING = 1e-3
DEEP_DAMPING = 1e-2
#: The gradient tolerance (largest entry) of the L-BFGS fit that the Newton refinement
#: finishes. L-BFGS converges linearly and Newton quadratically near the optimum, so the
#: hand-over is cheaper earlier: on digits (1,000 points, 650 parameters) L-BFGS needs 146
#: passes to the game's 1e-8 but about 65 to 1e-5, after which three Newton steps on one
#: Hessian reach the same stationary point (scores equal to 4e-10 relative). At 1e-3
#: Newton needed 17 steps and four Hessians.
REFINE_START_TOL = 1e-5


def fit_for_gradients(
    task: ValuationTask, layers: str, refine: bool, clf: Any = None
) -> tuple[gr.Functional, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Train the evaluation model once on all training data; return it as a float64 functional
    model with the (train, validation) inputs it sees.

    For a head (logistic regression, or the MLP's last layer with ``layers="last"``) the
    weights are refined by float64 Newton steps to a stationary point of the same objective:
    influence and representer points are derived at ∇L(θ̂) = 0, and Adam in float32 stops short
    of it. The refinement finishes the one counted fit; it is not a second model.

    A deep model (``--model cnn``) with ``layers="last"`` is a head on its penultimate features
    (frozen, computed in float64); it is refined only when the objective has an L2 term
    (``l2 > 0``): without one a head that separates its training points has no stationary
    point, and the influence is taken at the trained weights with damping (Koh & Liang's
    treatment of a non-convergent model). With ``layers="all"`` it is the whole network at
    its trained weights. ``clf`` is the task's model when the caller built it already.
    """
    clf = task.build_model() if clf is None else clf
    # Newton refines a logreg head to a gradient norm of 1e-10 anyway, so L-BFGS need not
    # take it to the game's tolerance first (see REFINE_START_TOL).
    start_tol = REFINE_START_TOL if refine and clf.spec.kind == "logreg" else None
    everything = np.ones((1, task.n_train), dtype=bool)
    if start_tol is None:
        params = clf.fit(task.x_train, task.y_train, everything)
    else:
        params = clf.fit(task.x_train, task.y_train, everything, tol=start_tol)
    deep = is_deep(task.model.kind)
    model = gr.functional_from_params(params, float(clf.spec.l2), layers, arch=clf.arch)
    stats: dict[str, Any] = {}
    if model.kind == "head":
        phi = gr.head_features(params, task.x_train, clf)
        phi_val = gr.head_features(params, task.x_val, clf)
        width = phi.shape[1]
        phi, phi_val, model.params["W"] = gr.in_training_span(phi, phi_val, model.params["W"])
        if phi.shape[1] < width:
            stats["head_inputs_in_span"] = int(phi.shape[1])
        if deep:
            stats["refined"] = bool(refine and model.l2 > 0)
        if refine and not (deep and model.l2 <= 0):
            y = torch.as_tensor(task.y_train, dtype=torch.int64)
            w, b, its, g_norm = gr.refine_head(
                phi, y, model.params["W"], model.params["b"], model.l2
            )
            model.params = {"W": w, "b": b}
            stats.update(newton_iterations=its, grad_norm=g_norm)
        return model, phi, phi_val, stats
    x_in = gr.gradient_inputs(clf, params, task.x_train)
    return model, x_in, gr.gradient_inputs(clf, params, task.x_val), stats


class InfluenceFunction(Method):
    """Influence of up-weighting each training point on the total validation loss.

    ``scores[i] = (Σ_v ∇ℓ(z_v))ᵀ (H + λI)⁻¹ ∇ℓ(z_i)`` with ``H`` the Hessian of the training
    objective (mean cross-entropy + the model's L2) at the fitted parameters. Removing ``z_i``
    changes the total validation loss by ``≈ scores[i] / n``, so **higher = removing the point
    hurts = the point helps** (this is minus Koh & Liang's ``I_up,loss`` summed over validation).
    ``detection_scores = −∇ℓ(z_i)ᵀ (H + λI)⁻¹ ∇ℓ(z_i)``: the largest self-influence is the most
    suspicious.

    One inverse-Hessian-vector product ``s = (H + λI)⁻¹ Σ_v ∇ℓ(z_v)`` serves every training
    point (``scores = G_train s``, streamed over chunks), so memory never holds
    n_train × n_val gradients. Solvers: ``exact`` (Cholesky of the explicit Hessian; closed form
    for heads), ``cg`` (conjugate gradients on HVPs), ``lissa``; ``auto`` picks exact up to
    3000 parameters. ``layers="last"`` (default, common practice) restricts an MLP to its output
    layer on fixed hidden features; ``"all"`` takes every MLP parameter (slow: CG with
    self-influence costs n block solves). Logistic regression has one layer: both are the same.

    Influence at scale replaces ``(H + λI)⁻¹`` by an approximation: ``arnoldi`` (Schioppa et
    al. 2022: Arnoldi iterations on HVPs, the top ``arnoldi_rank`` eigenpairs by |eigenvalue|,
    the rest of the spectrum dropped), ``ekfac`` (George et al. 2018, Grosse et al. 2023:
    per linear layer, Kronecker factors ``E[ããᵀ]`` of its inputs and ``E[ggᵀ]`` of its
    pre-activation gradients with model-sampled labels in closed form, eigenvalues refitted
    in their eigenbasis, the L2 term included; block-diagonal over an MLP's two layers with
    ``layers="all"``, over every convolution and linear layer of a deep one) and ``datainf``
    (Kwon et al. 2024: per parameter tensor, the inverse of
    the empirical Fisher with sum and inverse swapped, ``(1/n) Σ_i (g_i g_iᵀ + λ_l I)⁻¹``,
    without the L2 term, as the paper). ``damping`` is the λ of ``exact``, ``cg``, ``lissa``
    and ``arnoldi``; EK-FAC and DataInf have their own.

    On a deep model (``--model cnn`` or ``resnet18``, batch norm evaluated with its running
    statistics) the network is trained once with its recipe.
    ``layers="last"`` takes its linear head on the frozen penultimate features (convex: the
    exact solver applies; refined to a stationary point only when the model has an L2 term);
    ``"all"`` takes every parameter of the network at its trained weights, with Hessian-vector
    products by torch.func (forward-over-reverse in float64, summed over ``chunk`` images),
    solved by ``cg`` (what ``auto`` picks), ``lissa``, ``arnoldi``, ``datainf`` or ``ekfac``
    (a Kronecker block per convolution and linear layer, a convolution read as Grosse &
    Martens' KFC; refused up front for a network with other parameters, such as batch
    norm's). The network's Hessian is
    not positive definite and Adam stops short of a stationary point, so, as Koh & Liang for
    their CNN, the damped Hessian at the trained weights is inverted (``damping=None`` is their
    0.01 on a deep model). Self-influence on every layer of a deep model takes one iterative
    solve per training point: with ``cg`` or ``lissa`` it is refused before any work (pass
    ``self_influence=False``).

    A ``cg`` or ``lissa`` solve that stops short of ``tol`` (at ``maxiter`` or ``lissa_depth``,
    or CG at non-positive curvature) leaves scores that are not the damped inverse-Hessian
    products: the run is marked ``complete=False``.

    Departures from Koh & Liang's released logistic-regression code (ported in the tests;
    with the exact solver the scores agree to 4e-15 after the conversion ``n · m · pld``):
    their training gradient carries the L2 term (∇ℓ(z_i) + wd · W), which adds the same
    constant to every score (rankings unchanged; 3e-4 to 2e-2 of max|score| measured); their
    logistic regression has no bias and runs with damping 0, where valbench's has an undecayed
    bias and ``damping=None`` is 1e-3 (1 % of max|score|, Spearman 0.999 against 1e-10).
    Beyond the logistic case: ``layers="last"`` by default, where Koh & Liang take every
    parameter of their networks (``"all"`` does); LiSSA runs at most 1000 steps to ``tol``
    with its scale set to 1.2 times a power-iteration estimate of the largest eigenvalue,
    where their ``get_inverse_hvp_lissa`` runs 10,000 steps at a fixed scale of 10 (a scale
    below that eigenvalue diverges).

    A budgeted fit is the one full-data model (its Newton refinement finishes it).

    Args:
        solver: Inverse-Hessian solver: ``"auto"`` (default), ``"exact"``, ``"cg"``,
            ``"lissa"``, or the approximations ``"arnoldi"``, ``"ekfac"``, ``"datainf"``.
        damping: λ added to the Hessian's diagonal (default None: 1e-3 on logreg and the MLP,
            0.01 on a deep model as Koh & Liang's CNN; >= 0).
        layers: ``"last"`` (default: an MLP's or a deep model's output layer only) or
            ``"all"`` parameters.
        refine: Finish the fit of a head with float64 Newton steps to a stationary point
            (default True), where the influence approximation is derived (a deep model's
            head only when the model has weight decay; otherwise it has none to reach).
        self_influence: Also compute the self-influence ``detection_scores`` (default True).
        maxiter: Most conjugate-gradient iterations per solve (default 200).
        tol: CG stops at a residual below ``tol`` × the right-hand side's norm, LiSSA once
            its update is below ``tol`` relative to the iterate (default 1e-8).
        lissa_depth: Most LiSSA recursion steps (default 1000).
        lissa_scale: LiSSA's σ, which must exceed the largest eigenvalue of H + λI (default
            None: 1.2 × a power-iteration estimate of it).
        chunk: Training or validation points whose gradients are held at once (default 1024).
        arnoldi_rank: Arnoldi: eigenpairs of largest |eigenvalue| kept (default 10, pyDVL's).
        arnoldi_iterations: Arnoldi: Krylov steps (default None: max(2 · rank + 1, 20), pyDVL's
            Krylov dimension; at most the number of parameters).
        ekfac_damping: EK-FAC: λ added to the corrected eigenvalues (default None: 0.1 × their
            mean in each layer, kronfluence's heuristic for ``damping=None``).
        datainf_damping: DataInf: λ of every parameter tensor (default None: the paper's
            per-tensor 0.1 × mean squared gradient entry).
    """

    name = "influence"
    family = "gradient"
    summary = (
        "Influence functions (Koh & Liang 2017): −Δ validation loss from up-weighting a point."
    )
    architectures = ("logreg", "mlp", "cnn", "resnet18")

    parameters = {
        "solver": Param(
            "auto", Options(str, SOLVERS), doc="inverse-Hessian solver or approximation"
        ),
        "damping": Param(
            None,
            Interval(float, 0, None),
            None,
            doc="lambda added to the Hessian's diagonal (None: 1e-3, or 0.01 on a deep model)",
        ),
        "layers": gr.layers_param("last"),
        "refine": Param(True, bool, doc="finish a head's fit with float64 Newton steps"),
        "self_influence": Param(True, bool, doc="also compute self-influence detection scores"),
        "maxiter": Param(
            200, Interval(int, 1, None), doc="most conjugate-gradient iterations per solve"
        ),
        "tol": Param(
            1e-8,
            Interval(float, 0, None, closed="neither"),
            doc="relative tolerance of CG and LiSSA",
        ),
        "lissa_depth": Param(1000, Interval(int, 1, None), doc="most LiSSA recursion steps"),
        "lissa_scale": Param(
            None,
            Interval(float, 0, None, closed="neither"),
            None,
            doc="LiSSA's sigma (None: 1.2 x a power-iteration estimate)",
        ),
        "chunk": gr.CHUNK_PARAM,
        "arnoldi_rank": Param(
            10, Interval(int, 1, None), doc="Arnoldi: eigenpairs of largest |eigenvalue| kept"
        ),
        "arnoldi_iterations": Param(
            None,
            Interval(int, 1, None),
            None,
            doc="Arnoldi: Krylov steps (None: max(2 rank + 1, 20), at most the parameters)",
        ),
        "ekfac_damping": Param(
            None,
            Interval(float, 0, None),
            None,
            doc="EK-FAC: lambda (None: 0.1 x each layer's mean corrected eigenvalue)",
        ),
        "datainf_damping": Param(
            None,
            Interval(float, 0, None, closed="neither"),
            None,
            doc="DataInf: lambda of every block (None: 0.1 x its mean squared gradient entry)",
        ),
    }
    solver: str
    damping: float | None
    layers: str
    refine: bool
    self_influence: bool
    maxiter: int
    tol: float
    lissa_depth: int
    lissa_scale: float | None
    chunk: int
    arnoldi_rank: int
    arnoldi_iterations: int | None
    ekfac_damping: float | None
    datainf_damping: float | None

    def _check(self) -> None:
        if self.solver not in SOLVERS:
            raise UsageError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.layers not in gr.LAYERS:
            raise UsageError(f"layers must be one of {', '.join(gr.LAYERS)}, got {self.layers!r}")
        if self.damping is not None and not self.damping >= 0:
            raise UsageError(f"damping must be >= 0, got {self.damping!r}")

    def _deep_check(self, clf: Any, task: ValuationTask) -> None:
        """Refuse, before any work, what a deep model cannot do with every layer."""
        if self.layers != "all":
            return
        init = clf.init_params(1)
        if self.solver == "ekfac":
            # Every parameter needs a Kronecker block: trace the untrained network on one input.
            model = gr.functional_from_params(init, float(clf.spec.l2), "all", arch=clf.arch)
            ih.network_layers(model, gr.gradient_inputs(clf, init, task.x_train[:1]))
        n_params = sum(v[0].numel() for v in init.tensors.values())
        auto = "exact" if n_params <= gr.MAX_EXACT_PARAMS else "cg"
        solver = auto if self.solver == "auto" else self.solver
        if self.self_influence and solver in ("cg", "lissa"):
            raise UsageError(
                f"influence self-influence with layers='all' on a deep model needs one {solver} "
                "solve per training point; pass self_influence=False (or layers='last', or "
                "solver='arnoldi'/'datainf')"
            )

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        self._check()
        n = task.n_train
        deep = is_deep(task.model.kind)
        clf = task.build_model()
        if deep:
            self._deep_check(clf, task)
        if ctx.budget.remaining_fits() < 1:
            raise ctx.budget.decline(self.name, "model training", 1)
        model, x_in, xv_in, stats = fit_for_gradients(task, self.layers, self.refine, clf)
        y = torch.as_tensor(task.y_train, dtype=torch.int64)
        yv = torch.as_tensor(task.y_val, dtype=torch.int64)
        n_params = model.n_params
        solver = self.solver
        if solver == "auto":
            solver = "exact" if n_params <= gr.MAX_EXACT_PARAMS else "cg"
        damping = self.damping
        if damping is None:
            damping = DEEP_DAMPING if deep else SHALLOW_DAMPING
        stats["damping"] = float(damping)

        solve, whiten = self._solver(solver, model, x_in, y, ctx.rng, stats, float(damping))
        if model.kind == "head":
            g_val = self._grads(model, xv_in, yv).sum(0)
        else:
            g_val = gr.summed_grad(model, xv_in, yv, chunk=self.chunk)
        self_inf = np.empty(n) if self.self_influence else None
        if self_inf is not None and whiten is not None:
            # A = LLᵀ: gᵀA⁻¹g_val = (L⁻¹g)ᵀ(L⁻¹g_val), so one triangular solve per chunk
            # serves both the scores and the self-influence.
            u = whiten(g_val[:, None])[:, 0]
        else:
            s = solve(g_val[:, None])[:, 0]

        scores = np.empty(n)
        for start in range(0, n, self.chunk):
            stop = min(n, start + self.chunk)
            g = self._grads(model, x_in[start:stop], y[start:stop])
            if self_inf is None:
                scores[start:stop] = (g @ s).numpy()
            elif whiten is not None:
                wg = whiten(g.T)
                scores[start:stop] = (wg.T @ u).numpy()
                self_inf[start:stop] = (wg * wg).sum(0).numpy()
            else:
                scores[start:stop] = (g @ s).numpy()
                self_inf[start:stop] = (g * solve(g.T).T).sum(1).numpy()
            ctx.progress(stop, n)
        stats.update(
            {
                "solver": solver,
                "n_params": n_params,
                "seconds": ctx.budget.seconds_used(),
                "complete": stats.get("converged", True) is not False,
            }
        )
        if not stats["complete"]:
            # The scores are not (H + λI)⁻¹ products, only the solver's last iterate.
            stats["reason"] = f"the {solver} solver did not converge (see its stats)"
        elif stats.get("grad_norm", 0.0) > gr.REFINE_TOL:
            # Newton ran out of steps: the scores are not taken at a stationary point.
            stats["complete"] = False
            stats["reason"] = (
                f"the Newton refinement stopped at gradient norm {stats['grad_norm']:.2e}, "
                f"above {gr.REFINE_TOL:g}"
            )
        return Valuation(
            scores=scores,
            detection_scores=None if self_inf is None else -self_inf,
            stats=stats,
        )

    def _hvp(
        self, model: gr.Functional, x: torch.Tensor, y: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training objective's HVP; a deep network's is summed over ``chunk`` images."""
        return gr.make_hvp(model, x, y, chunk=self.chunk if model.arch.deep else None)

    def _grads(self, model: gr.Functional, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients (n, P): closed form for a head, ``vmap(grad)`` otherwise."""
        if model.kind == "head":
            probs = torch.softmax(model.logits(model.params, x), dim=1)
            return gr.head_grads(x, probs, y)
        return gr.per_sample_grads(model, x, y, chunk=self.chunk)

    def _solver(
        self,
        solver: str,
        model: gr.Functional,
        x: torch.Tensor,
        y: torch.Tensor,
        rng: np.random.Generator,
        stats: dict[str, Any],
        damping: float,
    ) -> tuple[
        Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None
    ]:
        """A function ``B (P, k) ↦ (H + λI)⁻¹ B`` for the chosen solver and, for the exact
        solver on a positive definite ``H + λI = LLᵀ``, the whitener ``B ↦ L⁻¹B``."""
        if solver == "exact":
            if model.kind == "head":
                probs = torch.softmax(model.logits(model.params, x), dim=1)
                hessian = gr.head_hessian(x, probs, model.l2)
            else:
                hessian = gr.full_hessian(self._hvp(model, x, y), model.n_params)
            return gr.factor_exact(hessian, damping)
        if solver in ("arnoldi", "ekfac", "datainf"):
            return self._approximation(solver, model, x, y, rng, stats, damping)
        hvp = self._hvp(model, x, y)
        hvp_many = gr.batched_hvp(hvp)
        if solver == "cg":

            def cg(b: torch.Tensor) -> torch.Tensor:
                out, its, ok = gr.solve_cg(
                    hvp_many, b, damping, tol=self.tol, maxiter=self.maxiter, info=stats
                )
                stats["cg_iterations"] = max(int(stats.get("cg_iterations", 0)), its)
                stats["converged"] = bool(stats.get("converged", True)) and ok
                return out

            return cg, None
        scale = self.lissa_scale
        if scale is None:
            # σ must exceed the top eigenvalue of H + λI for the recursion to contract.
            scale = 1.2 * (gr.power_iteration(hvp, model.n_params, rng) + damping)
        stats["lissa_scale"] = float(scale)

        def lissa(b: torch.Tensor) -> torch.Tensor:
            out, its, ok = gr.solve_lissa(
                hvp_many, b, damping, float(scale), depth=self.lissa_depth, tol=self.tol
            )
            stats["lissa_iterations"] = max(int(stats.get("lissa_iterations", 0)), its)
            stats["converged"] = bool(stats.get("converged", True)) and ok
            return out

        return lissa, None

    def _approximation(
        self,
        solver: str,
        model: gr.Functional,
        x: torch.Tensor,
        y: torch.Tensor,
        rng: np.random.Generator,
        stats: dict[str, Any],
        damping: float,
    ) -> tuple[
        Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None
    ]:
        """Solver and whitener of an inverse-Hessian approximation (Arnoldi, EK-FAC, DataInf)."""
        if solver == "arnoldi":
            rank = int(self.arnoldi_rank)
            steps = self.arnoldi_iterations
            steps = max(2 * rank + 1, 20) if steps is None else int(steps)
            solve, whiten, info = ih.arnoldi_inverse(
                self._hvp(model, x, y),
                model.n_params,
                rank=rank,
                iterations=steps,
                damping=damping,
                rng=rng,
            )
            stats.update(info)
            return solve, whiten
        if solver == "ekfac":
            order = None
            if model.kind == "head":
                probs = torch.softmax(model.logits(model.params, x), dim=1)
                factors = [ih.ekfac_head_factors(x, probs, model.l2)]
            elif model.arch.deep:
                factors, order = ih.ekfac_network_factors(model, x, chunk=min(self.chunk, 256))
            else:
                factors = ih.ekfac_mlp_factors(model.params, x, model.l2)
            dampings = [
                0.1 * float(lam.mean()) if self.ekfac_damping is None else float(self.ekfac_damping)
                for _, _, lam in factors
            ]
            stats["ekfac_damping"] = dampings
            return ih.ekfac_block_inverse(factors, dampings, order)
        grads = torch.cat(
            [
                self._grads(model, x[i : i + self.chunk], y[i : i + self.chunk])
                for i in range(0, x.shape[0], self.chunk)
            ]
        )
        blocks, at = [], 0
        for v in model.params.values():
            blocks.append((at, at + v.numel()))
            at += v.numel()
        dampings = ih.datainf_dampings(grads, blocks, self.datainf_damping)
        stats["datainf_damping"] = dict(zip(model.names, dampings, strict=True))
        return ih.datainf_inverse(grads, blocks, dampings), None
