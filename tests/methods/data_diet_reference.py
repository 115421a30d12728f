"""A line-by-line port of how Paul, Ganguli & Dziugaite compute EL2N and GraNd, for tests.

Source: github.com/mansheej/data_diet (JAX/Flax), the code behind "Deep Learning on a Data
Diet: Finding Important Examples Early in Training" (NeurIPS 2021). The pieces that run when
its README's score scripts are called, ported to torch:

- ``data_diet/data.py`` ``one_hot``: labels as float rows ``labels[:, None] == arange(C)``.
- ``data_diet/metrics.py`` ``cross_entropy_loss(logits, labels)``: the mean over the leading
  axes of ``-sum(log_softmax(logits) * labels, axis=-1)``; under ``vmap`` (as GraNd calls it)
  one example's loss, a scalar.
- ``data_diet/gradients.py`` ``flatten_jacobian(J)``: every leaf of the Jacobian pytree
  raveled row by row and the leaves concatenated along axis 1, in ``tree_flatten`` order
  (a dict's keys sorted).
- ``data_diet/scores.py``:
  ``get_lord_error_fn(fn, params, state, ord)`` (EL2N is ``ord=2``, score type ``l2_error``):
  ``norm(softmax(fn(params, state, X)) - Y, ord, axis=-1)``;
  ``get_grad_norm_fn(fn, params, state)`` (GraNd, score type ``grad_norm``): the per-example
  losses ``vmap(cross_entropy_loss)(fn(p, state, X), Y)`` of one batched forward pass,
  their Jacobian by ``jacrev`` with respect to ``params`` only, flattened, and the L2 norm of
  each row; ``get_score_fn`` picks one of them; ``compute_scores(fn, params, state, X, Y,
  batch_sz, score_type)`` cuts the points into ``X.shape[0] // batch_sz`` equal batches with
  ``np.split`` and concatenates the batches' scores.
- ``scripts/get_run_score.py``: one run's scores at checkpoint ``STEP``, with ``fn`` from
  ``data_diet/models.py`` ``get_apply_fn_test`` (``model.apply(..., train=False,
  mutable=False)``: batch norm on its running averages) and ``params, state`` from
  ``data_diet/utils.py`` ``get_fn_params_state``: ``params`` is the checkpoint's
  ``optim.target``, Flax's ``'params'`` collection (every kernel and bias, batch norm's scale
  and bias), and ``state`` the rest (batch norm's running statistics), which is not
  differentiated.
- ``scripts/get_mean_score.py``: ``np.stack(per-run scores).mean(0)``, the mean over runs of
  each run's per-example norm.

Here ``fn(params, state, X)`` maps a dict of torch tensors, a dict of buffers and a batch of
inputs to logits, as ``apply_fn_test`` does; ``jax.jacrev`` becomes ``torch.func.jacrev`` and
``jax.vmap`` ``torch.func.vmap``. The original computes in float32 (JAX's default); this port
computes in the dtype of the parameters it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.func import jacrev, vmap

Tensors = Mapping[str, torch.Tensor]
ApplyFn = Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# -- data_diet/data.py ------------------------------------------------------------------------


def one_hot(labels: np.ndarray, num_classes: int, dtype: type = np.float32) -> np.ndarray:
    return (labels[:, None] == np.arange(num_classes)).astype(dtype)


# -- data_diet/metrics.py ---------------------------------------------------------------------


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.mean(-torch.sum(torch.log_softmax(logits, dim=-1) * labels, dim=-1))


# -- data_diet/gradients.py -------------------------------------------------------------------


def tree_flatten(tree: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """jax.tree_util.tree_flatten's leaves of a (flat) dict: in sorted key order."""
    return [tree[k] for k in sorted(tree)]


def flatten_jacobian(jac: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Jacobian pytree -> Jacobian matrix"""
    return torch.cat([vmap(torch.ravel)(leaf) for leaf in tree_flatten(jac)], dim=1)


# -- data_diet/scores.py ----------------------------------------------------------------------


def _as_input(x: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x)).to(like.dtype)


def get_lord_error_fn(fn: ApplyFn, params: Tensors, state: Tensors, ord: int) -> ScoreFn:
    like = next(iter(params.values()))

    def lord_error(x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            errors = torch.softmax(fn(params, state, _as_input(x, like)), dim=-1) - _as_input(
                y, like
            )
            scores = torch.linalg.vector_norm(errors, ord=ord, dim=-1)
        return scores

    def np_lord_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return lord_error(x, y).numpy()

    return np_lord_error


def get_grad_norm_fn(fn: ApplyFn, params: Tensors, state: Tensors) -> ScoreFn:
    like = next(iter(params.values()))

    def score_fn(x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        def per_sample_loss_fn(p: Tensors, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return vmap(cross_entropy_loss)(fn(p, state, xb), yb)

        loss_grads = flatten_jacobian(
            jacrev(per_sample_loss_fn)(dict(params), _as_input(x, like), _as_input(y, like))
        )
        scores = torch.linalg.vector_norm(loss_grads, dim=-1)
        return scores

    return lambda x, y: score_fn(x, y).detach().numpy()


def get_score_fn(fn: ApplyFn, params: Tensors, state: Tensors, score_type: str) -> ScoreFn:
    if score_type == "l2_error":
        score_fn = get_lord_error_fn(fn, params, state, 2)
    elif score_type == "l1_error":
        score_fn = get_lord_error_fn(fn, params, state, 1)
    elif score_type == "grad_norm":
        score_fn = get_grad_norm_fn(fn, params, state)
    else:
        raise NotImplementedError(score_type)  # the margins are not ported
    return score_fn


def compute_scores(
    fn: ApplyFn,
    params: Tensors,
    state: Tensors,
    x: np.ndarray,
    y: np.ndarray,
    batch_sz: int,
    score_type: str,
) -> np.ndarray:
    n_batches = x.shape[0] // batch_sz
    xs, ys = np.split(x, n_batches), np.split(y, n_batches)
    score_fn = get_score_fn(fn, params, state, score_type)
    scores = []
    for xb, yb in zip(xs, ys, strict=True):
        scores.append(score_fn(xb, yb))
    return np.concatenate(scores)


# -- scripts/get_run_score.py, scripts/get_mean_score.py ---------------------------------------


def get_run_score(
    fn: ApplyFn,
    params: Tensors,
    state: Tensors,
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_sz: int,
    score_type: str,
) -> np.ndarray:
    """One run's scores (``get_run_score.py``): labels one-hot as ``load_data`` gives them."""
    return compute_scores(fn, params, state, x, one_hot(labels, num_classes), batch_sz, score_type)


def get_mean_score(run_scores: Sequence[np.ndarray]) -> np.ndarray:
    """``get_mean_score.py``: the per-run scores stacked and averaged over the runs."""
    return np.stack(run_scores).mean(0)
