"""The leaderboard numbers of a run: per-(dataset, noise) tables, ranks, paired tests, CD ranks.

Everything here is computed from ``results.jsonl`` records alone and is pure (no I/O):

- :func:`summarise` groups the ``ok`` cells by (dataset, noise) and aggregates every
  :class:`Column` over seeds (mean and Student-t interval), ranks the methods per column, marks
  the best mean and every method not significantly different from it (:data:`TEST_NAME`,
  every pair of methods in the column tested, Holm-corrected over all those pairs);
- :func:`friedman_nemenyi` ranks the methods across datasets (Demšar 2006) for the CD diagram,
  one block per dataset and only with :data:`MIN_CD_BLOCKS` of them;
- :func:`summary_json` is the ``summary.json`` export, the same numbers the HTML shows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from valbench.metrics import mean_ci, rank_columns, same_value
from valbench.records import CellRecord, Manifest, fraction_label

__all__ = [
    "SELECTION_FAMILY",
    "HeadToHead",
    "head_to_head",
    "ALPHA",
    "CONFIDENCE",
    "CORRECTION",
    "COST_KEY",
    "FIT_NOTE",
    "POWER",
    "GAIN_KEY",
    "HEADLINE_KEYS",
    "MIN_CD_BLOCKS",
    "MIN_CD_METHODS",
    "INTERVAL_NAME",
    "SUMMARY_SCHEMA",
    "TABLE_COLUMNS",
    "TEST_NAME",
    "CDResult",
    "Column",
    "GroupSummary",
    "Stat",
    "fraction_label",
    "dataset_blocks",
    "friedman_nemenyi",
    "finite",
    "holm",
    "min_detectable_difference",
    "MIN_TEST_PAIRS",
    "RANDOM_METHOD",
    "is_number",
    "paired_p_value",
    "record_sort_key",
    "seed_values",
    "summarise",
    "summary_json",
    "cd_json",
]

CONFIDENCE = 0.95
ALPHA = 0.05
TEST_NAME = "two-sided paired t-test over seeds"
CORRECTION = "Holm"
POWER = 0.8
"""Power at which :func:`min_detectable_difference` is quoted (the usual 80 %)."""
MIN_TEST_PAIRS = 3
"""Fewest shared seeds a paired test runs on. With two, the t-test has one degree of freedom:
any two nearly equal differences (common for accuracies, which move in steps of 1 / n_test)
come out "significant" while a far larger but uneven one does not, so two seeds are shown
with intervals but left untested."""
RANDOM_METHOD = "random"
"""The random baseline's method name: compared against, never recommended as a valuation."""
SUMMARY_SCHEMA = 3
GAIN_KEY = "gain"
HEADLINE_KEYS = (
    GAIN_KEY,
    "mislabel.recall_at_noise",
    "mislabel.auc",
    "removal.auc",
    "cost.cpu_s",
)
"""Columns of the headline table (best method per dataset on each)."""
COST_KEY = "cost.cpu_s"
"""The cost methods are compared on: CPU seconds. A "fit" is a different amount of work per method
(one TMC permutation prefix, one G-Shapley epoch, one whole HOST-CP run), so fits are shown but
never ranked."""
UNIT = (0.0, 1.0)
"""Range of accuracies, recalls, F1 scores and normalised curve areas."""
GAIN_BOUNDS = (-100.0, 100.0)
"""Range of a difference of two accuracies, in percentage points."""
COST = (0.0, math.inf)
CPU_FLOOR_S = 1e-3
"""CPU seconds below this count as this much in the cost tests (their logarithm): under a
millisecond the clock and the harness's own overhead decide, not the method."""
CORRELATION = (-1.0, 1.0)
"""Range of a rank correlation."""
LDS_GROUP = "linear datamodeling (validation)"
INTERVAL_NAME = (
    "Student t over seeds, clipped to the metric's possible range; for CPU seconds, of the "
    "logarithms (around the geometric mean)"
)
DETECTION_GROUP = "mislabel detection (planted flips)"
"""Detection metrics count only the flips valbench planted; labels wrong in the data count clean."""
FIT_NOTE = (
    "a fit is a different amount of work per method (a TMC prefix, a G-Shapley epoch, a whole "
    "HOST-CP run): not ranked; compare CPU seconds"
)

# --------------------------------------------------------------------------- record access


def is_number(value: Any) -> bool:
    """True for int and float, not bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None."""
    return value if value is not None and math.isfinite(value) else None


def gain_over_random(record: CellRecord) -> float | None:
    """Mean over fractions of (subset value − random subset value), in percentage points;
    None unless both are finite at every fraction the cell has (a mean over fewer fractions
    would not compare with the other methods')."""
    chosen = record.metrics.fraction_values("subset_value", finite_only=False)
    rnd = record.metrics.fraction_values("random_subset_value", finite_only=False)
    values = [*chosen.values(), *rnd.values()]
    if not chosen or chosen.keys() != rnd.keys() or any(finite(v) is None for v in values):
        return None
    return sum(100.0 * (chosen[f] - rnd[f]) for f in chosen) / len(chosen)  # the cell's order


def record_sort_key(record: CellRecord) -> tuple[Any, ...]:
    """Stable order of results lines: dataset, noise, method, seed, cell id."""
    return (
        record.dataset,
        math.inf if record.noise is None else record.noise,
        record.method,
        -math.inf if record.seed is None else record.seed,
        record.cell_id,
    )


