"""valbench's subset selectors against DeepCore and CORDS on the same inputs (issue #18).

Each row runs one valbench selector end to end (``Method.value`` on the digits task of the
other benchmarks: 500 training points, 64 standardised features, 10 classes, 10 % of the labels
flipped; selection fraction 0.1, so k = 50) and hands the peer's own selection routine the same
matrix the valbench method works on (the task's standardised features, or the closed-form
last-layer gradients of the one all-data model), the same budget and, for per-class methods,
the same per-class quotas. It reports whether the selected sets are equal (Jaccard), the
correlation of the weights for weighted methods, and notes where the two differ by definition.

Peers (read and run, never copied; neither is a dependency of valbench):

* DeepCore (Guo et al. 2022), github.com/PatrickZH/DeepCore at 74ec709: ``k_center_greedy``,
  the ``FacilityLocation``/``GraphCut`` functions with the ``LazyGreedy``/``NaiveGreedy``
  optimisers, CRAIG's similarity and ``calc_weights``, ``orthogonal_matching_pursuit_np``,
  ``Herding.herding`` and ``Uncertainty.rank_uncertainty``;
* CORDS (decile-team), github.com/decile-team/cords at 8d10c7f: ``OrthogonalMP_REG_Parallel_V1``
  (its GradMatch solver) and ``GLISTERStrategy``.

Their selection routines are called directly: only the modules named above are imported, each
package's ``__init__`` is skipped (DeepCore's imports its image networks and torchvision,
CORDS's apricot and submodlib), and torchvision and DeepCore's ``nets`` are replaced by empty
stand-ins while the modules import (they are used only for training networks, which no row
does). CORDS's ``omp_solvers`` sets ``np.seterr(all="raise")`` on import; it is restored.

Get the sources (no install; numpy, scipy and torch are valbench's own)::

    git clone https://github.com/PatrickZH/DeepCore /path/DeepCore      # holds deepcore/
    git clone https://github.com/decile-team/cords /path/cords           # holds cords/
    export VALBENCH_DEEPCORE_SRC=/path/DeepCore VALBENCH_CORDS_SRC=/path/cords
    python tests/benchmarks/test_selection_peers.py        # prints the table
    pytest -q -m slow tests/benchmarks/test_selection_peers.py

Without the variables (the default suite) every test skips, saying why. Under pytest each row
asserts the agreement recorded in docs/methods.md ("Agreement with DeepCore and CORDS").
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import random
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from noisy_tasks import noisy_task
from scipy.stats import pearsonr, spearmanr

from valbench import RunContext, ValuationTask
from valbench.methods.selection import (
    Craig,
    FacilityLocation,
    Glister,
    GradMatch,
    GraphCut,
    Herding,
    KCenter,
    Uncertainty,
)
from valbench.methods.selection._base import class_schedule
from valbench.methods.selection._features import embeddings, fit_all_data, last_layer_grads
from valbench.methods.selection.uncertainty import uncertainty_scores
from valbench.metrics import subset_size

pytestmark = pytest.mark.slow

N_TRAIN, N_VAL, FRACTION = 500, 200, 0.1

# ---------------------------------------------------------------------------------------------
# Loading the peers' modules without their packages' __init__


def _peer_root(var: str, package: str) -> Path | None:
    root = os.environ.get(var)
    if not root or not (Path(root) / package).is_dir():
        return None
    return Path(root)


@contextlib.contextmanager
def _bare_packages(root: Path, parents: list[str], stubs: dict[str, ModuleType]) -> Iterator[None]:
    """Parents registered as empty packages over their directories (their ``__init__`` not
    run), and stand-in modules present while the peer's modules import. Stand-ins for names
    outside the peer (torchvision) are removed afterwards; a real module is never shadowed."""
    added: list[str] = []
    for name in parents:
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__path__ = [str(root / name.replace(".", "/"))]
            sys.modules[name] = mod
            added.append(name)
    for name, mod in stubs.items():
        if name not in sys.modules:
            sys.modules[name] = mod
            added.append(name)
    try:
        yield
    finally:
        top = parents[0]
        for name in added:
            if name.split(".")[0] != top:
                del sys.modules[name]


def _stub(name: str, **attrs: Any) -> ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


@cache
def deepcore() -> SimpleNamespace | None:
    """DeepCore's selection modules, or None when ``VALBENCH_DEEPCORE_SRC`` is not set."""
    root = _peer_root("VALBENCH_DEEPCORE_SRC", "deepcore")
    if root is None:
        return None
    nets_utils = _stub("deepcore.nets.nets_utils", MyDataParallel=type("MyDataParallel", (), {}))
    stubs = {
        "deepcore.nets": _stub("deepcore.nets", nets_utils=nets_utils),
        "deepcore.nets.nets_utils": nets_utils,
        "torchvision": _stub("torchvision", transforms=_stub("torchvision.transforms")),
    }
    sys.path.insert(0, str(root))
    try:
        with _bare_packages(root, ["deepcore", "deepcore.methods"], stubs):
            mods = {
                m: importlib.import_module(f"deepcore.methods.{m}")
                for m in ("methods_utils", "kcentergreedy", "craig", "gradmatch", "herding")
            }
            mods["uncertainty"] = importlib.import_module("deepcore.methods.uncertainty")
    finally:
        sys.path.remove(str(root))
    return SimpleNamespace(**mods)


