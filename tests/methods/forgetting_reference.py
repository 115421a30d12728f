"""A statement-by-statement port of how Toneva et al. count forgetting events, for tests.

Source: ``mtoneva/example_forgetting`` (commit d51c1aa, 2 Oct 2020), the code of "An Empirical
Study of Example Forgetting during Deep Neural Network Learning" (ICLR 2019). Two steps:

1. Recording (``run_mnist.py`` and ``run_cifar.py``, function ``train``, the loop over the
   rows of each minibatch): after the training-mode forward pass of a minibatch and *before*
   its optimiser step, every example in it gets one entry appended to
   ``example_stats[index_in_original_dataset] = [losses, accuracies, margins]``: its
   cross-entropy, ``acc = predicted == targets`` (``predicted`` from ``torch.max(outputs, 1)``,
   stored as an int 0/1 through ``.sum().item()``) and the misclassification margin (correct
   class's output minus the largest other output). ``example_stats['train']`` (and, in
   ``test``, ``example_stats['test']``) collect running accuracies under string keys.
   Ported as :func:`record_minibatch`, :func:`record_train_accuracy`.
2. Counting (``order_examples_by_forgetting.py``): ``compute_forgetting_statistics`` turns
   one run's dictionary into per-example statistics (string keys skipped; accuracies cut to the
   first ``npresentations`` = ``--epochs`` entries; a forgetting event is a ``-1`` in the
   difference of consecutive accuracies; ``first_learned`` is the first presentation with
   accuracy 1, NaN when there is none); ``sort_examples_by_forgetting`` adds, over the runs (one
   pickled dictionary per seed), ``len(forgetting presentations)`` for a run where the example
   was learned and ``npresentations`` for a run where it never was, and sorts ascending; the
   ``__main__`` block walks the files of every run and calls both. Ported as
   :func:`compute_forgetting_statistics`, :func:`sort_examples_by_forgetting`,
   :func:`order_runs`.

Names, order and numpy calls follow the original (its ``np.argsort`` with the default kind
included); the console output is left out. One quirk is kept: ``compute_forgetting_statistics``
overwrites ``margins_per_presentation`` with each example's margins in turn, so it returns
those of the last example (the counting never reads it). :func:`diag_stats_from_record` and
:func:`counts_by_example` are test helpers, not part of the original: they lay a hand-made
record out as ``train`` leaves it, and undo the sort into one total per example.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DiagStats = dict[Any, list[list[Any]]]


# -- run_mnist.py / run_cifar.py: train ----------------------------------------------------------


def record_minibatch(
    example_stats: DiagStats,
    batch_inds: np.ndarray,
    train_indx: np.ndarray,
    outputs: torch.Tensor,
    targets: torch.Tensor,
    loss: torch.Tensor,
) -> None:
    """The bookkeeping of one minibatch in ``train``: ``outputs`` (b, C) of the training-mode
    forward pass before the step, ``loss`` (b,) unreduced, ``batch_inds`` positions in the
    training set, ``train_indx`` the map to indices of the original dataset."""
    _, predicted = torch.max(outputs.data, 1)
    acc = predicted == targets
    for j, index in enumerate(batch_inds):
        index_in_original_dataset = train_indx[index]

        # Misclassification margin: the correct class's output against the best other one.
        output_correct_class = outputs.data[j, targets[j].item()]
        sorted_output, _ = torch.sort(outputs.data[j, :])
        if acc[j]:
            output_highest_incorrect_class = sorted_output[-2]
        else:
            output_highest_incorrect_class = sorted_output[-1]
        margin = output_correct_class.item() - output_highest_incorrect_class.item()

        index_stats = example_stats.get(index_in_original_dataset, [[], [], []])
        index_stats[0].append(loss[j].item())
        index_stats[1].append(acc[j].sum().item())
        index_stats[2].append(margin)
        example_stats[index_in_original_dataset] = index_stats


def record_train_accuracy(example_stats: DiagStats, correct: float, total: float) -> None:
    """The running training accuracy ``train`` appends after every minibatch."""
    index_stats = example_stats.get("train", [[], []])
    index_stats[1].append(100.0 * correct / float(total))
    example_stats["train"] = index_stats


# -- order_examples_by_forgetting.py -------------------------------------------------------------


def compute_forgetting_statistics(
    diag_stats: DiagStats, npresentations: int
) -> tuple[dict[Any, Any], dict[Any, Any], np.ndarray | dict[Any, Any], dict[Any, Any]]:
    """One run's dictionary -> (presentations needed to learn, forgetting presentations,
    margins of the last example, first presentation learned) per example."""
    presentations_needed_to_learn: dict[Any, Any] = {}
    unlearned_per_presentation: dict[Any, Any] = {}
    margins_per_presentation: np.ndarray | dict[Any, Any] = {}
    first_learned: dict[Any, Any] = {}

    for example_id, example_stats in diag_stats.items():
        # The 'train' and 'test' entries are not examples.
        if isinstance(example_id, str):
            continue

        # A forgetting event: accuracy 1 at one presentation, 0 at the next.
        presentation_acc = np.array(example_stats[1][:npresentations])
        transitions = presentation_acc[1:] - presentation_acc[:-1]

        # The (1-based) presentations at which the example is forgotten.
        forgotten_at = np.where(transitions == -1)[0]
        if len(forgotten_at) > 0:
            unlearned_per_presentation[example_id] = forgotten_at + 2
        else:
            unlearned_per_presentation[example_id] = []

        # Presentations needed to learn: the last presentation with accuracy 0 (1-based).
        missed = np.where(presentation_acc == 0)[0]
        if len(missed) > 0:
            presentations_needed_to_learn[example_id] = missed[-1] + 1
        else:
            presentations_needed_to_learn[example_id] = 0

        # (Overwritten for every example, as in the original.)
        margins_per_presentation = np.array(example_stats[2][:npresentations])

        # The first presentation with accuracy 1 (0-based); NaN if there is none.
        hits = np.where(presentation_acc == 1)[0]
        if len(hits) > 0:
            first_learned[example_id] = hits[0]
        else:
            first_learned[example_id] = np.nan

    return (
        presentations_needed_to_learn,
        unlearned_per_presentation,
        margins_per_presentation,
        first_learned,
    )


def sort_examples_by_forgetting(
    unlearned_per_presentation_all: list[dict[Any, Any]],
    first_learned_all: list[dict[Any, Any]],
    npresentations: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Examples in ascending order of their forgetting count summed over the runs (a run in
    which an example was never learned adds ``npresentations``), and those sorted counts."""
    example_original_order: list[Any] = []
    example_stats: list[int] = []

    for example_id in unlearned_per_presentation_all[0].keys():
        example_original_order.append(example_id)
        example_stats.append(0)

        for i in range(len(unlearned_per_presentation_all)):
            stats = unlearned_per_presentation_all[i][example_id]
            if np.isnan(first_learned_all[i][example_id]):
                example_stats[-1] += npresentations
            else:
                example_stats[-1] += len(stats)

    return (
        np.array(example_original_order)[np.argsort(example_stats)],
        np.sort(example_stats),
    )