# --------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """One leaderboard column: how to read it from a results line, how to show it."""

    key: str
    label: str
    extract: Extract
    higher_is_better: bool
    fmt: str = ".3f"
    group: str = ""
    fraction: str | None = None  # set on the subset-value columns
    description: str = ""
    #: The values the metric can take; an interval is never shown beyond them.
    bounds: tuple[float, float] = (-math.inf, math.inf)
    #: Where the range depends on the cell (its points and flips): the range one cell allows,
    #: or None where its line does not say. A group's column then takes the union over its
    #: cells (:meth:`within`).
    cell_bounds: Callable[[CellRecord], tuple[float, float] | None] | None = None
    #: False for a column not comparable across methods: shown, but not ranked or tested.
    compared: bool = True
    #: Set for a cost: its paired tests (the leaderboard's where ``compared``, valbench
    #: compare's for every cost) read log(max(value, log_floor)), since a cost's seeds scatter
    #: by a factor rather than by an amount; they then compare ratios, and the detectable
    #: difference is a ratio. None: the tests read the values.
    log_floor: float | None = None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def within(self, records: Iterable[CellRecord]) -> Column:
        """This column with :attr:`bounds` narrowed to what ``records`` allow (the union of
        their :attr:`cell_bounds`, over those with a value); unchanged when one does not say."""
        if self.cell_bounds is None:
            return self
        ranges = [self.cell_bounds(rec) for rec in records if self.extract(rec) is not None]
        if not ranges or any(r is None for r in ranges):
            return self
        low = min(r[0] for r in ranges if r is not None)
        high = max(r[1] for r in ranges if r is not None)
        return replace(self, bounds=(max(low, self.bounds[0]), min(high, self.bounds[1])))

    @property
    def geometric(self) -> bool:
        """Whether the column shows geometric means (and intervals of the logarithms): a
        column whose tests read logarithms, so that the best, the ranks and the mean shown
        all answer to the same scale as the tests."""
        return self.tested_on == "log"

    @property
    def mean_name(self) -> str:
        return "geometric mean" if self.geometric else "mean"

    @property
    def tested_on(self) -> str | None:
        """What the leaderboard's tests read: ``"value"``, ``"log"`` (ratios, whose detectable
        difference is a ratio too) or None (a column shown, not compared)."""
        if not self.compared:
            return None
        return "value" if self.log_floor is None else "log"

    def tested(self, values: Sequence[float]) -> list[float]:
        """``values`` on the scale the column's paired tests read."""
        if self.log_floor is None:
            return [float(v) for v in values]
        return [math.log(max(float(v), self.log_floor)) for v in values]

    def detectable_shown(self, tested_difference: float) -> float:
        """A detectable difference on the tested scale as the column states it: the
        difference itself, or for a log-tested column the ratio it is."""
        if self.log_floor is None:
            return tested_difference
        # exp overflows past e^709; a ratio that large is shown as "none" anyway.
        return math.exp(tested_difference) if tested_difference < 700 else math.inf

    def detectable_text(self, value: float) -> str:
        """A detectable difference (as :meth:`detectable_shown` gives it) as the page shows
        it: in the column's format, or for a log-tested column as a ratio, ``×1.06``."""
        if self.log_floor is not None:
            return f"×{value:.3g}"
        return format(value, self.fmt.lstrip("+"))


Extract = Callable[[CellRecord], float | None]


def _auc_range(rec: CellRecord) -> tuple[float, float] | None:
    """The detection AUCs cell ``rec``'s points and flips allow, where its line records them."""
    mislabel = rec.metrics.mislabel if rec.ok else None
    if mislabel is None or mislabel.auc_low is None or mislabel.auc_high is None:
        return None
    return mislabel.auc_low, mislabel.auc_high


def _mislabel(name: str) -> Extract:
    return lambda rec: rec.metric(
        lambda m: None if m.mislabel is None else getattr(m.mislabel, name)
    )


def _curve_area(name: str) -> Extract:
    return lambda rec: rec.metric(
        lambda m: None if getattr(m, name) is None else getattr(m, name).auc
    )


def _cost(name: str) -> Extract:
    return lambda rec: finite(getattr(rec.cost, name))


def _full_data_value(rec: CellRecord) -> float | None:
    return rec.metric(lambda m: m.full_data_value)


def _fraction_getter(name: str, fraction: str, *, scratch: bool = False) -> Extract:
    return lambda rec: rec.metrics.fraction_values(name, scratch=scratch).get(fraction)


def _scratch_full_data_value(rec: CellRecord) -> float | None:
    return rec.metric(lambda m: None if m.scratch is None else m.scratch.full_data_value)


TABLE_COLUMNS: tuple[Column, ...] = (
    Column(
        GAIN_KEY,
        "gain, pp",
        gain_over_random,
        True,
        fmt="+.1f",
        group="vs random",
        description="subset value minus random subset value, mean over fractions, in points",
        bounds=GAIN_BOUNDS,
    ),
    Column(
        "mislabel.recall_at_noise",
        "recall @ noise",
        _mislabel("recall_at_noise"),
        True,
        group=DETECTION_GROUP,
        description="share of the planted label flips among the lowest-valued noise-rate share "
        "of points",
        bounds=UNIT,
    ),
    Column(
        "mislabel.auc",
        "detection AUC",
        _mislabel("auc"),
        True,
        group=DETECTION_GROUP,
        description="area under the recall of planted flips vs fraction inspected curve",
        bounds=UNIT,
        cell_bounds=_auc_range,
    ),
    Column(
        "mislabel.f1_2means",
        "2-means F1",
        _mislabel("f1_2means"),
        True,
        group=DETECTION_GROUP,
        description="F1 against the planted flips of flagging the lower cluster of the exact "
        "1-D 2-means split of the scores",
        bounds=UNIT,
    ),
    Column(
        "removal.auc",
        "removal AUC",
        _curve_area("removal"),
        False,
        group="point removal",
        description="area under test accuracy after removing the highest-valued points",
        bounds=UNIT,
    ),
    Column(
        "lds",
        "LDS",
        lambda rec: rec.metric(lambda m: m.lds),
        True,
        group=LDS_GROUP,
        description="linear datamodeling score: Spearman correlation, over random halves S of "
        "the training set, between the sum of the scores over S and the validation accuracy of "
        "the model trained on S (1: the scores predict every subset's utility in order)",
        bounds=CORRELATION,
    ),
    Column(
        "lds_loss",
        "LDS (loss)",
        lambda rec: rec.metric(lambda m: m.lds_loss),
        True,
        group=LDS_GROUP,
        description="as LDS, against minus the validation cross-entropy of the model trained on S",
        bounds=CORRELATION,
    ),
    Column(
        COST_KEY,
        "CPU s",
        _cost("cpu_s"),
        False,
        fmt=".3g",
        group="cost",
        description="CPU seconds of the method's valuation (its value() call; the harness's "
        "split, reference fits and evaluation are not counted): the cost methods are compared "
        "on, tested as ratios",
        bounds=COST,
        log_floor=CPU_FLOOR_S,
    ),
    # Shown, not ranked: wall time depends on what else ran on the machine; CPU s compares.
    Column(
        "cost.wall_s",
        "wall s",
        _cost("wall_s"),
        False,
        fmt=".3g",
        group="cost",
        bounds=COST,
        compared=False,
        log_floor=CPU_FLOOR_S,
    ),
    Column(
        "cost.peak_mem_mb",
        "process peak MB",
        _cost("peak_mem_mb"),
        False,
        fmt=".0f",
        group="cost",
        description="highest resident memory of the worker process during the method's "
        "valuation (its value() call): it "
        "includes what the process held before the cell (imports, earlier cells), which "
        "varies by tens of MB between cells of one method, so it is shown, not ranked",
        bounds=COST,
        compared=False,
        log_floor=1.0,
    ),
    Column(
        "cost.gpu_peak_mb",
        "GPU peak MB",
        _cost("gpu_peak_mb"),
        False,
        fmt=".3g",
        group="cost",
        description="most GPU memory the method's valuation (its value() call) allocated "
        "through torch beyond what was allocated when it began (torch.cuda."
        "max_memory_allocated on the device valbench trains on); blank where it allocated "
        "none; shown, not ranked, like the process's peak",
        bounds=COST,
        compared=False,
        log_floor=1.0,
    ),
    Column(
        "cost.model_fits",
        "model fits",
        _cost("model_fits"),
        False,
        fmt=".0f",
        group="cost",
        description=FIT_NOTE,
        bounds=COST,
        compared=False,
        log_floor=1.0,
    ),
    Column(
        "cost.fits_per_s",
        "fits / s",
        _cost("fits_per_s"),
        True,
        fmt=".0f",
        group="cost",
        description="model fits per wall second of the method (blank when it fits none); "
        + FIT_NOTE,
        bounds=COST,
        compared=False,
        log_floor=1e-3,
    ),
)
"""Columns after the subset-value ones (which depend on the fractions of the run)."""