@cache
def cords() -> SimpleNamespace | None:
    """CORDS's OMP solvers and GLISTER strategy, or None when ``VALBENCH_CORDS_SRC`` is unset."""
    root = _peer_root("VALBENCH_CORDS_SRC", "cords")
    if root is None:
        return None
    parents = [
        "cords",
        "cords.selectionstrategies",
        "cords.selectionstrategies.SL",
        "cords.selectionstrategies.helpers",
    ]
    before = np.geterr()
    try:
        with _bare_packages(root, parents, {}):
            omp = importlib.import_module("cords.selectionstrategies.helpers.omp_solvers")
            glister = importlib.import_module("cords.selectionstrategies.SL.glisterstrategy")
    finally:
        np.seterr(**before)  # omp_solvers turns every floating-point warning into an error
    return SimpleNamespace(omp=omp, glister=glister)


def _need(peer: SimpleNamespace | None, var: str) -> SimpleNamespace:
    if peer is None:
        pytest.skip(f"peer sources not found: set {var} (see the module docstring)")
    return peer


# ---------------------------------------------------------------------------------------------
# The shared problem and valbench's side


@cache
def task() -> ValuationTask:
    return noisy_task("digits", N_TRAIN, N_VAL)


def run(method: Any, fraction: float = FRACTION) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """valbench's selection at ``fraction`` (pick order), its weights if any, and its stats."""
    t = task()
    ctx = RunContext.for_task(t, seed=0, fractions=(fraction,))
    v = method.value(t, ctx)
    weights = (v.selection_weights or {}).get(fraction)
    return v.selections[fraction], weights, v.stats


def quotas(k: int) -> np.ndarray:
    """valbench's per-class quotas for k picks (the shared divisor schedule)."""
    t = task()
    return np.bincount(class_schedule(t.y_train, t.n_classes, k), minlength=t.n_classes)


@cache
def gradients() -> tuple[np.ndarray, Any]:
    """The dense last-layer gradients valbench's gradient selectors use, and the model."""
    t = task()
    model = fit_all_data(t)
    return last_layer_grads(model.phi, model.probs, t.y_train), model


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = {int(i) for i in a}, {int(i) for i in b}
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def quiet() -> contextlib.AbstractContextManager:
    """The peers print progress lines; keep them out of the table."""
    return contextlib.redirect_stdout(io.StringIO())


@dataclass
class Row:
    method: str
    peer: str
    problem: str
    numbers: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _problem(x: np.ndarray, k: int, per_class: bool) -> str:
    return f"n={x.shape[0]} d={x.shape[1]} k={k}" + (" per class" if per_class else "")


