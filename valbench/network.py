"""What every evaluation-model architecture offers, and the two shallow ones (logreg, mlp).

An architecture is an object of pure functions of a parameter dict (see
:class:`valbench.types.Architecture`). Subclasses of :class:`Network` write two of them,
``init`` and ``apply``; the rest (logits, penultimate features, per-sample gradients, the
objective's gradient) follow from ``apply`` by ``torch.func``, and an architecture with a
closed form overrides them. Callers ask the architecture; none branches on its name.

:class:`LogReg` and :class:`MLP` read feature rows ``(n, d)`` in the
:class:`~valbench.models.Params` layout without the batch dimension (``W`` (d, C), ...). Their
closed forms are the same numbers as ``torch.func`` (``tests/harness/test_architectures.py``)
without its per-call overhead, which dominates at these sizes. The deep ones read images
(:mod:`valbench.nets`). :class:`~valbench.models.BatchedClassifier` keeps its own batched
solvers for logreg and the MLP, but takes their initialisation from here.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from valbench.errors import UsageError

__all__ = [
    "Network",
    "LogReg",
    "MLP",
    "uniform_init",
    "func_per_sample_grads",
]

Tensors = dict[str, torch.Tensor]
TensorMap = Mapping[str, torch.Tensor]


def uniform_init(gen: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    """torch.nn's default init of a linear or conv layer's weight and bias (kaiming_uniform with
    a = sqrt(5) works out to this bound): U(±1/sqrt(fan_in)), drawn in float64 from ``gen``."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound)