def _subset_column(fraction: str) -> Column:
    return Column(
        f"subset_value@{fraction}",
        f"{float(fraction) * 100:g}%",
        _fraction_getter("subset_value", fraction),
        True,
        group="subset value (test accuracy)",
        fraction=fraction,
        description=f"test accuracy of a model trained on the top {float(fraction) * 100:g}%",
        bounds=UNIT,
    )


SCRATCH_FULL_KEY = "scratch.full_data_value"


def _scratch_columns(fractions: Sequence[str], model: str) -> list[Column]:
    """The from-scratch reading's subset-value columns, then its full-data value (the same
    for every method of a seed: shown as the reading's ceiling, not ranked)."""
    group = f"subset value, {model} trained from scratch on pixels (test accuracy)"
    return [
        Column(
            f"scratch.subset_value@{f}",
            f"{float(f) * 100:g}%",
            _fraction_getter("subset_value", f, scratch=True),
            True,
            group=group,
            description=f"test accuracy of {model} trained from scratch on the raw pixels of "
            f"the top {float(f) * 100:g}%",
            bounds=UNIT,
        )
        for f in fractions
    ] + [
        Column(
            SCRATCH_FULL_KEY,
            "100%",
            _scratch_full_data_value,
            True,
            group=group,
            description=f"test accuracy of {model} trained from scratch on every training point",
            bounds=UNIT,
            compared=False,
        )
    ]


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """One leaderboard cell: mean and CI half-width over seeds, rank, best and test marks."""

    mean: float
    half_width: float
    n: int
    fmt: str = ".3f"
    best: bool = False
    rank: float = math.nan
    p_value: float | None = None  # paired test against the best method (None: not tested)
    tied: bool = False  # not significantly different from the best (and not best itself)
    #: Neither best nor tested against the best: fewer than MIN_TEST_PAIRS seeds shared with it
    untested: bool = False
    bounds: tuple[float, float] = (-math.inf, math.inf)
    p_holm: float | None = None  # p_value after Holm's correction over the column's tests
    #: Set for a geometric stat (a cost, :attr:`Column.geometric`): ``mean`` is the geometric
    #: mean of the values each counted as at least this floor, and ``half_width`` the
    #: half-width of the t-interval of their logarithms, so the interval is multiplicative.
    log_floor: float | None = None

    @property
    def present(self) -> bool:
        return self.n > 0 and math.isfinite(self.mean)

    @property
    def at_floor(self) -> bool:
        """A geometric stat whose every value was at most its floor (the mean is the floor)."""
        # _stat sets such a mean to the floor itself.
        return self.log_floor is not None and self.present and self.mean <= self.log_floor

    @property
    def interval(self) -> tuple[float, float] | None:
        """The confidence interval, clipped to :attr:`bounds`; None with fewer than 2 values.

        With 2 seeds the t quantile is 12.7, so mean ± half-width easily leaves the range an
        accuracy can take; the clipped interval is the set of possible values it covers. A
        geometric stat's is multiplicative, ``mean ÷ e^h`` to ``mean × e^h``, its low end at
        least the floor.
        """
        if self.n < 2 or not math.isfinite(self.half_width) or not self.present:
            return None
        if self.log_floor is not None:
            # Each value counted as at least the floor: so is the interval's low end.
            factor = math.exp(min(self.half_width, 700.0))
            return max(self.mean / factor, self.log_floor), self.mean * factor
        low, high = self.bounds
        return max(self.mean - self.half_width, low), min(self.mean + self.half_width, high)

    @property
    def clipped(self) -> bool:
        """True when the interval reaches past the metric's range and is cut to it."""
        interval = self.interval
        return (
            interval is not None
            and self.log_floor is None
            and (
                interval[0] > self.mean - self.half_width
                or interval[1] < self.mean + self.half_width
            )
        )

    @property
    def text(self) -> str:
        if not self.present:
            return "—"
        plain = self.fmt.lstrip("+")
        if self.at_floor:  # every seed under the floor, which the clock cannot resolve
            return f"≤{format(self.log_floor, plain)}"
        shown = format(self.mean, self.fmt)
        interval = self.interval
        if interval is not None and (self.clipped or self.log_floor is not None):
            # Asymmetric once clipped: "± h" would claim values the metric cannot take.
            shown += f" [{format(interval[0], plain)}, {format(interval[1], plain)}]"
        elif interval is not None:
            shown += f" ± {format(self.half_width, plain)}"
        return shown

    @property
    def rank_text(self) -> str:
        if not math.isfinite(self.rank):
            return ""
        return f"{self.rank:g}" if self.rank == int(self.rank) else f"{self.rank:.1f}"


def _stat(
    values: Iterable[float | None],
    fmt: str,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    log_floor: float | None = None,
) -> Stat:
    """Mean and t-interval of the values given; with ``log_floor``, the geometric mean of the
    values each counted as at least ``log_floor``, and the t-interval of their logarithms."""
    kept = [v for v in values if v is not None]
    if not kept:
        return Stat(math.nan, math.nan, 0, fmt, bounds=bounds, log_floor=log_floor)
    if log_floor is None:
        mean, half = mean_ci(kept, confidence=CONFIDENCE)
    else:
        log_mean, half = mean_ci([math.log(max(v, log_floor)) for v in kept], CONFIDENCE)
        # Every value at the floor: the floor itself (exp(log(floor)) may come back an ulp off).
        mean = log_floor if max(kept) <= log_floor else math.exp(log_mean)
    return Stat(mean, half, len(kept), fmt, bounds=bounds, log_floor=log_floor)