# ---------------------------------------------------------------------------------------------
# Rows


def _np_first(seed: int, n: int) -> int:
    return int(np.random.RandomState(seed).randint(0, n))


def row_kcenter() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    order, _, _ = run(KCenter())
    x = embeddings(task().x_train)
    k = len(order)
    # DeepCore draws its first centre with np.random.seed(random_seed); randint(0, n). Its
    # already_selected route calls np.in1d, gone in numpy 2.4, so take the first seed whose
    # draw is valbench's first centre.
    seed = next(s for s in range(100_000) if _np_first(s, len(x)) == int(order[0]))
    state = np.random.get_state()
    try:
        with quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # addmm_'s deprecated overload
            peer = dc.kcentergreedy.k_center_greedy(
                x.astype(np.float32),  # its distance matrix is float32
                budget=k,
                metric=dc.methods_utils.euclidean_dist,
                device="cpu",
                random_seed=seed,
                already_selected=[],
                print_freq=10**9,
            )
    finally:
        np.random.set_state(state)
    return Row(
        "kcenter",
        "DeepCore k_center_greedy",
        _problem(x, k, False),
        {"jaccard": jaccard(order, peer), "equal": float(set(order) == set(peer))},
        "same first centre; float32 (valbench) vs float32 torch (DeepCore) distances",
    )


def _deepcore_similarity(dc: SimpleNamespace, x: np.ndarray) -> np.ndarray:
    # DeepCore's own recipe (craig.py): minus pairwise distance, shifted to be positive.
    sim = -1.0 * dc.methods_utils.euclidean_dist_pair_np(x)
    sim -= np.min(sim) - 1e-3
    return sim


def _deepcore_per_class(
    dc: SimpleNamespace, x: np.ndarray, k: int, build: Any, optimiser: str, **select_kw: Any
) -> np.ndarray:
    """DeepCore's submodular selection run in each class with valbench's quotas."""
    t = task()
    out = []
    for c, q in enumerate(quotas(k)):
        if q == 0:
            continue
        rows = np.flatnonzero(t.y_train == c)
        fn = build(index=rows, similarity_matrix=_deepcore_similarity(dc, x[rows]))
        opt = getattr(dc.methods_utils, optimiser)(
            args=SimpleNamespace(print_freq=10**9), index=rows, budget=int(q)
        )
        with quiet():
            out.append(opt.select(gain_function=fn.calc_gain, update_state=fn.update_state))
    return np.concatenate(out)


def row_facility_location() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    order, _, _ = run(FacilityLocation())
    x = embeddings(task().x_train)
    k = len(order)
    lazy = _deepcore_per_class(dc, x, k, dc.methods_utils.FacilityLocation, "LazyGreedy")
    naive = _deepcore_per_class(dc, x, k, dc.methods_utils.FacilityLocation, "NaiveGreedy")
    return Row(
        "facility-location",
        "DeepCore FacilityLocation + LazyGreedy / NaiveGreedy",
        _problem(x, k, True),
        {"jaccard_lazy": jaccard(order, lazy), "jaccard_naive": jaccard(order, naive)},
        "same similarity (max distance - distance), valbench's per-class quotas",
    )


def row_graph_cut() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    x = embeddings(task().x_train)
    numbers = {}
    # DeepCore weights the coverage term by lam (gain lam * colsum - 2 * inside), valbench the
    # penalty (colsum - lam (2 * inside + sim(j, j))): DeepCore's lam is valbench's 1 / lam.
    for lam_dc, lam_vb in ((1.0, 1.0), (2.0, 0.5)):
        order, _, _ = run(GraphCut(lam=lam_vb))
        k = len(order)

        def build(lam: float = lam_dc, **kw: Any) -> Any:
            return dc.methods_utils.GraphCut(lam=lam, **kw)

        peer = _deepcore_per_class(dc, x, k, build, "NaiveGreedy")
        numbers[f"jaccard_dc{lam_dc:g}_vb{lam_vb:g}"] = jaccard(order, peer)
    return Row(
        "graph-cut",
        "DeepCore GraphCut + NaiveGreedy",
        _problem(x, k, True),
        numbers,
        "DeepCore's lam multiplies the coverage term: its lam=2 is valbench's lam=0.5",
    )


