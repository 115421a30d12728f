"""One interface for every architecture (valbench.network, valbench.nets): the registry serves
logreg, mlp, cnn, resnet18 and plugins alike, each checked against autograd, and a new
architecture is one class that the gradient methods then run on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_tasks import half_bright_images

from valbench import RunContext, nets
from valbench.errors import UsageError
from valbench.methods.hostcp import HostCPFast
from valbench.methods.hostcp.loop import ThetaModel, per_sample_grads
from valbench.methods.representer import fit_representer
from valbench.methods.training_dynamics import GraNd
from valbench.models import BatchedClassifier, ModelSpec
from valbench.nets import ImageNetwork, Recipe
from valbench.network import MLP, LogReg, Network, func_per_sample_grads, uniform_init

Tensors = dict[str, torch.Tensor]


class TwoHiddenLayers(ImageNetwork):
    """A third architecture, written as a plugin would: two ReLU layers on the flat pixels."""

    name = "mlp2"
    recipe = Recipe("adam", 1e-2, "constant", 0.0, 0.0, 8, 2)

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        gen = torch.Generator().manual_seed(seed)
        d = int(np.prod(in_shape))
        params: Tensors = {}
        for layer, (cin, cout) in (("fc1", (d, 16)), ("fc2", (16, 8)), ("head", (8, n_classes))):
            params[f"{layer}.weight"] = uniform_init(gen, (cout, cin), cin).float()
            params[f"{layer}.bias"] = uniform_init(gen, (cout,), cin).float()
        return params, {}

    def apply(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        h = F.relu(F.linear(x.flatten(1), params["fc1.weight"], params["fc1.bias"]))
        feats = F.relu(F.linear(h, params["fc2.weight"], params["fc2.bias"]))
        return feats, F.linear(feats, params["head.weight"], params["head.bias"]), dict(buffers)


class BareTwoHiddenLayers:
    """The same network written against the bare protocol only (no base class)."""

    name = "bare"
    recipe = TwoHiddenLayers.recipe
    max_copies, eval_rows = 8, 64
    init = TwoHiddenLayers.init
    apply = TwoHiddenLayers.apply


class EntryPoint:
    def __init__(self, name: str, cls: type) -> None:
        self.name, self.cls = name, cls

    def load(self) -> type:
        return self.cls


@pytest.fixture
def mlp2(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlp2`` and ``bare`` registered as entry-point plugins of the group ``valbench.models``."""
    plugins = {
        "mlp2": EntryPoint("mlp2", TwoHiddenLayers),
        "bare": EntryPoint("bare", BareTwoHiddenLayers),
    }
    monkeypatch.setattr(nets, "_plugins", lambda: plugins)