def column_stat(col: Column, values: Iterable[float | None]) -> Stat:
    """Column ``col``'s leaderboard cell over ``values`` (one per seed): a geometric stat for
    a column whose tests read logarithms, else the mean and its clipped t-interval."""
    return _stat(values, col.fmt, col.bounds, col.log_floor if col.geometric else None)


def group_title(dataset: str, noise: float | None) -> str:
    """The title of a (dataset, noise) group, as every page and table names it."""
    return dataset if noise is None else f"{dataset} · label noise {noise:g}"


def group_order(key: tuple[str, float | None]) -> tuple[str, float]:
    """Sort key of a (dataset, noise) group: by dataset, then noise, the noise-free last."""
    dataset, noise = key
    return dataset, math.inf if noise is None else noise


def constant_difference_p(diffs: Sequence[float] | np.ndarray, scale: float) -> float | None:
    """The p-value of paired differences that have no spread, where the t statistic is
    undefined: 1.0 when all are zero (up to rounding against ``scale``, the magnitude of the
    values differenced), the exact two-sided sign-flip p-value 2^(1-n) when all are one
    non-zero value; None when they spread (the t-test applies)."""
    d = np.asarray(diffs, dtype=np.float64)
    if np.all(np.abs(d) <= 1e-12 * scale):
        return 1.0
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12 * scale):
        return 2.0 ** (1 - len(d))
    return None


def _difference_scale(a: Sequence[float], b: Sequence[float]) -> float:
    """The magnitude of paired values, against which their differences' rounding is judged."""
    return max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), 1e-300)


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided paired t-test p-value of ``a`` vs ``b``; None with fewer than
    :data:`MIN_TEST_PAIRS` pairs.

    Identical pairs give 1.0. A constant non-zero difference, where the t statistic is
    undefined (no spread), gets the exact sign-flip p-value ``2^(1-n)``: all that is left to
    test is that all n differences share a sign, as likely as 2 in 2^n under the null. Such
    differences come from metrics that move in steps (a recall of 5 of 6 flips against 4 of
    6 in every seed); the t-test's limit, p = 0, would call 3 equal draws certain.
    """
    if len(a) != len(b) or len(a) < MIN_TEST_PAIRS:
        return None
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    constant = constant_difference_p(diffs, _difference_scale(a, b))
    if constant is not None:
        return constant
    from scipy.special import stdtr

    # scipy.stats.ttest_rel's statistic and two-sided p, without its ~2 ms of overhead a
    # call: a column tests every pair of methods (630 pairs for 36).
    n = len(diffs)
    t = float(np.mean(diffs)) / (float(np.std(diffs, ddof=1)) / math.sqrt(n))
    return float(2.0 * stdtr(n - 1, -abs(t)))


@dataclass
class GroupSummary:
    """Everything the report shows for one (dataset, noise): table rows, references, figures."""

    dataset: str
    noise: float | None
    fractions: list[str]
    columns: list[Column]
    rows: dict[str, dict[str, Stat]]  # method -> column key -> stat
    n_seeds: dict[str, int]  # method -> number of ok cells
    random_subset: dict[str, Stat]  # fraction -> stat over seeds
    full_data: Stat
    records: dict[str, list[CellRecord]] = field(default_factory=dict, repr=False)
    figures: list[dict[str, Any]] = field(default_factory=list)  # {"title", "file", "svg", ...}
    notes: list[str] = field(default_factory=list)  # what could not be drawn, and why
    #: method -> number of its partial cells: left out of the table, ranks and figures unless
    #: the report includes partial cells (then they are in, and marked).
    partial: dict[str, int] = field(default_factory=dict)
    partial_included: bool = False
    #: method -> number of its failed or timed-out cells in this (dataset, noise)
    failed: dict[str, int] = field(default_factory=dict)
    #: column key -> smallest difference from the best this run's paired tests could detect
    #: (:func:`min_detectable_difference`; NaN where nothing was tested).
    detectable: dict[str, float] = field(default_factory=dict)
    #: methods whose gain over the random subset is significant (Holm over the group's methods)
    separated_from_random: list[str] = field(default_factory=list)
    #: column key -> the random subsets' stat of a from-scratch subset-value column
    scratch_random_subset: dict[str, Stat] = field(default_factory=dict)

    @property
    def column_groups(self) -> list[tuple[str, int]]:
        """Consecutive runs of :attr:`columns` sharing a ``group``: ``(group, span)``."""
        spans: list[tuple[str, int]] = []
        for col in self.columns:
            if spans and spans[-1][0] == col.group:
                spans[-1] = (col.group, spans[-1][1] + 1)
            else:
                spans.append((col.group, 1))
        return spans

    @property
    def n_subset_columns(self) -> int:
        return sum(1 for c in self.columns if c.fraction is not None)

    @property
    def max_seeds(self) -> int:
        return max(self.n_seeds.values(), default=0)

    @property
    def title(self) -> str:
        return group_title(self.dataset, self.noise)

    @property
    def slug(self) -> str:
        import re

        noise = "" if self.noise is None else f"-noise{self.noise:g}"
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.dataset}{noise}").strip("_") or "x"

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)

    def detectable_text(self, key: str) -> str:
        """The minimum detectable difference of column ``key`` as shown, "—" when nothing was
        tested, "none" when it exceeds every difference the metric can take."""
        value = self.detectable.get(key, math.nan)
        col = self.column(key)
        if col is None or not math.isfinite(value):
            return "—"
        if not self.detectable_within_range(key):
            return "none"
        return col.detectable_text(value)

    def detectable_within_range(self, key: str) -> bool:
        """Whether column ``key``'s detectable difference is one its metric can show (below
        the width of its range; always, for an unbounded metric). For a log-tested column,
        whose detectable difference is a ratio: at most the largest ratio between the
        methods' mean costs here (floored as the tests floor them)."""
        col = self.column(key)
        value = self.detectable.get(key, math.nan)
        if col is None or not math.isfinite(value):
            return False
        if col.log_floor is not None:
            means = [
                max(cells[key].mean, col.log_floor)
                for cells in self.rows.values()
                if key in cells and cells[key].present
            ]
            return len(means) > 1 and value <= max(means) / min(means)
        low, high = col.bounds
        unbounded = not (math.isfinite(low) and math.isfinite(high))
        return unbounded or value <= high - low

    def best_methods(self, key: str) -> list[str]:
        """Methods holding the best mean of column ``key`` (ties kept), sorted."""
        return [m for m, cells in self.rows.items() if key in cells and cells[key].best]