def row_craig() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    order, weights, _ = run(Craig())
    assert weights is not None
    g, _ = gradients()
    t = task()
    k = len(order)
    sets, w_peer, w_vb = [], [], []
    vb_weight = dict(zip(order.tolist(), weights.tolist(), strict=True))
    for c, q in enumerate(quotas(k)):
        rows = np.flatnonzero(t.y_train == c)
        sim = _deepcore_similarity(dc, g[rows])
        fn = dc.methods_utils.FacilityLocation(index=rows, similarity_matrix=sim)
        opt = dc.methods_utils.LazyGreedy(
            args=SimpleNamespace(print_freq=10**9), index=rows, budget=int(q)
        )
        with quiet():
            chosen = opt.select(gain_function=fn.calc_gain, update_state=fn.update_state)
        mask = np.isin(rows, chosen)
        sets.append(chosen)
        w_peer.extend(dc.craig.Craig.calc_weights(None, sim, mask))  # in ascending index order
        w_vb.extend(vb_weight.get(int(i), np.nan) for i in rows[mask])
    peer = np.concatenate(sets)
    w_peer_a, w_vb_a = np.asarray(w_peer), np.asarray(w_vb)
    same = set(order) == set(peer)
    return Row(
        "craig",
        "DeepCore Craig (LazyGreedy, calc_weights)",
        _problem(g, k, True),
        {
            "jaccard": jaccard(order, peer),
            "weights_pearson": float(pearsonr(w_vb_a, w_peer_a)[0]) if same else np.nan,
            "max|w_dc - w_vb - 1|": float(np.max(np.abs(w_peer_a - w_vb_a - 1)))
            if same
            else np.nan,
        },
        "DeepCore's weight is cluster size + 1 (a pick counts itself twice); valbench's the "
        "cluster size (CRAIG's gamma), summing to the class size",
    )


