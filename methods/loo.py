"""Leave-one-out: the value of a point is what the model loses without it, U(D) − U(D∖{i})."""

from __future__ import annotations

from typing import Any

import numpy as np

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.params import Interval, Param
from valbench.utility import warm_start_refusal

__all__ = ["LeaveOneOut"]


class LeaveOneOut(Method):
    """Exact leave-one-out through the utility engine, batched.

    With a budget below ``n + 1`` fits, only the points of a seeded random order that the
    budget covers are retrained; the rest get the mean of those computed (so they sit in the
    middle of the ranking) and ``stats["complete"]`` is False.

    A budgeted fit is one retrained model: U(D) and one per point (one more with
    ``warm_start``).

    Args:
        warm_start: Start every fit from the full-data solution, trained once and counted as
            one more fit (default False: every fit starts from the model's initialisation).
        batch_size: Leave-one-out models trained per batched fit (default 64, >= 1).
    """

    architectures = None  # any evaluation model
    name = "loo"
    family = "retraining"
    summary = "Leave-one-out retraining: U(D) − U(D∖{i}) for every training point."

    parameters = {
        "warm_start": Param(
            False, bool, doc="start every fit from the full-data solution (one more fit)"
        ),
        "batch_size": Param(
            64, Interval(int, 1, None), doc="leave-one-out models trained per batched fit"
        ),
    }
    warm_start: bool
    batch_size: int

    def model_refusal(self, model: Any) -> str | None:
        """A warm start only on a model fitted to a tolerance (see the utility engine)."""
        return warm_start_refusal(model) if self.warm_start else None

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        utility = task.utility(batch_size=self.batch_size, warm_start=self.warm_start)
        # U(D) costs one fit; a warm start trains the full-data solution once more to start from.
        affordable = int(min(n, max(0, ctx.budget.remaining_fits() - (1 + int(self.warm_start)))))
        order = ctx.rng.permutation(n)[:affordable] if affordable < n else np.arange(n)
        full = utility.full_score if affordable > 0 else float("nan")

        values = np.full(n, np.nan)
        everyone = np.ones(n, dtype=bool)
        done = 0
        while done < len(order) and not ctx.budget.exhausted():
            # Sized by the pace so far, so a seconds budget stops near its limit.
            size = int(ctx.budget.next_request(self.batch_size))
            if size < 1:
                break
            chunk = order[done : done + size]
            masks = np.repeat(everyone[None, :], len(chunk), axis=0)
            masks[np.arange(len(chunk)), chunk] = False
            values[chunk] = full - utility.many(list(masks))
            done += len(chunk)
            ctx.progress(done, n)

        computed = ~np.isnan(values)
        if not computed.any():  # U(D) and one point left out, at the least
            raise ctx.budget.decline(self.name, "leave-one-out value", 2)
        fill = float(values[computed].mean())
        values[~computed] = fill
        return Valuation(
            scores=values,
            stats={
                "full_score": full,
                "points_retrained": int(computed.sum()),
                "complete": bool(computed.all()),
                "cache_hits": utility.cache_hits,
            },
        )