def _per_seed_reference(
    records: Sequence[CellRecord],
    extract: Extract,
    fmt: str,
    bounds: tuple[float, float] = UNIT,
) -> Stat:
    """A reference shared by every method of a seed: averaged within a seed, then over seeds."""
    by_seed: dict[Any, list[float]] = defaultdict(list)
    for rec in records:
        value = extract(rec)
        if value is not None:
            by_seed[rec.seed].append(value)
    return _stat(
        (sum(v) / len(v) for _, v in sorted(by_seed.items(), key=lambda kv: str(kv[0]))),
        fmt,
        bounds,
    )


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values of a family of tests (Holm 1979).

    Sorted ascending, the i-th smallest of m p-values becomes ``(m - i + 1) * p``, made
    non-decreasing along the order and capped at 1; rejecting where the adjusted p < α keeps
    the chance of any false rejection in the family at most α.
    """
    ordered = sorted(p_values.items(), key=lambda kv: (kv[1], kv[0]))
    m = len(ordered)
    out: dict[str, float] = {}
    running = 0.0
    for i, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - i) * p))
        out[name] = running
    return out


def min_detectable_difference(
    sd: float, n: int, alpha: float = ALPHA, power: float = POWER, comparisons: int = 1
) -> float:
    """Smallest true mean difference that a two-sided paired t-test on ``n`` pairs, one of
    ``comparisons`` Holm-corrected tests, detects with probability ``power``.

    A lone true difference among ``comparisons`` tests is rejected at Holm's first step, at
    level α / comparisons; the power of the t-test at a true difference δ is that of a
    noncentral t with ``n - 1`` degrees of freedom and noncentrality δ √n / ``sd`` (``sd``:
    the standard deviation of the paired differences), solved for δ exactly rather than by
    the normal approximation, which is off at a few seeds. NaN with fewer than
    :data:`MIN_TEST_PAIRS` pairs (no test is run), and NaN when the differences have no
    spread (``sd`` 0): the t-test's power is then undefined, not perfect.
    """
    if n < MIN_TEST_PAIRS or not math.isfinite(sd) or sd == 0.0:
        return math.nan
    from scipy import optimize, stats

    df = n - 1
    crit = float(stats.t.ppf(1.0 - alpha / max(1, comparisons) / 2.0, df))

    def shortfall(nc: float) -> float:
        # The far tail is negligible for nc > 0, and scipy returns NaN for some of its values.
        lower = float(stats.nct.cdf(-crit, df, nc))
        return float(stats.nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0) - power

    high = crit + 1.0
    while shortfall(high) < 0:
        high *= 2.0
    nc = optimize.brentq(shortfall, 0.0, high, xtol=1e-10)
    return nc * sd / math.sqrt(n)


def seed_values(records: Sequence[CellRecord], extract: Extract) -> dict[str, float]:
    """A column's value of each seed (by the seed's label) among ``records``."""
    return {str(r.seed): v for r in records if (v := extract(r)) is not None}


def best_on_most_seeds(
    entries: Sequence[tuple[str, Stat]], col: Column | None = None
) -> list[tuple[str, Stat]]:
    """The entries holding the best mean (ties by :func:`same_value`, in the given order)
    among those with the most seeds: a mean over fewer seeds (a seed left out as partial, or
    failed) is over other data, and one lucky seed must not outrank five. Higher is better
    unless ``col`` says otherwise; empty for no entries."""
    if not entries:
        return []
    most = max(st.n for _, st in entries)
    full = [(m, st) for m, st in entries if st.n == most]
    means = [st.mean for _, st in full]
    best_mean = max(means) if col is None or col.higher_is_better else min(means)
    return [(m, st) for m, st in full if same_value(st.mean, best_mean)]


def _mark_column(
    col: Column, rows: dict[str, dict[str, Stat]], by_method: Mapping[str, Sequence[Any]]
) -> float:
    """Set rank, best and the paired-test marks of one column in place.

    The best is the best mean among the methods with the column's most seeds: a mean over fewer
    seeds (a seed left out as partial, say) is over other data. Every pair of methods sharing at
    least :data:`MIN_TEST_PAIRS` seeds is tested (two-sided paired t-test over those seeds, on
    :meth:`Column.tested`'s scale: a cost's logarithm) and the p-values are Holm-corrected over
    all those pairs: the best is chosen from the same data, so testing only against it would not
    keep the chance of any false "worse" at α (6 equal methods over 5 seeds: 8.7 %, 20 methods:
    about 15 %), while a family of every pair does, whichever method comes out best. A method's
    ``p_value`` and ``p_holm`` are those of its pair with the best (with several equal bests,
    the one it is closest to: a method is worse only if worse than each); it is ``tied`` unless
    that test finds it significantly worse: worse on the seeds both hold (the paired test's
    direction) and by its mean (a method with fewer seeds whose mean is better is never marked
    worse, nor one better than the best on their shared seeds); one without a test (too few
    seeds shared with the best) is ``untested``. Returns the column's minimum detectable
    difference (:func:`min_detectable_difference` with the root-mean-square paired standard
    deviation of the t-tests against the best (constant differences, tested by the sign-flip
    rule, left out), their fewest shared seeds and the number of pairs in the family; a ratio
    for a log-tested column), NaN when no t-test could be run.
    """
    methods = [m for m in rows if rows[m][col.key].present]
    if not methods or not col.compared:
        return math.nan
    means = [rows[m][col.key].mean for m in methods]
    ranks = rank_columns(np.asarray(means), higher_is_better=col.higher_is_better)
    most = max(rows[m][col.key].n for m in methods)
    best = [m for m, _ in best_on_most_seeds([(m, rows[m][col.key]) for m in methods], col)]
    best_mean = rows[best[0]][col.key].mean
    values = {m: seed_values(by_method[m], col.extract) for m in methods}
    family: dict[str, float] = {}  # one key per testable pair -> its raw p
    # method -> per best: (the pair's key, raw p, sd and mean of its paired differences from
    # that best, shared seeds)
    with_best: dict[str, list[tuple[str, float, float, float, int]]] = {}
    for i, first in enumerate(methods):
        for second in methods[i + 1 :]:
            seeds = sorted(set(values[first]) & set(values[second]))
            a = col.tested([values[first][s] for s in seeds])
            b = col.tested([values[second][s] for s in seeds])
            p_value = paired_p_value(a, b)
            if p_value is None:
                continue
            pair = f"{first}\x00{second}"
            family[pair] = p_value
            for ref, other, diff in (
                (first, second, np.subtract(b, a)),
                (second, first, np.subtract(a, b)),
            ):
                if ref in best and other not in best:
                    # 0 for differences constant up to rounding (as paired_p_value judges
                    # them): the sign-flip rule tested those, not the t-test whose power the
                    # detectable difference quotes.
                    constant = constant_difference_p(diff, _difference_scale(a, b))
                    sd = 0.0 if constant is not None else float(np.std(diff, ddof=1))
                    with_best.setdefault(other, []).append(
                        (pair, p_value, sd, float(np.mean(diff)), len(seeds))
                    )
    adjusted = holm(family)
    sign = 1.0 if col.higher_is_better else -1.0

    def not_worse(entry: tuple[str, float, float, float, int]) -> bool:
        return adjusted[entry[0]] >= ALPHA or sign * entry[3] >= 0

    # With several equal bests a method is worse only if worse than each of them (never by
    # which one sorts first): its pair with one it is not worse than counts, else the pair
    # with the largest corrected p.
    against_best = {
        m: max(entries, key=lambda e: (not_worse(e), adjusted[e[0]]))
        for m, entries in with_best.items()
    }
    for method, rank in zip(methods, ranks, strict=True):
        pair_with_best = against_best.get(method)
        # Worse only when the seeds both hold say so (the test's direction) and so does its
        # mean: over fewer seeds (one left out as partial, say) the two can disagree.
        mean = rows[method][col.key].mean
        mean_not_worse = sign * (mean - best_mean) > 0 or same_value(mean, best_mean)
        rows[method][col.key] = replace(
            rows[method][col.key],
            best=method in best,
            rank=float(rank),
            p_value=None if pair_with_best is None else pair_with_best[1],
            p_holm=None if pair_with_best is None else adjusted[pair_with_best[0]],
            tied=pair_with_best is not None and (not_worse(pair_with_best) or mean_not_worse),
            # (A run with fewer seeds than a test needs says so once, not in every cell.)
            untested=method not in best and pair_with_best is None and most >= MIN_TEST_PAIRS,
        )
    # A constant difference (sd 0 above) is judged by the sign-flip rule, not the t-test
    # whose power this quotes: its zero would only shrink the root mean square.
    spread = [(sd, n) for _, _, sd, _, n in against_best.values() if sd > 0]
    if not spread:
        return math.nan
    return col.detectable_shown(
        min_detectable_difference(
            math.sqrt(float(np.mean(np.square([sd for sd, _ in spread])))),
            min(n for _, n in spread),
            comparisons=len(family),
        )
    )


def _separated_from_random(by_method: Mapping[str, Sequence[CellRecord]]) -> list[str]:
    """Methods whose subset-value gain over the random subset is significantly above 0
    (two-sided tests, Holm-corrected; a method significantly *below* random is not listed).

    The gain of one seed is the paired difference between the method's subset and the random
    subset of that seed, so a one-sample t-test of the gains against 0 is the paired t-test of
    the method against random selection.
    """
    raw: dict[str, float] = {}
    mean_gain: dict[str, float] = {}
    for method, records in by_method.items():
        gains = list(seed_values(records, gain_over_random).values())
        p_value = paired_p_value(gains, [0.0] * len(gains))
        if p_value is not None:
            raw[method] = p_value
            mean_gain[method] = float(np.mean(gains))
    return sorted(m for m, p in holm(raw).items() if p < ALPHA and mean_gain[m] > 0)


def summarise(records: Iterable[CellRecord], include_partial: bool = False) -> list[GroupSummary]:
    """Aggregate the ``ok`` cells over seeds, one :class:`GroupSummary` per (dataset, noise).

    A partial cell (:attr:`CellRecord.partial`) is never ranked as if complete: it is left out and
    counted in :attr:`GroupSummary.partial`, unless ``include_partial``.
    """
    groups: dict[tuple[str, float | None], list[CellRecord]] = defaultdict(list)
    partial: dict[tuple[str, float | None], dict[str, int]] = defaultdict(dict)
    failed: dict[tuple[str, float | None], dict[str, int]] = defaultdict(dict)
    for rec in sorted(records, key=record_sort_key):
        if rec.failed:
            lost = failed[(rec.dataset, rec.noise)]
            lost[rec.method] = lost.get(rec.method, 0) + 1
        if not rec.ok:
            continue
        key = (rec.dataset, rec.noise)
        if rec.partial:
            method = rec.method
            partial[key][method] = partial[key].get(method, 0) + 1
            if not include_partial:
                groups.setdefault(key, [])
                continue
        groups[key].append(rec)

    out = []
    for (dataset, noise), recs in sorted(groups.items(), key=lambda kv: group_order(kv[0])):
        fractions = sorted(
            {
                f
                for rec in recs
                for name in ("subset_value", "random_subset_value")
                for f in rec.metrics.fraction_values(name)
            },
            key=float,
        )
        scratch_models = sorted({r.metrics.scratch.model for r in recs if r.metrics.scratch})
        scratch = _scratch_columns(fractions, " / ".join(scratch_models)) if scratch_models else []
        candidates = [
            c.within(recs)
            for c in [_subset_column(f) for f in fractions] + scratch + list(TABLE_COLUMNS)
        ]
        by_method: dict[str, list[CellRecord]] = defaultdict(list)
        for rec in recs:
            by_method[rec.method].append(rec)
        rows: dict[str, dict[str, Stat]] = {
            m: {c.key: column_stat(c, (c.extract(r) for r in by_method[m])) for c in candidates}
            for m in sorted(by_method)
        }
        columns = [c for c in candidates if any(rows[m][c.key].present for m in rows)]
        detectable = {col.key: _mark_column(col, rows, by_method) for col in columns}
        notes = []
        if partial[(dataset, noise)]:
            listed = ", ".join(f"{m} ({n})" for m, n in sorted(partial[(dataset, noise)].items()))
            notes.append(
                f"Partial cells (the method's estimate is incomplete, e.g. its budget ran out): "
                f"{listed}. "
                + (
                    "Included in this table as asked; their numbers are not the method's full "
                    "estimate."
                    if include_partial
                    else "Left out of this table, its ranks and figures; `valbench report "
                    "--include-partial RUN_DIR` shows them."
                )
            )
        constant = {m: sum(r.constant_scores for r in rs) for m, rs in sorted(by_method.items())}
        constant = {m: n for m, n in constant.items() if n}
        if constant:
            listed = ", ".join(f"{m} ({n} of {len(by_method[m])})" for m, n in constant.items())
            notes.append(
                f"Every point valued the same (cells): {listed}. Such scores rank nothing: a "
                "subset picked by them (not by the method's own selection) follows the row "
                "order, shuffled when the data were split, so it is a random subset; mislabel "
                "detection by them (where the method gives no detection scores of its own) "
                "counts every point as equally suspect: chance for the rank measures, and no "
                "2-means split (F1 0)."
            )
        out.append(
            GroupSummary(
                dataset=dataset,
                notes=notes,
                noise=noise,
                fractions=fractions,
                columns=columns,
                rows=rows,
                n_seeds={m: len(by_method[m]) for m in rows},
                random_subset={
                    f: _per_seed_reference(recs, _fraction_getter("random_subset_value", f), ".3f")
                    for f in fractions
                },
                full_data=_per_seed_reference(recs, _full_data_value, ".3f"),
                scratch_random_subset={
                    f"scratch.subset_value@{f}": _per_seed_reference(
                        recs, _fraction_getter("random_subset_value", f, scratch=True), ".3f"
                    )
                    for f in fractions
                    if scratch
                },
                records={m: by_method[m] for m in sorted(by_method)},
                partial=dict(sorted(partial[(dataset, noise)].items())),
                partial_included=include_partial,
                failed=dict(sorted(failed[(dataset, noise)].items())),
                detectable=detectable,
                separated_from_random=_separated_from_random(by_method),
            )
        )
    return out


# --------------------------------------------------------------------------- head to head

#: The method family the head-to-head section compares (``Method.family``).
SELECTION_FAMILY = "subset-selection"


@dataclass(frozen=True)
class HeadToHead:
    """One (dataset, noise): the subset selectors against each other and against the best
    per-point valuation, at each fraction, from the group's subset-value statistics."""

    title: str
    slug: str
    fractions: list[str]
    selectors: dict[str, dict[str, Stat]]  # selector -> fraction -> its subset-value stat
    #: fraction -> (the per-point method with the best mean there among those with the most
    #: seeds, or the tied ones as "a, b"; the stat of the first), or None
    best_point: dict[str, tuple[str, Stat] | None]
    #: fraction -> the methods (selectors or the per-point best) holding the top mean, among
    #: those with the most seeds
    top: dict[str, list[str]]
    weighted: list[str]  # selectors whose cells trained on weighted selections