def _omp_per_class(solve: Any, g: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    t = task()
    supports, weights = [], []
    for c, q in enumerate(quotas(k)):
        if q == 0:
            continue
        rows = np.flatnonzero(t.y_train == c)
        x = np.asarray(solve(g[rows], int(q)), dtype=np.float64)
        nz = np.flatnonzero(x)
        supports.append(rows[nz])
        weights.append(x[nz])
    return supports, weights


def _match_error(g: np.ndarray, idx: np.ndarray, w: np.ndarray) -> float:
    """``sqrt(Σ_c ||Σ_{i ∈ S_c} w_i g_i - Σ_{i ∈ c} g_i||²) / sqrt(Σ_c ||Σ_{i ∈ c} g_i||²)``:
    how well the weighted picks match each class's gradient sum."""
    y = task().y_train
    err = tot = 0.0
    for c in np.unique(y):
        target = g[y == c].sum(axis=0)
        mine = y[idx] == c
        err += float(np.sum((w[mine] @ g[idx[mine]] - target) ** 2))
        tot += float(np.sum(target**2))
    return float(np.sqrt(err / tot))


def _gradmatch_row(
    peer_name: str,
    fraction: float,
    solve: Any,
    target_scale: np.ndarray,
    note: str,
    lam: float | None = None,
) -> Row:
    """valbench's GradMatch (ridge ``lam``, default its own) against a peer's OMP
    ``solve(class_gradients, quota) -> x``, run per class with valbench's quotas; the peer's
    weights times ``target_scale`` compared. valbench's matching error uses the weights it
    trains with (random fill at 1), the peer's its OMP atoms only (its random fill left out)."""
    method = GradMatch() if lam is None else GradMatch(lam=lam)
    order, weights, stats = run(method, fraction)
    assert weights is not None
    g, _ = gradients()
    k = len(order)
    vb_weight = dict(zip(order.tolist(), weights.tolist(), strict=True))
    supports, w = _omp_per_class(solve, g, k)
    peer = np.concatenate(supports)
    w_peer = np.concatenate(w) * target_scale[peer]
    at = {int(i): j for j, i in enumerate(peer)}
    common = [int(i) for i in order if int(i) in at]
    w_vb = np.array([vb_weight[i] for i in common])
    w_pc = np.array([w_peer[at[i]] for i in common])
    return Row(
        "gradmatch",
        peer_name,
        _problem(g, k, True),
        {
            "jaccard": jaccard(order, peer),
            "peer_picks": float(len(peer)),
            "peer_within_valbench": float(set(peer) <= set(order)),
            "weights_pearson_common": float(pearsonr(w_vb, w_pc)[0]),
            "max_rel_weight_diff_common": float(np.max(np.abs(w_pc - w_vb) / np.abs(w_vb))),
            "match_error_valbench": _match_error(g, order, weights.astype(np.float64)),
            "match_error_peer": _match_error(g, peer, w_peer),
            "valbench_random_fill": float(stats["random_fill"]),
        },
        note,
    )


def row_gradmatch_cords(fraction: float = FRACTION) -> Row:
    cs = _need(cords(), "VALBENCH_CORDS_SRC")
    import torch

    lam, tol = GradMatch().lam, GradMatch().tol

    def solve(gc: np.ndarray, q: int) -> np.ndarray:
        a = torch.from_numpy(np.ascontiguousarray(gc.T))
        x = cs.omp.OrthogonalMP_REG_Parallel_V1(
            a, a.sum(dim=1), nnz=q, positive=True, lam=lam, tol=tol, device="cpu"
        )
        return x.numpy()

    return _gradmatch_row(
        "CORDS OrthogonalMP_REG_Parallel_V1 (lam=0.5)",
        fraction,
        solve,
        np.ones(N_TRAIN),
        "with lam > 0 the ridge residual still correlates with chosen atoms; CORDS's V1 solver "
        "does not mask them, re-picks one (a duplicate row, not a new index), so it returns "
        "fewer distinct atoms (CORDS then fills at random) and shifts the weights onto the "
        "wrong atoms; valbench and DeepCore mask chosen atoms",
    )


def row_gradmatch_cords_cpu(fraction: float = FRACTION) -> Row:
    cs = _need(cords(), "VALBENCH_CORDS_SRC")

    def solve(gc: np.ndarray, q: int) -> np.ndarray:
        return cs.omp.OrthogonalMP_REG(gc.T, gc.sum(axis=0), nnz=q, positive=True, lam=0)

    return _gradmatch_row(
        "CORDS OrthogonalMP_REG (its CPU path: lam=0 fixed)",
        fraction,
        solve,
        np.ones(N_TRAIN),
        "CORDS's GradMatch on CPU calls this numpy solver with lam=0 whatever its lam; "
        "compared with valbench's GradMatch(lam=0)",
        lam=0.0,
    )


def row_gradmatch_deepcore(fraction: float = FRACTION) -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    lam = GradMatch().lam
    fake = SimpleNamespace(args=SimpleNamespace(print_freq=10**9))
    t = task()
    sizes = np.bincount(t.y_train, minlength=t.n_classes).astype(np.float64)

    def solve(gc: np.ndarray, q: int) -> np.ndarray:
        with quiet():
            return dc.gradmatch.GradMatch.orthogonal_matching_pursuit_np(
                fake, gc.T, gc.mean(axis=0), budget=q, lam=lam
            )

    # DeepCore matches the class's mean gradient, valbench its sum: ridge weights scale by n_c.
    return _gradmatch_row(
        "DeepCore orthogonal_matching_pursuit_np (lam=0.5)",
        fraction,
        solve,
        sizes[t.y_train],
        "DeepCore matches the class mean (weights x n_c), refits by ridge while picking and by "
        "NNLS at the end; its default lam is 1 (GradMatch's lam is not passed to the solver)",
    )


def last_layer_net(w: np.ndarray, b: np.ndarray) -> Any:
    """The all-data model's last layer as a peer-shaped torch module (float64):
    ``net(x) -> logits``, ``net(x, last=True, freeze=True) -> (logits, x)`` (CORDS) and
    ``get_embedding_dim()``; its inputs are the layer's inputs ``phi``."""
    import torch

    class LastLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(w.shape[0], w.shape[1]).double()
            with torch.no_grad():
                self.linear.weight.copy_(torch.from_numpy(w.T))
                self.linear.bias.copy_(torch.from_numpy(b))

        def forward(self, x: Any, last: bool = False, freeze: bool = False) -> Any:
            out = self.linear(x)
            return (out, x) if last else out

        def get_embedding_dim(self) -> int:
            return int(w.shape[0])

    return LastLayer()


def row_glister() -> Row:
    cs = _need(cords(), "VALBENCH_CORDS_SRC")
    import logging

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    t = task()
    _, model = gradients()
    eta = Glister().eta
    numbers: dict[str, float] = {}
    for greedy_vb, greedy_cords in (("naive", "Naive"), ("stochastic", "Stochastic")):
        order, _, _ = run(Glister(greedy=greedy_vb))
        k = len(order)
        net = last_layer_net(model.w, model.b)
        train = TensorDataset(torch.from_numpy(model.phi), torch.from_numpy(t.y_train).long())
        val = TensorDataset(torch.from_numpy(model.phi_val), torch.from_numpy(t.y_val).long())
        strategy = cs.glister.GLISTERStrategy(
            DataLoader(train, batch_size=128, shuffle=False),
            DataLoader(val, batch_size=128, shuffle=False),
            net,
            torch.nn.CrossEntropyLoss(reduction="none"),
            eta,
            "cpu",
            t.n_classes,
            True,  # linear_layer: weights and biases of the last layer
            "Supervised",
            greedy_cords,
            logging.getLogger("cords"),
        )
        state = random.getstate()
        random.seed(0)  # CORDS's stochastic greedy samples with the random module
        try:
            idxs, _ = strategy.select(k, net.state_dict())
        finally:
            random.setstate(state)
        peer = np.asarray(idxs)
        numbers[f"jaccard_{greedy_vb}"] = jaccard(order, peer)
        if greedy_vb == "naive":
            numbers["same_order_naive"] = float(np.array_equal(order, peer))
    naive, _, _ = run(Glister(greedy="naive"))
    stochastic, _, _ = run(Glister(greedy="stochastic"))
    numbers["jaccard_valbench_stochastic_vs_naive"] = jaccard(naive, stochastic)
    return Row(
        "glister",
        "CORDS GLISTERStrategy (Supervised, linear_layer)",
        _problem(model.phi, k, False),
        numbers,
        "same θ0 and eta, both update the validation gradient exactly (last layer); "
        "stochastic greedy draws different samples on each side",
    )


def row_glister_deepcore() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    from valbench.methods.selection.glister import ValidationLoss

    t = task()
    g, model = gradients()
    order, _, _ = run(Glister(greedy="naive"))
    k = len(order)
    val = ValidationLoss(model.phi_val, t.y_val, t.n_classes)
    val_grad = val.grad(np.vstack([model.w, model.b[None, :]]).reshape(-1))
    calls = []
    opt = dc.methods_utils.LazyGreedy(
        args=SimpleNamespace(print_freq=10**9), index=np.arange(len(g)), budget=k
    )
    with quiet():
        # DeepCore's Glister passes its validation-gradient update as ``upadate_state=``
        # (sic): the optimiser's **kwargs swallow it, so the gains stay those at θ0.
        peer = opt.select(
            gain_function=lambda idx, selected, **kw: g[idx] @ val_grad,
            upadate_state=lambda *a, **kw: calls.append(1),
        )
    static = np.argsort(-(g @ val_grad), kind="stable")[:k]
    return Row(
        "glister",
        "DeepCore Glister (LazyGreedy, its keyword arguments)",
        _problem(model.phi, k, False),
        {
            "jaccard_naive": jaccard(order, peer),
            "deepcore_update_calls": float(len(calls)),
            "deepcore_equals_static_top_k": float(set(peer) == set(static)),
        },
        "DeepCore never updates the validation gradient (keyword typo): a static top-k of "
        "g_i · ∇L_val(θ0)",
    )


def row_herding() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    import torch

    order, _, _ = run(Herding())
    x = embeddings(task().x_train)
    k = len(order)
    fake = SimpleNamespace(
        args=SimpleNamespace(print_freq=10**9), metric=dc.methods_utils.euclidean_dist
    )
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        peer = dc.herding.Herding.herding(fake, torch.from_numpy(x), k)
    mu = x.mean(axis=0)

    def gap(idx: np.ndarray) -> float:
        return float(np.linalg.norm(x[idx].mean(axis=0) - mu))

    rng = np.random.default_rng(0)
    rand = float(np.mean([gap(rng.choice(len(x), k, replace=False)) for _ in range(200)]))
    return Row(
        "herding",
        "DeepCore Herding.herding",
        _problem(x, k, False),
        {
            "jaccard": jaccard(order, peer),
            "mean_gap_valbench": gap(order),
            "mean_gap_deepcore": gap(peer),
            "mean_gap_random": rand,
        },
        "DeepCore picks the point FARTHEST from (t+1)·mu - Σ picks (argmax of the distance); "
        "herding picks the nearest: its subset mean drifts away from mu",
    )


def row_uncertainty() -> Row:
    dc = _need(deepcore(), "VALBENCH_DEEPCORE_SRC")
    import torch
    from torch.utils.data import TensorDataset

    t = task()
    _, model = gradients()
    net = last_layer_net(model.w, model.b)
    dst = TensorDataset(torch.from_numpy(model.phi), torch.from_numpy(t.y_train).long())
    numbers: dict[str, float] = {}
    pairs = (("least_confidence", "LeastConfidence"), ("margin", "Margin"), ("entropy", "Entropy"))
    for crit_vb, crit_dc in pairs:
        fake = SimpleNamespace(
            model=net,
            dst_train=dst,
            selection_method=crit_dc,
            args=SimpleNamespace(selection_batch=128, workers=0, device="cpu", print_freq=10**9),
        )
        with quiet():
            dc_scores = dc.uncertainty.Uncertainty.rank_uncertainty(fake)
        vb = uncertainty_scores(model.probs, crit_vb)
        order, _, _ = run(Uncertainty(criterion=crit_vb))
        k = len(order)
        # DeepCore's scores grow with confidence (max logit, top-2 margin, -entropy); its
        # balance=False branch keeps the k highest, the balance=True branch the k lowest.
        numbers[f"spearman_{crit_vb}"] = float(spearmanr(vb, -dc_scores)[0])
        numbers[f"jaccard_{crit_vb}_lowest"] = jaccard(order, np.argsort(dc_scores)[:k])
        numbers[f"jaccard_{crit_vb}_highest"] = jaccard(order, np.argsort(dc_scores)[::-1][:k])
    return Row(
        "uncertainty",
        "DeepCore Uncertainty.rank_uncertainty",
        f"n={N_TRAIN} k={k}",
        numbers,
        "DeepCore's LeastConfidence scores the max LOGIT, not probability; its global "
        "(balance=False) branch keeps the most CONFIDENT points",
    )


ROWS = {
    "kcenter": row_kcenter,
    "facility-location": row_facility_location,
    "graph-cut": row_graph_cut,
    "craig": row_craig,
    "gradmatch-cords": row_gradmatch_cords,
    "gradmatch-cords-0.6": lambda: row_gradmatch_cords(0.6),
    "gradmatch-cords-cpu": row_gradmatch_cords_cpu,
    "gradmatch-cords-cpu-0.6": lambda: row_gradmatch_cords_cpu(0.6),
    "gradmatch-deepcore": row_gradmatch_deepcore,
    "gradmatch-deepcore-0.6": lambda: row_gradmatch_deepcore(0.6),
    "glister-cords": row_glister,
    "glister-deepcore": row_glister_deepcore,
    "herding": row_herding,
    "uncertainty": row_uncertainty,
}


# ---------------------------------------------------------------------------------------------
# The agreement recorded in docs/methods.md, checked


def test_kcenter_equals_deepcore() -> None:
    assert row_kcenter().numbers["equal"] == 1.0


def test_facility_location_equals_deepcore() -> None:
    numbers = row_facility_location().numbers
    assert numbers["jaccard_lazy"] == numbers["jaccard_naive"] == 1.0


def test_graph_cut_equals_deepcore_with_inverse_lam() -> None:
    assert set(row_graph_cut().numbers.values()) == {1.0}


def test_craig_equals_deepcore_up_to_its_plus_one_weights() -> None:
    numbers = row_craig().numbers
    assert numbers["jaccard"] == 1.0
    assert numbers["max|w_dc - w_vb - 1|"] == 0.0


@pytest.mark.parametrize("fraction", [FRACTION, 0.6])
def test_gradmatch_lam0_equals_cords_cpu_omp(fraction: float) -> None:
    numbers = row_gradmatch_cords_cpu(fraction).numbers
    assert numbers["jaccard"] == 1.0
    assert numbers["max_rel_weight_diff_common"] < 1e-6


@pytest.mark.parametrize("fraction", [FRACTION, 0.6])
def test_gradmatch_equals_deepcore_omp(fraction: float) -> None:
    numbers = row_gradmatch_deepcore(fraction).numbers
    assert numbers["jaccard"] == 1.0
    assert numbers["max_rel_weight_diff_common"] < 1e-5  # DeepCore returns float32 weights


def test_gradmatch_against_cords_omp() -> None:
    small = row_gradmatch_cords(FRACTION).numbers
    assert small["jaccard"] == 1.0 and small["max_rel_weight_diff_common"] < 1e-5
    # At 60 % the ridge residual re-selects chosen atoms in CORDS: fewer distinct picks, all
    # of them among valbench's.
    large = row_gradmatch_cords(0.6).numbers
    assert large["peer_picks"] < subset_size(N_TRAIN, 0.6)
    assert large["peer_within_valbench"] == 1.0
    assert large["match_error_valbench"] < large["match_error_peer"]


def test_glister_naive_equals_cords_order() -> None:
    assert row_glister().numbers["same_order_naive"] == 1.0


def test_deepcore_glister_is_a_static_ranking() -> None:
    numbers = row_glister_deepcore().numbers
    assert numbers["deepcore_update_calls"] == 0.0
    assert numbers["deepcore_equals_static_top_k"] == 1.0
    assert numbers["jaccard_naive"] < 1.0


def test_herding_tracks_the_mean_deepcore_does_not() -> None:
    numbers = row_herding().numbers
    assert numbers["mean_gap_valbench"] < numbers["mean_gap_random"] < numbers["mean_gap_deepcore"]


def test_uncertainty_against_deepcore() -> None:
    numbers = row_uncertainty().numbers
    for crit in ("margin", "entropy"):
        assert numbers[f"spearman_{crit}"] > 0.999
        assert numbers[f"jaccard_{crit}_lowest"] == 1.0
    assert numbers["spearman_least_confidence"] < 0.99  # max logit, not max probability


def main() -> None:
    for name, fn in ROWS.items():
        try:
            result = fn()
        except pytest.skip.Exception as exc:
            print(f"{name}: skipped ({exc})")
            continue
        for row in result if isinstance(result, list) else [result]:
            nums = ", ".join(f"{k}={v:.4g}" for k, v in row.numbers.items())
            print(f"{row.method} | {row.peer} | {row.problem} | {nums} | {row.note}")


if __name__ == "__main__":
    main()
