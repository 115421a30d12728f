"""A statement-by-statement port of how Koh & Liang compute influence for logistic regression.

Koh & Liang, "Understanding Black-box Predictions via Influence Functions", ICML 2017; their
released code is github.com/kohpangwei/influence-release (commit 0f65696, 2020-12-29). For their
logistic-regression experiments the pieces that run are:

* ``influence/logisticRegressionWithLBFGS.py``, ``LogisticRegressionWithLBFGS``: multinomial
  logistic regression, ``logits = x @ reshape(weights, [input_dim, num_classes])`` (no bias;
  a bias ``variable`` *without* weight decay, ``logits = x W + biases``, is the commented-out
  variant, and ``get_all_params`` then lists ``[weights, biases]``), the weights created by
  ``variable_with_weight_decay`` with ``wd = weight_decay``. The model is fit by sklearn's
  L-BFGS with ``C = 1 / (n · weight_decay)``, i.e. to a minimum of the ``total_loss`` below.
* ``influence/genericNeuralNet.py``, ``GenericNeuralNet``:

  - ``loss``: ``cross_entropy = −Σ_c onehot · log_softmax(logits)``; ``loss_no_reg`` its mean
    over the batch; ``total_loss = loss_no_reg + wd · tf.nn.l2_loss(weights)``, where
    ``l2_loss(w) = ½‖w‖²``: the objective is mean CE + (wd/2)‖W‖², the bias undecayed.
  - ``hessian_vector``: the Hessian-vector product of ``total_loss`` (``hessians.py``'s
    ``hessian_vector_product``, double back-propagation), so the Hessian contains the L2 term.
  - ``minibatch_hessian_vector_val``: with ``mini_batch=False`` (every logistic-regression
    script) one batch of all training points, then ``+ self.damping · v`` (the constructor's
    ``damping``, default 0).
  - ``get_inverse_hvp_cg``: ``scipy.optimize.fmin_ncg`` on ``½ xᵀ(H + damping)x − vᵀx`` with
    ``x0 = v``, ``avextol=1e-8``, ``maxiter=100`` (its ``callback`` only prints).
  - ``get_inverse_hvp_lissa``: ``cur = v + (1 − damping) cur − H cur / scale`` for
    ``recursion_depth`` steps, on ``hessian_vector`` (no ``self.damping`` there), the result
    ``cur / scale`` averaged over ``num_samples``: the solve of ``(H + scale · damping I)``.
  - ``get_test_grad_loss_no_reg_val``: the gradient of ``loss_no_reg`` (no L2 term) averaged
    over ``test_indices``, computed in batches of 100 and re-weighted by batch size.
  - ``get_influence_on_test_loss``: ``inverse_hvp = get_inverse_hvp(test_grad)``, then for each
    training index ``predicted_loss_diffs[i] = ⟨inverse_hvp, grad_total_loss(z_i)⟩ / n`` with
    ``n = num_train_examples``; ``grad_total_loss_op`` on a one-point feed *includes* the L2
    term ``wd · W``. Positive = removing the point raises the test loss = a helpful point
    (the docstring of ``get_grad_of_influence_wrt_input``); that is ``−I_up,loss / n``.

What this port changes: numpy float64 instead of TensorFlow float32 (so that it can be compared
to rounding); the Hessian-vector product of ``total_loss`` in its closed form (the same numbers
as double back-propagation); only ``mini_batch=False`` (the logistic-regression scripts' choice;
the test set's batched mean is kept); no caching of ``inverse_hvp`` to ``.npz`` files and no
printing; the bias is the authors' commented-out variant. Added, marked as such:
``approx_type="exact"`` (the damped Hessian built column by column from
``minibatch_hessian_vector_val`` and solved directly: what CG converges to) and the keyword
switches ``hessian_l2``, ``test_grad_with_reg`` and ``train_grad_with_reg`` that replace one
convention at a time (defaults = the original) so that tests can show which ones matter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import fmin_ncg


def l2_loss(w: np.ndarray) -> float:
    """``tf.nn.l2_loss``: half the squared norm."""
    return 0.5 * float(np.sum(w * w))


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class DataSet:
    """``influence/dataset.py``'s ``DataSet``: inputs (flattened) and labels (no float32 cast)."""

    def __init__(self, x: np.ndarray, labels: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        assert x.shape[0] == labels.shape[0]
        self.x = x
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_examples = x.shape[0]


class LogisticRegressionWithLBFGS:
    """The fitted model of ``LogisticRegressionWithLBFGS`` and ``GenericNeuralNet``'s influence.

    ``weights`` is the flat parameter of length ``input_dim · num_classes`` that the original
    reshapes to ``[input_dim, num_classes]`` (row-major); ``biases`` (length ``num_classes``)
    switches on the commented-out bias. The parameters are taken as given (the original gets
    them from sklearn's L-BFGS); ``damping`` is the constructor's ``damping`` keyword.
    """

    def __init__(
        self,
        *,
        weights: np.ndarray,
        weight_decay: float,
        num_classes: int,
        train: DataSet,
        test: DataSet,
        biases: np.ndarray | None = None,
        damping: float = 0.0,
        hessian_l2: bool = True,
    ) -> None:
        self.weight_decay = float(weight_decay)
        self.num_classes = int(num_classes)
        self.input_dim = train.x.shape[1]
        self.train_set, self.test_set = train, test
        self.damping = float(damping)
        self.num_train_examples = train.labels.shape[0]
        self.num_test_examples = test.labels.shape[0]
        self.params = [np.asarray(weights, dtype=np.float64).reshape(-1)]
        if biases is not None:
            self.params.append(np.asarray(biases, dtype=np.float64).reshape(-1))
        assert self.params[0].shape[0] == self.input_dim * self.num_classes
        # Not in the original (always True there): False drops the L2 term from the Hessian.
        self.hessian_l2 = hessian_l2

    # -- the graph: inference, loss, gradients, Hessian-vector product ------------------------

    def vec_to_list(self, v: np.ndarray) -> list[np.ndarray]:
        out, cur = [], 0
        for p in self.params:
            out.append(v[cur : cur + len(p)])
            cur += len(p)
        assert cur == len(v)
        return out

    def inference(self, x: np.ndarray) -> np.ndarray:
        w = self.params[0].reshape(self.input_dim, self.num_classes)
        logits = x @ w
        if len(self.params) > 1:
            logits = logits + self.params[1]
        return logits

    def loss(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
        """``(total_loss, loss_no_reg, indiv_loss_no_reg)``."""
        onehot = np.eye(self.num_classes)[labels]
        cross_entropy = -np.sum(onehot * log_softmax(logits), axis=1)
        loss_no_reg = float(np.mean(cross_entropy))
        total_loss = loss_no_reg + self.weight_decay * l2_loss(self.params[0])
        return total_loss, loss_no_reg, cross_entropy

    def _grad(self, x: np.ndarray, labels: np.ndarray, reg: bool) -> list[np.ndarray]:
        # d(mean CE)/d logits = (softmax − onehot) / batch; chain rule through x W + b.
        probs = np.exp(log_softmax(self.inference(x)))
        resid = (probs - np.eye(self.num_classes)[labels]) / x.shape[0]
        grads = [(x.T @ resid).reshape(-1)]
        if reg:
            grads[0] = grads[0] + self.weight_decay * self.params[0]
        if len(self.params) > 1:
            grads.append(resid.sum(axis=0))
        return grads

    def grad_total_loss_op(self, x: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        """``tf.gradients(total_loss, params)`` on the feed (x, labels): with ``wd · W``."""
        return self._grad(x, labels, reg=True)

    def grad_loss_no_reg_op(self, x: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        """``tf.gradients(loss_no_reg, params)``: the mean cross-entropy's gradient only."""
        return self._grad(x, labels, reg=False)

    def hessian_vector(
        self, x: np.ndarray, labels: np.ndarray, v: list[np.ndarray]
    ) -> list[np.ndarray]:
        """``hessian_vector_product(total_loss, params, v)`` on the feed (x, labels).

        The closed form of the double back-propagation: with ``p = softmax(x W + b)`` and
        ``dz = x V + v_b``, the logits' Hessian ``diag(p) − p pᵀ`` maps ``dz`` to
        ``p ⊙ dz − p (pᵀ dz)``; back through the logits and divided by the batch, plus the
        Hessian ``wd · I`` of ``wd · l2_loss(weights)``. ``labels`` do not enter (CE's
        Hessian in the logits does not depend on them).
        """
        del labels
        probs = np.exp(log_softmax(self.inference(x)))
        vw = v[0].reshape(self.input_dim, self.num_classes)
        dz = x @ vw
        if len(self.params) > 1:
            dz = dz + v[1]
        dg = (probs * dz - probs * np.sum(probs * dz, axis=1, keepdims=True)) / x.shape[0]
        out = [(x.T @ dg).reshape(-1)]
        if self.hessian_l2:
            out[0] = out[0] + self.weight_decay * v[0]
        if len(self.params) > 1:
            out.append(dg.sum(axis=0))
        return out

    # -- GenericNeuralNet's influence code -----------------------------------------------------

    def minibatch_hessian_vector_val(self, v: list[np.ndarray]) -> list[np.ndarray]:
        # mini_batch=False: batch_size = num_train_examples, one iteration.
        num_examples = self.num_train_examples
        batch_size = self.num_train_examples
        num_iter = int(num_examples / batch_size)
        hessian_vector_val = None
        for _ in range(num_iter):
            temp = self.hessian_vector(self.train_set.x, self.train_set.labels, v)
            if hessian_vector_val is None:
                hessian_vector_val = [b / float(num_iter) for b in temp]
            else:
                hessian_vector_val = [
                    a + (b / float(num_iter)) for a, b in zip(hessian_vector_val, temp, strict=True)
                ]
        assert hessian_vector_val is not None
        return [a + self.damping * b for a, b in zip(hessian_vector_val, v, strict=True)]

    def get_fmin_loss_fn(self, v: list[np.ndarray]) -> Any:
        def get_fmin_loss(x: np.ndarray) -> float:
            hessian_vector_val = self.minibatch_hessian_vector_val(self.vec_to_list(x))
            return 0.5 * np.dot(np.concatenate(hessian_vector_val), x) - np.dot(
                np.concatenate(v), x
            )

        return get_fmin_loss

    def get_fmin_grad_fn(self, v: list[np.ndarray]) -> Any:
        def get_fmin_grad(x: np.ndarray) -> np.ndarray:
            hessian_vector_val = self.minibatch_hessian_vector_val(self.vec_to_list(x))
            return np.concatenate(hessian_vector_val) - np.concatenate(v)

        return get_fmin_grad

    def get_fmin_hvp(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        del x
        return np.concatenate(self.minibatch_hessian_vector_val(self.vec_to_list(p)))

    def get_inverse_hvp_cg(self, v: list[np.ndarray]) -> list[np.ndarray]:
        fmin_results = fmin_ncg(
            f=self.get_fmin_loss_fn(v),
            x0=np.concatenate(v),
            fprime=self.get_fmin_grad_fn(v),
            fhess_p=self.get_fmin_hvp,
            avextol=1e-8,
            maxiter=100,
            disp=False,  # the original prints scipy's summary and a callback's diagnostics
        )
        return self.vec_to_list(fmin_results)

    def get_inverse_hvp_lissa(
        self,
        v: list[np.ndarray],
        batch_size: int | None = None,
        scale: float = 10,
        damping: float = 0.0,
        num_samples: int = 1,
        recursion_depth: int = 10000,
    ) -> list[np.ndarray]:
        # batch_size=None feeds every training point (deterministic); a batch size would
        # draw DataSet.next_batch minibatches, which this port leaves out.
        assert batch_size is None
        inverse_hvp = None
        for _ in range(num_samples):
            cur_estimate = v
            for _ in range(recursion_depth):
                hessian_vector_val = self.hessian_vector(
                    self.train_set.x, self.train_set.labels, cur_estimate
                )
                cur_estimate = [
                    a + (1 - damping) * b - c / scale
                    for a, b, c in zip(v, cur_estimate, hessian_vector_val, strict=True)
                ]
            if inverse_hvp is None:
                inverse_hvp = [b / scale for b in cur_estimate]
            else:
                inverse_hvp = [
                    a + b / scale for a, b in zip(inverse_hvp, cur_estimate, strict=True)
                ]
        assert inverse_hvp is not None
        return [a / num_samples for a in inverse_hvp]

    def get_inverse_hvp_exact(self, v: list[np.ndarray]) -> list[np.ndarray]:
        """Not in the original: the damped Hessian from ``minibatch_hessian_vector_val`` on the
        identity's columns, solved directly (the point CG converges to)."""
        n_params = sum(len(p) for p in self.params)
        eye = np.eye(n_params)
        hessian = np.stack(
            [np.concatenate(self.minibatch_hessian_vector_val(self.vec_to_list(e))) for e in eye],
            axis=1,
        )
        return self.vec_to_list(np.linalg.solve(hessian, np.concatenate(v)))

    def get_inverse_hvp(
        self, v: list[np.ndarray], approx_type: str = "cg", approx_params: dict | None = None
    ) -> list[np.ndarray]:
        assert approx_type in ["cg", "lissa", "exact"]
        if approx_type == "lissa":
            return self.get_inverse_hvp_lissa(v, **(approx_params or {}))
        if approx_type == "exact":
            return self.get_inverse_hvp_exact(v)
        return self.get_inverse_hvp_cg(v)

    def get_test_grad_loss_no_reg_val(
        self,
        test_indices: np.ndarray | list[int],
        batch_size: int = 100,
        test_grad_with_reg: bool = False,
    ) -> list[np.ndarray]:
        """``test_grad_with_reg`` (not in the original) takes ``grad_total_loss_op`` instead."""
        op = self.grad_total_loss_op if test_grad_with_reg else self.grad_loss_no_reg_op
        test_indices = np.asarray(test_indices)
        num_iter = int(np.ceil(len(test_indices) / batch_size))
        test_grad_loss_no_reg_val = None
        for i in range(num_iter):
            start = i * batch_size
            end = int(min((i + 1) * batch_size, len(test_indices)))
            idx = test_indices[start:end]
            temp = op(self.test_set.x[idx].reshape(len(idx), -1), self.test_set.labels[idx])
            if test_grad_loss_no_reg_val is None:
                test_grad_loss_no_reg_val = [a * (end - start) for a in temp]
            else:
                test_grad_loss_no_reg_val = [
                    a + b * (end - start)
                    for a, b in zip(test_grad_loss_no_reg_val, temp, strict=True)
                ]
        assert test_grad_loss_no_reg_val is not None
        return [a / len(test_indices) for a in test_grad_loss_no_reg_val]

    def get_influence_on_test_loss(
        self,
        test_indices: np.ndarray | list[int],
        train_idx: np.ndarray | list[int],
        approx_type: str = "cg",
        approx_params: dict | None = None,
        *,
        test_grad_with_reg: bool = False,
        train_grad_with_reg: bool = True,
    ) -> np.ndarray:
        """``predicted_loss_diffs``: the predicted rise of the mean test loss on removing each
        training point. ``train_grad_with_reg=False`` (not in the original) takes
        ``grad_loss_no_reg_op`` of the training point instead of ``grad_total_loss_op``."""
        test_grad_loss_no_reg_val = self.get_test_grad_loss_no_reg_val(
            test_indices, test_grad_with_reg=test_grad_with_reg
        )
        inverse_hvp = self.get_inverse_hvp(test_grad_loss_no_reg_val, approx_type, approx_params)
        op = self.grad_total_loss_op if train_grad_with_reg else self.grad_loss_no_reg_op
        num_to_remove = len(train_idx)
        predicted_loss_diffs = np.zeros([num_to_remove])
        for counter, idx_to_remove in enumerate(train_idx):
            x = self.train_set.x[idx_to_remove, :].reshape(1, -1)
            labels = self.train_set.labels[idx_to_remove].reshape(-1)
            train_grad_loss_val = op(x, labels)
            predicted_loss_diffs[counter] = (
                np.dot(np.concatenate(inverse_hvp), np.concatenate(train_grad_loss_val))
                / self.num_train_examples
            )
        return predicted_loss_diffs