def head_to_head(groups: Sequence[GroupSummary], families: Mapping[str, str]) -> list[HeadToHead]:
    """The head-to-head table of every group holding a method of :data:`SELECTION_FAMILY`
    (``families`` maps method names to their family; unknown methods are per-point ones)."""
    out = []
    for g in groups:
        selectors = [m for m in g.rows if families.get(m) == SELECTION_FAMILY]
        if not selectors:
            continue
        # The best per-point *valuation*: the random baseline is not one.
        others = [m for m in g.rows if m not in selectors and m != RANDOM_METHOD]
        rows: dict[str, dict[str, Stat]] = {m: {} for m in selectors}
        best_point: dict[str, tuple[str, Stat] | None] = {}
        top: dict[str, list[str]] = {}
        for f in g.fractions:
            key = _subset_column(f).key
            for m in selectors:
                rows[m][f] = g.rows[m].get(key) or _stat([], ".3f", UNIT)
            scored = [(m, g.rows[m][key]) for m in others if g.rows[m][key].present]
            best_point[f] = None
            # As the leaderboard's best: the best mean among the most seeds.
            tied = best_on_most_seeds(scored)
            if tied:
                # Methods tied at the best mean are named together (as "a, b").
                best_point[f] = (", ".join(m for m, _ in tied), tied[0][1])
            entries = [(m, rows[m][f]) for m in selectors if rows[m][f].present]
            point = best_point[f]
            if point is not None:
                entries.append(point)
            top[f] = [m for m, _ in best_on_most_seeds(entries)]
        weighted = [
            m
            for m in selectors
            if any(any(r.metrics.subset_weighted.values()) for r in g.records.get(m, []))
        ]
        out.append(HeadToHead(g.title, g.slug, list(g.fractions), rows, best_point, top, weighted))
    return out