def func_per_sample_grads(
    arch: Any,
    params: TensorMap,
    buffers: TensorMap,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Tensors:
    """Gradient of each point's cross-entropy w.r.t. one model's parameters (eval mode), by
    ``torch.func.vmap`` over ``torch.func.grad``: each tensor gets a leading ``len(x)``."""

    def one(p: TensorMap, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        _, logits, _ = arch.apply(p, buffers, xi[None], train=False)
        return F.cross_entropy(logits, yi[None])

    grads: Tensors = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(dict(params), x, y)
    return grads


class Network(abc.ABC):
    """Base of the architectures: ``init`` and ``apply`` to write, the rest derived from them.

    Attributes:
        name: The registry key (``--model NAME``).
        deep: True for a network trained by minibatches on raw image pixels
            (:func:`valbench.nets.train_copies`); False for a shallow model on feature rows,
            fitted by :class:`~valbench.models.BatchedClassifier`'s full-batch solvers.
        linear: True when the logits are an affine map of the inputs: the network is then its
            own last layer, and the gradient methods treat it as a head in closed form.
        recipe: A deep network's default training recipe (:class:`valbench.nets.Recipe`);
            None for a shallow one (its ModelSpec's solver trains it).
        max_copies: Copies trained per pass, and ``eval_rows`` images per copy per
            evaluation chunk (memory bounds of a deep network).
    """

    name: str = ""
    deep: bool = False
    linear: bool = False
    recipe: Any = None
    max_copies: int = 64
    eval_rows: int = 4096

    def configured(self, spec: Any) -> Network:
        """This architecture as the ModelSpec ``spec`` sets it up (the MLP reads its width)."""
        return self

    def input_shape(self, n_features: int) -> tuple[int, ...]:
        """The shape of one input, for rows of ``n_features`` features."""
        return (int(n_features),)

    def inputs(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """What the network reads for feature rows ``x`` (n, n_features): here the rows."""
        return x

    @abc.abstractmethod
    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        """Seeded ``(parameters, buffers)`` for inputs of shape ``in_shape``."""

    @abc.abstractmethod
    def apply(
        self,
        params: TensorMap,
        buffers: TensorMap,
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        """``(penultimate features, logits, new buffers)`` of a batch ``x``; ``train``: batch
        statistics (counting only rows of positive ``weight``) and their update returned."""

    def logits(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, C) of a batch ``x`` in evaluation mode."""
        return self.apply(params, buffers, x, train=False)[1]

    def point_logits(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """Logits (C,) of one input ``x`` (what ``vmap`` over points hands a loss)."""
        return self.logits(params, buffers, x[None])[0]

    def penultimate(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """The last layer's inputs (n, D) in evaluation mode."""
        return self.apply(params, buffers, x, train=False)[0]

    def embed(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """What HOST-CP's selection model reads: the penultimate features, unless the
        architecture says otherwise (the MLP: before its ReLU)."""
        return self.penultimate(params, buffers, x)

    @abc.abstractmethod
    def head(self, params: TensorMap) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer as ``W`` (D, C) and ``b`` (C,): logits = penultimate · W + b."""

    def decayed(self, params: TensorMap) -> tuple[str, ...]:
        """Names of the parameters the training objective's L2 term decays."""
        return tuple(params)

    def per_sample_grads(
        self,
        params: TensorMap,
        buffers: TensorMap,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> Tensors:
        """∇ CE(x_i, y_i) for every row, each tensor with a leading ``len(x)`` (eval mode)."""
        return func_per_sample_grads(self, params, buffers, x, y)

    def objective_grad(
        self, params: TensorMap, x: torch.Tensor, onehot: torch.Tensor, l2: float
    ) -> Tensors:
        """Gradient of ``mean_i CE(x_i) + l2/2 · ||decayed||²`` on the rows ``x`` (no buffers)."""
        decayed = self.decayed(params)

        def objective(p: TensorMap) -> torch.Tensor:
            logp = torch.log_softmax(self.logits(p, {}, x), dim=1)
            data = -(logp * onehot).sum() / x.shape[0]
            return data + 0.5 * l2 * sum((p[k] ** 2).sum() for k in decayed)

        grads: Tensors = torch.func.grad(objective)(dict(params))
        return grads

    def module(self, n_features: int, n_classes: int) -> nn.Module:
        """The network as a torch.nn module (training-dynamics runs train it stacked)."""
        raise UsageError(
            f"training-dynamics runs train logreg and mlp as torch.nn modules; model "
            f"{self.name!r} has none (a deep model trains its runs with its recipe)"
        )


class LogReg(Network):
    """``logreg``: multinomial logistic regression, logits ``x W + b`` (``W`` (d, C), ``b`` (C,)).

    Its penultimate features are the inputs themselves; the weights are decayed, the bias not.
    The zero initialisation: the problem is convex, so there is no symmetry to break and no
    dependence on the seed.
    """

    name = "logreg"
    linear = True

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        """Zero weights and bias, float64."""
        d = int(in_shape[0])
        zeros = {
            "W": torch.zeros(d, n_classes, dtype=torch.float64),
            "b": torch.zeros(n_classes, dtype=torch.float64),
        }
        return zeros, {}

    def apply(
        self,
        params: TensorMap,
        buffers: TensorMap,
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        """The rows themselves, their logits, no buffers."""
        return x, self.logits(params, buffers, x), {}

    def penultimate(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """The rows themselves: no layer but the last."""
        return x

    def logits(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """``x W + b`` for a batch (n, d) or one row (d,)."""
        return x @ params["W"] + params["b"]

    def point_logits(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """One row's logits: the affine map reads a row as it is (no batch dimension to add)."""
        return self.logits(params, buffers, x)

    def head(self, params: TensorMap) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole model: ``W``, ``b``."""
        return params["W"], params["b"]

    def decayed(self, params: TensorMap) -> tuple[str, ...]:
        """The weights ``W`` (not the bias)."""
        return ("W",)

    def per_sample_grads(
        self,
        params: TensorMap,
        buffers: TensorMap,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> Tensors:
        """Closed form: ``∂/∂W = x_i ⊗ δ_i``, ``∂/∂b = δ_i``, ``δ_i = softmax(x_i W + b) − e_y``."""
        onehot = F.one_hot(y, params["b"].numel())
        delta = torch.softmax(x @ params["W"] + params["b"], dim=1) - onehot.to(x.dtype)
        return {"W": x[:, :, None] * delta[:, None, :], "b": delta}

    def objective_grad(
        self, params: TensorMap, x: torch.Tensor, onehot: torch.Tensor, l2: float
    ) -> Tensors:
        """Closed form of the minibatch objective's gradient."""
        g = (torch.softmax(x @ params["W"] + params["b"], dim=1) - onehot) / x.shape[0]
        return {"W": x.T @ g + l2 * params["W"], "b": g.sum(0)}

    def module(self, n_features: int, n_classes: int) -> nn.Module:
        """``nn.Linear(d, C)`` (its weight is ``Wᵀ``)."""
        return nn.Linear(n_features, n_classes)


class MLP(Network):
    """``mlp``: one hidden ReLU layer of ``hidden`` units, ``relu(x W1 + b1) W2 + b2``.

    ``W1`` (d, h), ``b1`` (h,), ``W2`` (h, C), ``b2`` (C,). Its penultimate features are the
    hidden ReLUs; the weights are decayed, the biases not. Initialisation: torch.nn.Linear's
    default for both layers, drawn from the seed in the order W1, b1, W2, b2.
    """

    name = "mlp"

    def __init__(self, hidden: int = 64) -> None:
        self.hidden = int(hidden)

    def configured(self, spec: Any) -> MLP:
        """An MLP of the spec's ``hidden`` width."""
        return MLP(hidden=int(spec.hidden))

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        """torch.nn.Linear's default init, seeded, float64."""
        d, h = int(in_shape[0]), self.hidden
        gen = torch.Generator().manual_seed(int(seed))
        params = {
            "W1": uniform_init(gen, (d, h), d),
            "b1": uniform_init(gen, (h,), d),
            "W2": uniform_init(gen, (h, n_classes), h),
            "b2": uniform_init(gen, (n_classes,), h),
        }
        return params, {}

    def apply(
        self,
        params: TensorMap,
        buffers: TensorMap,
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        """The hidden ReLUs, the logits, no buffers."""
        act = self.penultimate(params, buffers, x)
        return act, act @ params["W2"] + params["b2"], {}

    def logits(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch (n, d) or of one row (d,)."""
        return self.penultimate(params, buffers, x) @ params["W2"] + params["b2"]

    def point_logits(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """One row's logits: the layers read a row as it is (no batch dimension to add)."""
        return self.logits(params, buffers, x)

    def penultimate(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """The hidden ReLUs."""
        return torch.relu(x @ params["W1"] + params["b1"])

    def embed(self, params: TensorMap, buffers: TensorMap, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer *before* its ReLU: HOST-CP's extractor is ``nn.Sequential`` of the
        network's child modules, which drops the functional ReLU its ``forward`` adds."""
        return x @ params["W1"] + params["b1"]

    def head(self, params: TensorMap) -> tuple[torch.Tensor, torch.Tensor]:
        """The output layer ``W2``, ``b2``."""
        return params["W2"], params["b2"]

    def decayed(self, params: TensorMap) -> tuple[str, ...]:
        """The weights ``W1``, ``W2`` (not the biases)."""
        return ("W1", "W2")

    def per_sample_grads(
        self,
        params: TensorMap,
        buffers: TensorMap,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> Tensors:
        """Closed form, back-propagated by hand through the ReLU."""
        onehot = F.one_hot(y, params["b2"].numel())
        pre = x @ params["W1"] + params["b1"]
        h = torch.relu(pre)
        delta2 = torch.softmax(h @ params["W2"] + params["b2"], dim=1) - onehot.to(x.dtype)
        delta1 = (delta2 @ params["W2"].T) * (pre > 0).to(x.dtype)
        return {
            "W1": x[:, :, None] * delta1[:, None, :],
            "b1": delta1,
            "W2": h[:, :, None] * delta2[:, None, :],
            "b2": delta2,
        }

    def objective_grad(
        self, params: TensorMap, x: torch.Tensor, onehot: torch.Tensor, l2: float
    ) -> Tensors:
        """Closed form of the minibatch objective's gradient."""
        pre = x @ params["W1"] + params["b1"]
        act = torch.relu(pre)
        g = (torch.softmax(act @ params["W2"] + params["b2"], dim=1) - onehot) / x.shape[0]
        d_pre = (g @ params["W2"].T) * (pre > 0)
        return {
            "W1": x.T @ d_pre + l2 * params["W1"],
            "b1": d_pre.sum(0),
            "W2": act.T @ g + l2 * params["W2"],
            "b2": g.sum(0),
        }

    def module(self, n_features: int, n_classes: int) -> nn.Module:
        """``Linear(d, h) → ReLU → Linear(h, C)`` (weights transposed against ``W1``, ``W2``)."""
        return nn.Sequential(
            nn.Linear(n_features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, n_classes)
        )