def order_runs(runs: list[DiagStats], epochs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``__main__`` block on already loaded per-run dictionaries (one file per seed):
    statistics of each run, then the sort over all of them; None when there are no runs."""
    unlearned_per_presentation_all: list[dict[Any, Any]] = []
    first_learned_all: list[dict[Any, Any]] = []
    for loaded in runs:
        _, unlearned_per_presentation, _, first_learned = compute_forgetting_statistics(
            loaded, epochs
        )
        unlearned_per_presentation_all.append(unlearned_per_presentation)
        first_learned_all.append(first_learned)
    if len(unlearned_per_presentation_all) == 0:
        return None
    return sort_examples_by_forgetting(unlearned_per_presentation_all, first_learned_all, epochs)


# -- test helpers (not in the original) ----------------------------------------------------------


def diag_stats_from_record(acc: np.ndarray) -> DiagStats:
    """A (T, n) 0/1 record laid out as ``train`` leaves it for one run: example i's accuracies
    in presentation order (as ints), NaN losses and margins, and a 'train' entry."""
    acc = np.asarray(acc)
    stats: DiagStats = {}
    for i in range(acc.shape[1]):
        column = [int(a) for a in acc[:, i]]
        stats[i] = [[float("nan")] * len(column), column, [float("nan")] * len(column)]
    stats["train"] = [[], [float(100.0 * acc.mean()) if acc.size else 0.0]]
    return stats


def counts_by_example(ordered: tuple[np.ndarray, np.ndarray] | None, n: int) -> np.ndarray:
    """Undo the sort: the original's total forgetting count of examples 0..n-1."""
    assert ordered is not None
    ids, values = ordered
    out = np.full(n, -1, dtype=np.int64)
    out[np.asarray(ids, dtype=np.int64)] = values
    assert (out >= 0).all(), "an example is missing from the original's output"
    return out