# --------------------------------------------------------------------------- across datasets


MIN_CD_METHODS = 3
"""Fewest methods for the Friedman test and the CD diagram: with two, the paired comparison of
the leaderboard is the test, and the χ² form of Friedman's statistic is a poor stand-in for the
exact sign test it then reduces to (on 5 datasets won by one method: p 0.025 against 0.0625)."""

MIN_CD_BLOCKS = 5
"""Fewest datasets (blocks) for the Friedman test and the Nemenyi CD diagram.

Below it the χ² and F approximations of the Friedman statistic are poor (Demšar 2006 asks for
more datasets than that), and the critical difference is so wide that nothing can be separated:
with 2 methods on 3 datasets, or 3 methods on 2, the CD exceeds the largest possible difference
of average ranks. A diagram drawn there only looks like evidence.
"""


@dataclass(frozen=True)
class CDResult:
    """Average ranks across datasets with the Friedman test and the Nemenyi critical difference.

    Each dataset is one block: a method's value on it is its mean over the dataset's noise rates,
    so a dataset run at two noise rates is not counted twice.
    """

    key: str
    label: str
    blocks: list[str]
    methods: list[str]
    average_ranks: dict[str, float]
    friedman_chi2: float
    friedman_p: float
    iman_davenport_f: float
    iman_davenport_p: float
    critical_difference: float
    cliques: list[list[str]]  # maximal runs of methods whose ranks differ by less than the CD

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