def _float64(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    return {k: v.to(torch.float64) for k, v in tensors.items()}


@pytest.mark.parametrize(
    ("name", "n_features"),
    [("logreg", 6), ("mlp", 6), ("cnn", 784), ("resnet18", 784), ("mlp2", 784), ("bare", 784)],
)
def test_the_registry_serves_every_architecture_through_one_interface(
    name: str, n_features: int, mlp2: None
) -> None:
    arch = nets.get_architecture(name)
    assert isinstance(arch, Network) and arch.name == name and name in nets.architecture_names()
    shape = arch.input_shape(n_features)
    params, buffers = arch.init(shape, 3, 1)
    again, _ = arch.init(shape, 3, 1)
    assert all(torch.equal(params[k], again[k]) for k in params)  # seeded
    assert set(arch.decayed(params)) <= set(params)
    p, b = _float64(params), _float64(buffers)
    if name == "logreg":  # its zero init has no gradient through the features: move it
        p = {k: v + 0.1 * torch.randn(v.shape, dtype=v.dtype) for k, v in p.items()}
    rng = np.random.default_rng(0)
    x = arch.inputs(torch.from_numpy(rng.random((3, n_features))), shape)
    y = torch.tensor([0, 2, 1])

    feats, logits, _ = arch.apply(p, b, x, train=False)
    torch.testing.assert_close(arch.logits(p, b, x), logits, rtol=0, atol=0)
    torch.testing.assert_close(arch.penultimate(p, b, x), feats, rtol=0, atol=0)
    w, bias = arch.head(p)
    torch.testing.assert_close(feats @ w + bias, logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(arch.point_logits(p, b, x[1]), logits[1], rtol=1e-10, atol=1e-12)

    grads = arch.per_sample_grads(p, b, x, y)
    for i in range(len(y)):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        F.cross_entropy(arch.logits(leaves, b, x[i : i + 1]), y[i : i + 1]).backward()
        for k, leaf in leaves.items():
            assert leaf.grad is not None
            torch.testing.assert_close(grads[k][i], leaf.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", [LogReg(), MLP(hidden=5)], ids=["logreg", "mlp"])
def test_shallow_closed_forms_equal_torch_func(arch: Network) -> None:
    gen = torch.Generator().manual_seed(0)
    params, _ = arch.init((4,), 3, 7)
    p = {k: v + torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=gen)
    closed, func = arch.per_sample_grads(p, {}, x, y), func_per_sample_grads(arch, p, {}, x, y)
    onehot = F.one_hot(y, 3).to(torch.float64)
    step, generic = (
        arch.objective_grad(p, x, onehot, 0.1),
        Network.objective_grad(arch, p, x, onehot, 0.1),
    )
    for k in p:
        torch.testing.assert_close(closed[k], func[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(step[k], generic[k], rtol=1e-12, atol=1e-14)


def test_the_mlp_embeds_before_its_relu_and_its_features_after() -> None:
    arch = MLP(hidden=6)
    p, _ = arch.init((4,), 3, 2)
    x = torch.randn(5, 4, dtype=torch.float64)
    pre = x @ p["W1"] + p["b1"]
    assert bool((pre < 0).any())  # the ReLU has something to cut
    torch.testing.assert_close(arch.embed(p, {}, x), pre, rtol=0, atol=0)
    torch.testing.assert_close(arch.penultimate(p, {}, x), pre.clamp(min=0), rtol=0, atol=0)
    torch.testing.assert_close(LogReg().embed({}, {}, x), x, rtol=0, atol=0)


def test_the_evaluation_models_start_where_their_architecture_says() -> None:
    """logreg at zero; the MLP at torch.nn.Linear's default init drawn W1, b1, W2, b2 from the
    seed (the draws spelled out), in the model's dtype."""
    d, h, c, seed = 5, 7, 3, 11
    gen = torch.Generator().manual_seed(seed)
    want = {}
    for name, shape, fan_in in (
        ("W1", (d, h), d),
        ("b1", (h,), d),
        ("W2", (h, c), h),
        ("b2", (c,), h),
    ):
        draw = torch.rand(shape, generator=gen, dtype=torch.float64)
        want[name] = ((draw * 2 - 1) / np.sqrt(fan_in)).float()
    got = BatchedClassifier(ModelSpec(kind="mlp", hidden=h), d, c, seed).init_params(1)
    assert list(got.tensors) == list(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k][0], v, rtol=0, atol=0)
    zero = BatchedClassifier(ModelSpec(), d, c, seed).init_params(1)
    assert zero["W"].dtype == torch.float64 and not zero["W"].any() and not zero["b"].any()


def test_a_shallow_plugin_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched solvers know logreg and the MLP only: another shallow model is refused in
    one line instead of reaching a solver written for neither."""

    class Linear2(LogReg):
        name = "linear2"

    monkeypatch.setattr(nets, "_plugins", lambda: {"linear2": EntryPoint("linear2", Linear2)})
    with pytest.raises(UsageError, match="shallow architecture"):
        ModelSpec.parse("linear2")


def test_a_new_architecture_in_one_class_runs_the_gradient_methods(mlp2: None) -> None:
    """``mlp2`` is known to the model spec, trains as an evaluation model, and the gradient
    methods run on it: representer points on its head, GraNd over its own training runs, and
    HOST-CP with θ = mlp2 (φ reads its penultimate features)."""
    task = half_bright_images(40, 24, "mlp2:epochs=2,batch_size=8", "toy")
    assert task.model.deep and isinstance(task.build_model().arch, TwoHiddenLayers)

    rep = fit_representer(task, l2=1e-2)
    assert rep.grad_norm < 1e-9 and rep.phi.shape == (24, 8)
    values = rep.alpha[:, None, :] * (rep.phi @ rep.phi_val.T)[:, :, None]
    torch.testing.assert_close(values.sum(0) + rep.b, rep.phi_val @ rep.w + rep.b)

    ctx = RunContext.for_task(task, seed=1, fractions=(0.25,))
    grand = GraNd(runs=2, epochs=1).value(task, ctx)
    assert grand.scores.shape == (24,) and np.isfinite(grand.scores).all()
    assert grand.stats["model"] == "mlp2" and float(grand.scores.std()) > 0

    theta = ThetaModel(task)
    x = torch.as_tensor(task.x_train[:3], dtype=torch.float64)
    images = x.reshape(-1, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(
        theta.embed(x), TwoHiddenLayers().penultimate(theta.params, {}, images)
    )
    assert theta.embed_dim == 8
    y = torch.as_tensor(task.y_train[:3])
    grads = per_sample_grads(theta, theta.params, x, y)
    one = {k: v.clone().requires_grad_() for k, v in theta.params.items()}
    F.cross_entropy(theta.logits(one, x[2:3]), y[2:3]).backward()
    for k, leaf in one.items():
        torch.testing.assert_close(grads[k][2], leaf.grad)
    ctx = RunContext.for_task(task, seed=1, fractions=(0.25,))
    out = HostCPFast(batch_size=8, n_existing=8, epochs=1).value(task, ctx)
    assert out.complete and len(out.selections[0.25]) > 0


def test_the_mlp_closed_forms_pass_no_gradient_through_a_unit_at_exactly_zero() -> None:
    # ReLU's gradient at 0 is 0 (torch.relu's convention): a hidden unit whose pre-activation
    # is exactly zero (a zero row, zero biases) passes no gradient to W1 or b1.
    arch = MLP(hidden=3)
    params, _ = arch.init((2,), 2, 0)
    params["b1"] = torch.zeros(3, dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    closed = arch.per_sample_grads(params, {}, x, y)
    assert torch.count_nonzero(closed["b1"][0]) == 0 and torch.count_nonzero(closed["W1"][0]) == 0
    onehot = F.one_hot(y, 2).to(torch.float64)
    step = arch.objective_grad(params, x[:1], onehot[:1], 0.0)
    assert torch.count_nonzero(step["b1"]) == 0 and torch.count_nonzero(step["W1"]) == 0
    assert torch.count_nonzero(step["b2"]) == 2
    # torch.func through the forward pass agrees there too (the forward's ReLU once passed
    # a gradient of 1 at exactly zero, so the generic path and the closed forms differed).
    generic = func_per_sample_grads(arch, params, {}, x, y)
    for name, grad in closed.items():
        torch.testing.assert_close(grad, generic[name], rtol=1e-12, atol=1e-15)


def test_the_shallow_modules_compute_the_architectures_logits() -> None:
    # The training-dynamics runs train these modules: the same network as init and apply.
    x = torch.randn(6, 4, dtype=torch.float64)
    mlp = MLP(hidden=5).module(4, 3).double()
    params = {
        "W1": mlp[0].weight.T,
        "b1": mlp[0].bias,
        "W2": mlp[2].weight.T,
        "b2": mlp[2].bias,
    }
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), MLP(hidden=5).logits(params, {}, x))
        linear = LogReg().module(4, 3).double()
        want = LogReg().logits({"W": linear.weight.T, "b": linear.bias}, {}, x)
        torch.testing.assert_close(linear(x), want)


def test_the_registrys_mlp_has_the_documented_width_of_the_specs_default() -> None:
    # docs/architecture.md: one ReLU hidden layer of 64 units, as ModelSpec's default.
    plain = nets.get_architecture("mlp")
    assert isinstance(plain, MLP) and plain.hidden == ModelSpec(kind="mlp").hidden == 64
    assert nets.get_architecture("mlp").init((3,), 2, 0)[0]["W1"].shape == (3, 64)


def test_hidden_is_taken_by_an_architecture_that_reads_the_spec_and_refused_otherwise(
    mlp2: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An architecture reads the model spec only through its ``configured``: a plugin that
    overrides it may read ``hidden``; one that does not never would."""

    class Wide(TwoHiddenLayers):
        name = "wide"

        def configured(self, spec: Any) -> Wide:
            return self

    plugins = {**nets._plugins(), "wide": EntryPoint("wide", Wide)}
    monkeypatch.setattr(nets, "_plugins", lambda: plugins)
    assert ModelSpec.parse("wide:hidden=8").hidden == 8
    with pytest.raises(UsageError, match="hidden is not used here"):
        ModelSpec.parse("mlp2:hidden=8")