def _nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Critical value q_alpha of the Nemenyi test (studentized range / sqrt 2; Demšar Table 5)."""
    from scipy import stats

    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)


def dataset_blocks(
    groups: Sequence[GroupSummary], key: str
) -> tuple[list[str], list[str], np.ndarray]:
    """The Friedman blocks of column ``key``: datasets, methods, values (methods × datasets).

    A method's value on a dataset is its mean over the dataset's noise rates; only methods with
    a value at every noise rate of every dataset take part.
    """
    by_dataset: dict[str, list[GroupSummary]] = defaultdict(list)
    for g in groups:
        if g.column(key) is not None:
            by_dataset[g.dataset].append(g)
    datasets = sorted(by_dataset)
    if not datasets:
        return [], [], np.zeros((0, 0))
    methods = sorted(
        set.intersection(
            *(
                {m for m in g.rows if g.rows[m][key].present}
                for gs in by_dataset.values()
                for g in gs
            )
        )
    )
    values = np.array(
        [
            [float(np.mean([g.rows[m][key].mean for g in by_dataset[d]])) for d in datasets]
            for m in methods
        ]
    ).reshape(len(methods), len(datasets))
    return datasets, methods, values


def friedman_nemenyi(
    groups: Sequence[GroupSummary], key: str, min_blocks: int = MIN_CD_BLOCKS
) -> CDResult | None:
    """Friedman (corrected for ties), Iman–Davenport and Nemenyi over the datasets on column
    ``key`` (Demšar 2006).

    Blocks are datasets (:func:`dataset_blocks`). None with fewer than ``min_blocks`` datasets
    (:data:`MIN_CD_BLOCKS`) or fewer than :data:`MIN_CD_METHODS` methods.
    """
    datasets, methods, matrix = dataset_blocks(groups, key)
    k, n = len(methods), len(datasets)
    if n < max(2, min_blocks) or k < MIN_CD_METHODS:
        return None
    col = next(c for g in groups if (c := g.column(key)) is not None)
    ranks = rank_columns(matrix, higher_is_better=col.higher_is_better)
    avg = ranks.mean(axis=1)
    chi2 = 12.0 * n / (k * (k + 1)) * (float(np.sum(avg**2)) - k * (k + 1) ** 2 / 4.0)
    # Tied methods share an average rank, which shrinks the ranks' spread; dividing by the
    # share of it left (Σ (t³ − t) over each dataset's ties) restores the χ² law.
    tie_sizes = [np.unique(ranks[:, j], return_counts=True)[1] for j in range(n)]
    ties = sum(float(t**3 - t) for sizes in tie_sizes for t in sizes)
    spread_left = 1.0 - ties / (n * k * (k * k - 1))
    chi2 = chi2 / spread_left if spread_left > 1e-12 else 0.0
    from scipy import stats

    p = float(stats.chi2.sf(chi2, k - 1))
    # Iman & Davenport's F form of the statistic: less conservative than the χ² one.
    denominator = n * (k - 1) - chi2
    f_stat = (n - 1) * chi2 / denominator if denominator > 1e-12 else math.inf
    if math.isfinite(f_stat):
        f_p = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    else:
        # Every dataset ranks the methods alike, ties included (F's denominator is 0). Under
        # the null each further dataset matches the first with chance Π t! / k! (the orders
        # of the methods that give the same ranks): k!^(1−n) without ties, not the F limit 0.
        f_p = math.exp(
            sum(
                sum(math.lgamma(t + 1) for t in sizes) - math.lgamma(k + 1)
                for sizes in tie_sizes[1:]
            )
        )
    cd = _nemenyi_q(k) * math.sqrt(k * (k + 1) / (6.0 * n))
    order = sorted(range(k), key=lambda i: (avg[i], methods[i]))
    cliques: list[list[str]] = []
    for i, start in enumerate(order):
        members = [j for j in order[i:] if avg[j] - avg[start] < cd - 1e-12]
        if len(members) < 2:
            continue
        names = [methods[j] for j in members]
        if not any(set(names) <= set(c) for c in cliques):
            cliques.append(names)
    return CDResult(
        key=key,
        label=col.label,
        blocks=datasets,
        methods=methods,
        average_ranks={methods[i]: float(avg[i]) for i in order},
        friedman_chi2=float(chi2),
        friedman_p=p,
        iman_davenport_f=float(f_stat),
        iman_davenport_p=f_p,
        critical_difference=float(cd),
        cliques=cliques,
    )


# --------------------------------------------------------------------------- export


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _stat_json(stat: Stat) -> dict[str, Any]:
    interval = stat.interval
    return {
        "mean": _num(stat.mean),
        # A geometric stat's half-width is of the logarithms: its interval is [low, high].
        "ci_half_width": None if stat.log_floor is not None else _num(stat.half_width),
        "ci_low": None if interval is None else _num(interval[0]),
        "ci_high": None if interval is None else _num(interval[1]),
        "n": stat.n,
        "rank": _num(stat.rank),
        "best": stat.best,
        "p_vs_best": _num(stat.p_value),
        "p_vs_best_holm": _num(stat.p_holm),
        "not_significantly_worse": stat.tied,
        "untested": stat.untested,
    }


def summary_json(
    manifest: Manifest, groups: Sequence[GroupSummary], cd: Sequence[CDResult]
) -> dict[str, Any]:
    """The ``summary.json`` export: every leaderboard number of the HTML report."""
    return {
        "schema": SUMMARY_SCHEMA,
        "run": manifest.name,
        "config_hash": manifest.config_hash,
        "confidence": CONFIDENCE,
        "interval": INTERVAL_NAME,
        "test": {
            "name": TEST_NAME,
            "alpha": ALPHA,
            "against": "the best mean of the column",
            "correction": f"{CORRECTION} over every pair of methods tested in each column",
            "detectable_difference_power": POWER,
        },
        "groups": [
            {
                "dataset": g.dataset,
                "noise": g.noise,
                "fractions": g.fractions,
                "columns": [
                    {
                        "key": c.key,
                        "label": c.label,
                        "group": c.group,
                        "higher_is_better": c.higher_is_better,
                        "tested_on": c.tested_on,
                        "mean": "geometric" if c.geometric else "arithmetic",
                        "log_floor": c.log_floor if c.geometric else None,
                    }
                    for c in g.columns
                ],
                "methods": {
                    m: {
                        "n_seeds": g.n_seeds[m],
                        "values": {c.key: _stat_json(cells[c.key]) for c in g.columns},
                    }
                    for m, cells in g.rows.items()
                },
                "references": {
                    "random_subset": {f: _stat_json(s) for f, s in g.random_subset.items()},
                    "full_data": _stat_json(g.full_data),
                    **(
                        {
                            "scratch_random_subset": {
                                k: _stat_json(s) for k, s in g.scratch_random_subset.items()
                            }
                        }
                        if g.scratch_random_subset
                        else {}
                    ),
                },
                "best": {c.key: g.best_methods(c.key) for c in g.columns},
                "partial_cells": g.partial,
                # As the page shows it: null where it exceeds every difference the metric
                # can show ("none" there; those columns are listed apart).
                "min_detectable_difference": {
                    k: _num(v) if g.detectable_within_range(k) else None
                    for k, v in g.detectable.items()
                },
                "min_detectable_difference_beyond_range": sorted(
                    k
                    for k, v in g.detectable.items()
                    if math.isfinite(v) and not g.detectable_within_range(k)
                ),
                "separated_from_random": g.separated_from_random,
                "partial_included": g.partial_included,
            }
            for g in groups
        ],
        "across_datasets": [cd_json(r) for r in cd],
    }


def cd_json(result: CDResult) -> dict[str, Any]:
    """One across-datasets comparison as ``summary.json`` writes it."""
    return {
        "key": result.key,
        "blocks": result.blocks,
        "average_ranks": result.average_ranks,
        "friedman_chi2": _num(result.friedman_chi2),
        "friedman_p": _num(result.friedman_p),
        "iman_davenport_f": _num(result.iman_davenport_f),
        # Every block ranks the methods alike: F is infinite (JSON has no infinity; the
        # p-value is then exact), which null alone would not tell from "not computed".
        "iman_davenport_f_infinite": math.isinf(result.iman_davenport_f),
        "iman_davenport_p": _num(result.iman_davenport_p),
        "nemenyi_critical_difference": _num(result.critical_difference),
        "cliques": result.cliques,
    }
