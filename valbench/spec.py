"""What a run computes: RunSpec (from presets, a TOML config and CLI flags) expanded into Cells."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tomllib
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from valbench.errors import ConfigError, UsageError
from valbench.types import Budget

__all__ = [
    "PRESETS",
    "DEFAULT_PRESET",
    "RunSpec",
    "Cell",
    "CellProgressFn",
    "load_config_file",
    "parse_param_assignments",
    "split_names",
    "stable_int",
    "build_spec",
    "dataset_slug",
    "FILE_PREFIX",
    "CONFIG_KEYS",
    "METRICS",
    "DEFAULT_METRICS",
    "DEFAULT_LDS_SUBSETS",
    "spec_changes",
]

#: Presets pick dataset slices and budgets; ``quick`` is the default and keeps
#: ``valbench run --methods all`` within minutes on a 2-core laptop.
PRESETS: dict[str, dict[str, Any]] = {
    "ci": {
        "datasets": ["synthetic", "breast_cancer"],
        "noise": [0.1],
        "seeds": 2,
        "max_train": 120,
        "budget": "fits=300,seconds=60",
    },
    "quick": {
        "datasets": ["synthetic", "breast_cancer", "digits"],
        "noise": [0.1],
        "seeds": 3,
        "max_train": 250,
        "budget": "fits=600,seconds=60",
        "lds_subsets": 100,
    },
    "full": {
        "datasets": ["synthetic", "breast_cancer", "digits", "wine", "mnist1d", "mnist-5k"],
        "noise": [0.1, 0.2],
        "seeds": 5,
        "max_train": None,
        "budget": "fits=5000",
    },
    # HOST-CP's own setting (Das et al. 2021): its variants against the valuation methods the
    # paper compared with and the subset-selection family, on planted redundancy and on
    # images, where θ is an MLP on deep features learned from the noisy training data (the
    # paper: on ResNet-18 features). --model fashion-mnist=cnn with --param
    # fashion-mnist.features=raw runs every method on the CNN trained from scratch.
    "hostcp-paper": {
        "methods": [
            *("hostcp", "hostcp-fast", "hostcp-smooth", "hostcp-ds3"),
            *("influence", "tmc-shapley", "g-shapley", "representer", "tracin", "random"),
            *("kcenter", "facility-location", "craig", "gradmatch", "glister", "herding"),
            *("uncertainty", "moderate", "ccs"),
        ],
        "datasets": ["synthetic", "fashion-mnist", "mnist-5k"],
        # CIFAR-10 (the paper's) joins when its files are on this machine; a preset never
        # downloads. It adds a third of the run's time.
        "datasets_when_present": ["cifar10"],
        "noise": [0.1],
        "seeds": 3,
        "fractions": [0.05, 0.1, 0.2, 0.3, 0.5],
        "model": "mlp",
        "max_train": {"*": 400, "fashion-mnist": 600, "mnist-5k": 600, "cifar10": 600},
        "budget": "fits=1000,seconds=120",
        "params": {
            "fashion-mnist": {"features": "cnn"},
            "mnist-5k": {"features": "cnn"},
            "cifar10": {"features": "cnn"},
        },
        # The paper's own reading of subset value: the network trained on the subset. 30
        # epochs, not the recipe's 8: a 30-image subset (5 % of 600) then takes 30 steps, not
        # 8, and random subsets read 0.28 (5 %) to 0.80 (50 %) on mnist-5k instead of chance.
        "scratch_model": "cnn:epochs=30",
    },
}
DEFAULT_PRESET = "quick"
#: Optional metrics ``--metrics`` can select (the rest are always measured): ``lds``, the
#: linear datamodeling score. ``none`` selects none of them.
METRICS = ("lds",)
DEFAULT_METRICS: tuple[str, ...] = ("lds",)
#: Random half-subsets behind the LDS (the m = 100 of Park et al. 2023).
DEFAULT_LDS_SUBSETS = 100
#: More LDS subsets than any benchmark needs (each is one model fit per dataset, noise, seed).
MAX_LDS_SUBSETS = 100_000
MIN_LDS_SUBSETS = 3
#: More seeds than any benchmark needs; a typo like ``--seeds 1000000000`` must not build a
#: billion-cell grid in memory.
MAX_SEEDS = 10_000
#: Random subsets averaged per fraction for the random reference (each a model fit per
#: fraction of every cell): more than any benchmark needs; a typo must not stall a run.
MAX_RANDOM_REPEATS = 1_000
#: --timeout above this (about 116 days) is a typo; larger values overflow the timers.
MAX_TIMEOUT_S = 1e7
#: --max-memory below this leaves a worker no room to start (it can hang instead of failing);
#: above MAX_MEMORY_MB (1 PiB) the address-space limit overflows.
MIN_MEMORY_MB = 64
MAX_MEMORY_MB = 2**30
#: A config file larger than this is not a config file (and /dev/zero must not be read whole).
MAX_CONFIG_BYTES = 2**20

_NAME_RE = re.compile(r"[^A-Za-z0-9_-]+")


FILE_PREFIX = "file:"


#: Version of the logreg evaluation model's defaults, in the config hash of every run that
#: evaluates with logreg. 2: one game (float64, tolerance 1e-8, Newton for two classes; see
#: ``valbench.models.ModelSpec``), whose numbers differ from version 1's (float32 L-BFGS to
#: 3e-4), so a run directory of version 1 is refused, never resumed with the new model.
#: 3: the L-BFGS and Newton cap raised from 150 to 1,000 iterations, so that the tolerance
#: ends every fit (version 2's cap stopped most fits on noisy digits short of it).
LOGREG_VERSION = 3
#: Versions of built-in methods whose default numbers changed, in the config hash of every
#: run that includes them, so that a run directory begun before the change is refused rather
#: than resumed with cells of both kinds (runs without them keep their hashes). lava 2: the
#: authors' annealed Sinkhorn and entropic label costs (1: converged potentials, exact costs).
#: banzhaf 2, beta-shapley 2: subsets drawn in whole chunks whatever a request affords (1 drew
#: what each request afforded, so a paced or cut-short budget evaluated other subsets; the
#: numbers of runs whose every request was a whole chunk are unchanged).
METHOD_VERSIONS = {"lava": 2, "banzhaf": 2, "beta-shapley": 2}
#: 2: a ``file:`` dataset's planted flips and random draws are seeded by the file's content
#: fingerprint (version 1 seeded them by the path as written: a moved copy changed every number).
FILE_SEED_VERSION = 2


def dataset_slug(name: str) -> str:
    """A file-name-safe label of a dataset: ``file:PATH`` becomes ``file-<stem>-<hash>``."""
    if not name.startswith(FILE_PREFIX):
        return name
    path = name[len(FILE_PREFIX) :]
    stem = _NAME_RE.sub("_", Path(path).stem).strip("_") or "data"
    return f"file-{stem}-{stable_int(path):08x}"


def stable_int(text: str) -> int:
    """A process-independent 32-bit hash (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's numbers (plus how to execute it)."""

    methods: tuple[str, ...] = ("random", "loo")
    datasets: tuple[str, ...] = ("synthetic", "breast_cancer", "digits")
    noise: tuple[float, ...] = (0.1,)
    seeds: int = 3
    root_seed: int = 0
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    model: str = "logreg"
    #: Per-dataset evaluation models, overriding ``model`` for the datasets named.
    model_by_dataset: Mapping[str, str] = field(default_factory=dict)
    #: A second subset-value reading: this model (``cnn``, say) trained from scratch on the raw
    #: pixels of each subset, on datasets whose features are not pixels (``features=cnn``).
    #: None: only the evaluation model's reading.
    scratch_model: str | None = None
    budget: str = "none"
    max_train: int | None = None
    #: Per-dataset caps on training points, overriding ``max_train`` for the datasets named.
    max_train_by_dataset: Mapping[str, int | None] = field(default_factory=dict)
    noise_model: str = "uniform"
    imbalance: float = 1.0
    label_column: str | None = None
    #: Id column of ``file:`` .csv/.parquet data: kept out of the features, carried into exports.
    id_column: str | None = None
    random_repeats: int = 3
    #: Optional metrics measured on every ok cell (see ``METRICS``).
    metrics: tuple[str, ...] = DEFAULT_METRICS
    #: Random half-subsets behind the LDS.
    lds_subsets: int = DEFAULT_LDS_SUBSETS
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Content hash of each ``file:PATH`` dataset (set by ``resolve_names``): a file edited in
    #: place makes another run, never a resume of cells computed from the old content.
    data_fingerprints: Mapping[str, str] = field(default_factory=dict)
    preset: str = DEFAULT_PRESET
    # Execution only: these do not change a cell's numbers, so they are not in the config hash.
    jobs: int = 1
    timeout: float | None = None
    max_memory_mb: float | None = None
    #: Where the deep evaluation models train: ``auto`` (a GPU when present), ``cpu``, ``cuda``.
    #: Execution only, like ``jobs``: a GPU changes float rounding, not what is computed.
    device: str = "auto"

    EXECUTION_ONLY = ("jobs", "timeout", "preset", "max_memory_mb", "device")

    def __post_init__(self) -> None:
        # bool is an int subclass: True would pass as 1 (a 1 s timeout, 1 seed).
        for key in ("noise", "fractions"):
            if any(isinstance(v, bool) for v in getattr(self, key)):
                raise UsageError(f"{key} must be numbers, not true/false")
        for key, flag in (
            ("seeds", "--seeds"),
            ("root_seed", "--root-seed"),
            ("jobs", "--jobs"),
            ("random_repeats", "random_repeats"),
            ("max_train", "--max-train"),
            ("lds_subsets", "--lds-subsets"),
        ):
            value = getattr(self, key)
            if isinstance(value, bool | np.bool_):
                raise UsageError(f"{flag} must be a whole number, not true/false")
            if isinstance(value, np.integer):  # an API caller's np.int64(3): JSON needs an int
                object.__setattr__(self, key, value := int(value))
            if key != "max_train" and not isinstance(value, int):
                # (max_train has its own check below.) The CLI and config files give ints;
                # the Python API can give 2.5, which failed later, deep in cells().
                raise UsageError(f"{flag} must be a whole number, got {value!r}")
        for key, flag in (
            ("timeout", "--timeout"),
            ("max_memory_mb", "--max-memory"),
            ("imbalance", "--imbalance"),
        ):
            value = getattr(self, key)
            if isinstance(value, bool):
                raise UsageError(f"{flag} must be a number, not true/false")
            if isinstance(value, int) and not -1e308 < value < 1e308:  # no float holds it
                # (Not the integer itself: str() refuses one of over 4,300 digits.)
                raise UsageError(
                    f"{flag} must be a number a float can hold, got an integer past 1e308"
                )
        if not self.methods:
            raise UsageError("no methods selected; name at least one with --methods (or 'all')")
        if not self.datasets:
            raise UsageError("no datasets selected; name at least one with --datasets")
        if not self.fractions:
            raise UsageError("no fractions given; use e.g. --fractions 0.1,0.2")
        if not self.noise:
            raise UsageError("no noise rates given; use e.g. --noise 0.1 (or 0 for none)")
        for key in ("noise", "fractions"):
            # -0.0 is 0.0: as its own rate it would run the noise-free cells again as "noise-0".
            values = getattr(self, key)
            object.__setattr__(self, key, tuple(0.0 if v == 0 else v for v in values))
        for key in ("noise", "fractions"):
            # Labels, cell ids and stored keys keep 6 significant digits: 0.1000001 would be
            # shown everywhere as 0.1 while its subsets were cut at 0.1000001 (26 of 250).
            for v in getattr(self, key):
                if math.isfinite(v) and float(f"{float(v):g}") != float(v):
                    raise UsageError(
                        f"--{key} value {float(v)!r} has more significant digits than the 6 "
                        f"that labels and cell names keep (it would be shown as {float(v):g}); "
                        "give at most 6"
                    )
        for key in ("noise", "fractions"):
            # A repeated rate would run (and count) the same cells twice. Cell ids, file names
            # and labels write a rate to 6 significant digits: two rates equal there would
            # share a cell id, and one cell's results would overwrite the other's.
            labels = [f"{float(v):g}" for v in getattr(self, key)]
            repeated = sorted({v for v in labels if labels.count(v) > 1})
            if repeated:
                raise UsageError(
                    f"--{key} lists {', '.join(repeated)} more than once (to 6 significant "
                    "digits, as cells are named); give each value once"
                )
        # Two datasets named alike in cell ids (file: paths whose 32-bit hashes collide) would
        # share cells, one's results overwriting the other's.
        slugs: dict[str, str] = {}
        for name in self.datasets:
            other = slugs.setdefault(dataset_slug(name), name)
            if other != name:
                raise UsageError(
                    f"datasets {other} and {name} would share cell names "
                    f"({dataset_slug(name)}); rename or move one of the files"
                )
        # One set, one run: the order a list is typed in changes neither the hash nor a number.
        for key in ("noise", "fractions"):
            object.__setattr__(self, key, tuple(sorted(getattr(self, key))))
        for f in self.fractions:
            # 1 is refused: the removal curve at 1 would train on nothing, failing every cell.
            if not (0 < f < 1):
                raise UsageError(
                    f"fraction {f:g} is outside (0, 1); use e.g. --fractions 0.05,0.1,0.5"
                )
        for rate in self.noise:
            if not (0 <= rate < 1):
                raise UsageError(f"noise rate {rate:g} is outside [0, 1); use e.g. --noise 0.1")
        if self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1 (the number of seeds), got {self.seeds}")
        if self.seeds > MAX_SEEDS:
            raise UsageError(f"--seeds must be <= {MAX_SEEDS}, got {self.seeds}")
        if self.root_seed < 0:
            raise UsageError(f"--root-seed must be >= 0, got {self.root_seed}")
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        if self.timeout is not None:
            if not math.isnan(self.timeout) and self.timeout <= 0:
                raise UsageError(f"--timeout must be > 0 seconds, got {self.timeout:g}")
            if not self.timeout <= MAX_TIMEOUT_S:
                raise UsageError(
                    f"--timeout must be a finite number of seconds <= {MAX_TIMEOUT_S:g}, "
                    f"got {self.timeout:g}"
                )
        if self.max_memory_mb is not None:
            if not self.max_memory_mb <= MAX_MEMORY_MB:
                raise UsageError(
                    f"--max-memory must be a finite number of MB <= {MAX_MEMORY_MB}, "
                    f"got {self.max_memory_mb:g}"
                )
            if self.max_memory_mb < MIN_MEMORY_MB:
                raise UsageError(
                    f"--max-memory must be at least {MIN_MEMORY_MB} MB (a worker needs that "
                    f"much to start), got {self.max_memory_mb:g}"
                )
        if any(isinstance(c, np.integer) for c in self.max_train_by_dataset.values()):
            plain = {
                k: int(c) if isinstance(c, np.integer) else c
                for k, c in self.max_train_by_dataset.items()
            }
            object.__setattr__(self, "max_train_by_dataset", plain)
        for name, cap in (("", self.max_train), *self.max_train_by_dataset.items()):
            if isinstance(cap, bool | np.bool_) or not (cap is None or isinstance(cap, int)):
                raise UsageError(
                    f"--max-train {name}{'=' if name else ''}{cap!r}: not a whole number"
                )
            if cap is not None and cap < 2:
                where = f" for {name}" if name else ""
                raise UsageError(f"--max-train must be >= 2{where}, got {cap}")
        for flag, named in (
            ("--max-train", self.max_train_by_dataset),
            ("--model", self.model_by_dataset),
        ):
            unknown = sorted(set(named) - set(self.datasets))
            if unknown and "all" not in self.datasets:
                raise UsageError(
                    f"{flag} names {', '.join(unknown)}, not among the run's datasets "
                    f"({', '.join(self.datasets)})"
                )
        if not (1 <= self.random_repeats <= MAX_RANDOM_REPEATS):
            raise UsageError(
                f"random_repeats must be in [1, {MAX_RANDOM_REPEATS}] (each is a model fit per "
                f"fraction of every cell), got {self.random_repeats}"
            )
        for name in self.metrics:
            if name not in METRICS:
                raise UsageError(
                    f"unknown metric {name!r} in --metrics; valid: {', '.join(METRICS)} or none"
                )
        if len(set(self.metrics)) != len(self.metrics):
            raise UsageError(f"--metrics names a metric twice: {','.join(self.metrics)}")
        if not (MIN_LDS_SUBSETS <= self.lds_subsets <= MAX_LDS_SUBSETS):
            raise UsageError(
                f"--lds-subsets must be in [{MIN_LDS_SUBSETS}, {MAX_LDS_SUBSETS}] (a rank "
                f"correlation of two subsets is always ±1), got {self.lds_subsets}"
            )
        Budget.parse(self.budget)  # validates
        for name in (*self.methods, *self.datasets):
            if name.startswith(FILE_PREFIX) and name in self.datasets:
                if len(name) == len(FILE_PREFIX):
                    raise UsageError("--datasets file: needs a path, e.g. file:my_embeddings.npz")
            elif name != _NAME_RE.sub("_", name):
                # --datasets splits at commas: "file:a,b.csv" arrives as "file:a" and "b.csv".
                comma = any(d.startswith(FILE_PREFIX) for d in self.datasets) and (
                    name in self.datasets and "." in name
                )
                hint = (
                    " (--datasets splits at commas: name a file whose path holds a comma in a "
                    'config file, datasets = ["file:a,b.csv"])'
                    if comma
                    else ""
                )
                raise UsageError(f"name {name!r} may only use letters, digits, '_' and '-'{hint}")
        from valbench.data import NOISE_MODELS

        if self.noise_model not in NOISE_MODELS:
            raise UsageError(
                f"unknown noise model {self.noise_model!r}; valid: {', '.join(NOISE_MODELS)}"
            )
        if self.id_column is not None and self.id_column == self.label_column:
            raise UsageError(f"--id-column {self.id_column!r} is also the --label-column")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not (1 <= self.imbalance < math.inf):
            raise UsageError(
                f"--imbalance is a max/min class-size ratio >= 1, got {self.imbalance:g}"
            )

    def model_for(self, dataset: str) -> str:
        """The evaluation model of ``dataset``: its own if given, else ``model``."""
        return self.model_by_dataset.get(dataset, self.model)

    def train_cap(self, dataset: str) -> int | None:
        """The cap on training points of ``dataset``: its own if given, else ``max_train``."""
        return self.max_train_by_dataset.get(dataset, self.max_train)

    @property
    def budget_obj(self) -> Budget:
        return Budget.parse(self.budget)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, recorded in the manifest."""
        data = asdict(self)
        data["params"] = {k: dict(v) for k, v in self.params.items()}
        data["data_fingerprints"] = dict(self.data_fingerprints)
        data["max_train_by_dataset"] = dict(self.max_train_by_dataset)
        data["model_by_dataset"] = dict(self.model_by_dataset)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**kwargs)

    def config_hash(self) -> str:
        """Hash of what determines the numbers; a run directory belongs to one hash."""
        data = {k: v for k, v in self.to_dict().items() if k not in self.EXECUTION_ONLY}
        # Every cell is seeded by its own identity, so the order methods and datasets are
        # named in changes no number (only the report's order): a rerun naming them in another
        # order resumes the run. Runs that named them in sorted order keep their hashes.
        data["methods"], data["datasets"] = sorted(data["methods"]), sorted(data["datasets"])
        if data["data_fingerprints"]:
            # Version 2 seeds a file's flips and draws by its bytes, not by its path string.
            data["file_seed_version"] = FILE_SEED_VERSION
        else:  # runs without file: datasets keep their hashes
            del data["data_fingerprints"]
        if data["id_column"] is None:  # so do runs without an id column
            del data["id_column"]
        if not data["max_train_by_dataset"]:  # and runs with one cap for every dataset
            del data["max_train_by_dataset"]
        if not data["model_by_dataset"]:  # and runs with one model for every dataset
            del data["model_by_dataset"]
        if data["scratch_model"] is None:  # and runs without a from-scratch reading
            del data["scratch_model"]
        # Runs with the default metrics keep the hash they had before --metrics existed.
        if tuple(data["metrics"]) == DEFAULT_METRICS:
            del data["metrics"]
        if data["lds_subsets"] == DEFAULT_LDS_SUBSETS:
            del data["lds_subsets"]
        # A run with a logreg evaluation model hashes the version of its defaults, whose
        # numbers the model string alone does not pin (runs of other models keep their hashes).
        if any(self.model_for(d).partition(":")[0] == "logreg" for d in self.datasets):
            data["logreg_version"] = LOGREG_VERSION
        versions = {m: METHOD_VERSIONS[m] for m in self.methods if m in METHOD_VERSIONS}
        if versions:
            data["method_versions"] = versions
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def cells(self) -> list[Cell]:
        """The grid: one cell per (dataset, noise, seed, method), in a stable order."""
        return [
            Cell(
                dataset=d,
                noise=float(n),
                seed=s,
                method=m,
                data_fingerprint=self.data_fingerprints.get(d, ""),
            )
            for d in self.datasets
            for n in self.noise
            for s in range(self.seeds)
            for m in self.methods
        ]

    def with_overrides(self, **changes: Any) -> RunSpec:
        return replace(self, **changes)


@dataclass(frozen=True)
class Cell:
    """One (dataset, noise, seed, method): the unit of scheduling, failure, resume and reporting."""

    dataset: str
    noise: float
    seed: int
    method: str
    #: A ``file:`` dataset's content fingerprint: it seeds the cell's draws in place of the
    #: path, so the same bytes give the same numbers wherever they lie and however their path
    #: is written. Empty for a built-in dataset (its name seeds them).
    data_fingerprint: str = field(default="", repr=False)

    @property
    def cell_id(self) -> str:
        return f"{dataset_slug(self.dataset)}.{self.method}.noise{self.noise:g}.seed{self.seed}"

    def data_seed(self, root_seed: int) -> int:
        """Seed of the split: shared by every method and noise rate of this seed."""
        return int(np.random.SeedSequence([root_seed, self.seed]).generate_state(1)[0])

    def _seq(self, root_seed: int, *parts: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(
            [
                root_seed,
                self.seed,
                stable_int(self.data_fingerprint or self.dataset),
                round(self.noise * 1_000_000),
                *parts,
            ]
        )

    def noise_rng(self, root_seed: int) -> np.random.Generator:
        """RNG of the label flips (same for every method)."""
        return np.random.default_rng(self._seq(root_seed, 1))

    def eval_rng(self, root_seed: int) -> np.random.Generator:
        """RNG of the random-subset reference (same for every method)."""
        return np.random.default_rng(self._seq(root_seed, 2))

    def lds_rng(self, root_seed: int) -> np.random.Generator:
        """RNG of the LDS subsets (same for every method)."""
        return np.random.default_rng(self._seq(root_seed, 4))

    def method_rng(self, root_seed: int) -> np.random.Generator:
        """RNG handed to the method."""
        return np.random.default_rng(self._seq(root_seed, 3, stable_int(self.method)))


CellProgressFn = Callable[[Cell, int, int], None]
"""``on_progress(cell, done, total)``: a cell's inner progress, as the scheduler reports it.

Not :data:`valbench.types.ProgressFn`, the ``progress(done, total)`` a method calls: the
scheduler adds which cell it came from.
"""


def _parse_scalar(text: str) -> Any:
    """Read a CLI parameter value as TOML would (numbers, booleans, strings)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_param_assignments(items: list[str]) -> dict[str, dict[str, Any]]:
    """Read ``--param method.key=value`` items into ``{method: {key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        # The name before the last dot: a method, a dataset, or file:PATH (which has dots).
        m = re.fullmatch(r"([^=]+)\.([A-Za-z_][A-Za-z0-9_]*)=(.*)", item)
        if not m:
            raise UsageError(
                f"--param {item!r} is not of the form METHOD.NAME=VALUE (e.g. loo.batch_size=32)"
            )
        given = out.setdefault(m.group(1), {})
        if m.group(2) in given:
            # The same setting twice is a typo or a conflict: refused, as --noise 0.1,0.1 is.
            raise UsageError(
                f"--param {m.group(1)}.{m.group(2)} is given twice; keep one "
                f"({m.group(1)}.{m.group(2)}={given[m.group(2)]!r} and {item!r})"
            )
        given[m.group(2)] = _parse_scalar(m.group(3))
    return out


CONFIG_KEYS = {
    "methods",
    "datasets",
    "noise",
    "seeds",
    "root_seed",
    "fractions",
    "model",
    "scratch_model",
    "device",
    "budget",
    "max_train",
    "random_repeats",
    "metrics",
    "lds_subsets",
    "params",
    "preset",
    "jobs",
    "timeout",
    "max_memory_mb",
    "noise_model",
    "imbalance",
    "label_column",
    "id_column",
    "data_dir",
    "out",
}


#: `valbench run` flags that are not config keys: a config file naming one is told to give
#: it on the command line instead of "unknown key".
FLAG_ONLY = frozenset(
    {"backend", "scheduler", "address", "overwrite", "retry_failed", "progress", "no_progress"}
)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config; unknown keys are refused with the list of valid ones."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a TOML file")
    try:
        # Read one byte past the limit: enough to tell a too-large file (or /dev/zero).
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - CONFIG_KEYS)
    flag_only = [k for k in unknown if k in FLAG_ONLY]
    if flag_only:
        flags = ", ".join("--" + k.replace("_", "-") for k in flag_only)
        raise ConfigError(
            f"config file {path}: {', '.join(flag_only)} is a command-line flag only ({flags}), "
            "not a config key; give it on the command line"
        )
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(sorted(CONFIG_KEYS))}"
        )
    for key in ("out", "data_dir"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"config file {path}: {key} must be a path string, got {data[key]!r}")
        if key in data and not data[key].strip():  # Path("") is the current directory
            raise ConfigError(f"config file {path}: {key} is empty; name a directory or drop it")
    params = data.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ConfigError(
            f"config file {path}: [params] must hold one table per method, e.g. [params.loo]"
        )
    # Relative paths in the file are relative to the file, wherever the command runs from.
    for key in ("out", "data_dir"):
        if key in data:
            data[key] = _beside(path, data[key])

    def beside(name: str) -> str:
        if not name.startswith(FILE_PREFIX):
            return name
        return FILE_PREFIX + _beside(path, name[len(FILE_PREFIX) :])

    if "datasets" in data:
        data["datasets"] = [beside(name) for name in _as_names("datasets", data["datasets"])]
    # [params."file:data.csv"] names the same file as datasets = ["file:data.csv"].
    if "params" in data:
        data["params"] = {beside(name): values for name, values in params.items()}
    return data


def _beside(config: Path, value: str) -> str:
    """``value`` as a path relative to the config file's folder (absolute and ``~`` paths kept)."""
    if value.startswith("~") or Path(value).is_absolute():
        return value
    return str(config.parent / value)


def split_names(key: str, text: str) -> list[str]:
    """The comma-separated names of ``text``; an empty name between commas (``a,,b``, a
    trailing comma) is refused: it is usually a name left out, not a spare comma."""
    names = [p.strip() for p in text.split(",")]
    if len(names) > 1 and not all(names):
        raise UsageError(
            f"{key} {text!r} has an empty name between commas; remove the extra comma or add "
            "the missing name"
        )
    return [n for n in names if n]


def _as_names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = split_names(key, value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise UsageError(f'{key} must be a list of names, e.g. {key} = ["a", "b"]')
    return tuple(value)


def _as_metrics(value: Any) -> tuple[str, ...]:
    """``--metrics lds`` / ``none`` / a TOML list; ``none`` (alone) selects no optional metric."""
    names = _as_names("metrics", value)
    if not names:
        raise UsageError("--metrics is empty; name metrics (e.g. lds) or none")
    if "none" in names:
        if len(names) > 1:
            raise UsageError("--metrics none cannot be combined with other metrics")
        return ()
    return names


def _as_floats(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) > 1 and not all(p.strip() for p in parts):
            # "0.1,,0.2" or "0.1,": a typo, refused as split_names refuses one in a name list.
            raise UsageError(
                f"{key} {value!r} has an empty part between commas; remove the extra comma or "
                "add the missing number"
            )
        try:
            value = [float(p) for p in parts if p.strip()]
        except ValueError:
            raise UsageError(f"{key} must be comma-separated numbers, got {value!r}") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise UsageError(f"{key} must be a list of numbers, got {value!r}")
    try:
        return tuple(float(v) for v in value)
    except OverflowError:  # a TOML integer of 400 digits
        raise UsageError(f"{key} holds a number too large to be a rate or fraction") from None


def _as_int(key: str, value: Any, optional: bool = False) -> int | None:
    # "all" as --help shows an uncapped max_train; "none" as the config file's spelling.
    if optional and (value is None or value in ("none", "all", "")):
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise UsageError(f"{key} must be a whole number, got {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{key} must be a whole number, got {value!r}")
    return value


def _as_caps(value: Any) -> tuple[bool, int | None, dict[str, int | None]]:
    """One source's ``max_train``: (whether it sets the default cap, that cap, per-dataset caps).

    Accepts a whole number or "none" (every dataset), a mapping ``{dataset: cap}`` whose key
    ``"*"`` is the default, or the command line's "250,fashion-mnist=2000,synthetic=none".
    """
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str) and ("=" in value or "," in value):
        items = []
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):  # "250,,wine=40" or "wine=40,": refused as in --noise
            raise UsageError(
                f"max_train {value!r} has an empty part between commas; remove the extra "
                "comma or add the missing cap"
            )
        for part in parts:
            name, eq, cap = part.partition("=")
            items.append((name.strip(), cap.strip()) if eq else ("*", name))
    else:
        return True, _as_int("max_train", value, optional=True), {}
    _one_each("max_train", items)
    has_default, default, per = False, None, {}
    for name, cap in items:
        if isinstance(cap, str) and not cap:
            # "wine=$CAP" (or "*=$CAP") with CAP unset must not lift a cap quietly.
            raise UsageError(f"max_train {name}= gives no cap; give a number, or none for no cap")
        number = _as_int(f"max_train {name}" if name != "*" else "max_train", cap, optional=True)
        if name == "*":
            has_default, default = True, number
        else:
            per[name] = number
    return has_default, default, per


def _merge_caps(
    values: Sequence[Any], datasets: Sequence[str], from_preset: bool
) -> tuple[int | None, dict[str, int | None]]:
    """Merge ``max_train`` from preset < config < flags: later defaults and entries win.

    A later source's default replaces the earlier sources' per-dataset caps too (``--max-train
    none`` lifts a preset's ``fashion-mnist=600``); entries alone keep the earlier default and
    entries. A preset's per-dataset caps apply only to the datasets the run selects (the user
    may have chosen others); a cap the user names for a dataset outside the run is refused
    later.
    """
    default: int | None = None
    per: dict[str, int | None] = {}
    for i, value in enumerate(values):
        has_default, cap, caps = _as_caps(value)
        if has_default:
            default = cap
            per = {}
        if i == 0 and from_preset:
            caps = {k: v for k, v in caps.items() if k in datasets}
        per.update(caps)
    return default, per


def _model_entries(value: Any) -> list[tuple[str, str]]:
    """One source's ``model`` as ``(dataset or "*", model)`` pairs.

    Accepts a model string (``cnn:epochs=30,lr=0.002`` carries its own overrides), a list of
    them where ``DATASET=MODEL`` entries name one dataset (the repeatable ``--model``), or a
    mapping ``{dataset: model}`` whose key ``"*"`` is the default.
    """
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
        for entry in value if isinstance(value, list | tuple) else [value]:
            if not isinstance(entry, str):
                raise UsageError(f"model must be a string, got {entry!r}")
            head = entry.partition(":")[0]
            name, eq, rest = entry.partition("=")
            items.append((name.strip(), rest.strip()) if eq and "=" in head else ("*", entry))
    _one_each("model", items)
    for name, model in items:
        if not isinstance(model, str) or not model:
            raise UsageError(f"model for {name} must be a model name, got {model!r}")
    return items


def _one_each(key: str, items: Sequence[tuple[str, Any]]) -> None:
    """Refuse a source of ``key`` (one flag's or file's entries) that names no dataset in an
    entry ("=mlp") or one twice ("wine=40,wine=50", "--model mlp --model cnn"): which entry
    wins would be the order they were typed in, unsaid."""
    for name, value in items:
        if not name:
            raise UsageError(
                f"{key} entry ={value} names no dataset; write DATASET={value}, or {value} "
                "alone for every dataset"
            )
    names = [name for name, _ in items]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        given = ", ".join(str(v) if n == "*" else f"{n}={v}" for n, v in items if n == twice)
        which = "the default for every dataset" if twice == "*" else twice
        raise UsageError(f"{key} gives {which} more than once ({given}); keep one")


def _merge_models(
    values: Sequence[Any], datasets: Sequence[str], from_preset: bool
) -> tuple[str, dict[str, str]]:
    """Merge ``model`` from preset < config < flags, as :func:`_merge_caps` merges caps."""
    default, per = "logreg", {}
    for i, value in enumerate(values):
        for name, model in _model_entries(value):
            if name == "*":
                default = model
            elif not (i == 0 and from_preset) or name in datasets:
                per[name] = model
    return default, per


def _as_float_or_none(key: str, value: Any) -> float | None:
    if value is None or value in ("none", ""):
        return None
    # float(True) is 1.0: a TOML ``timeout = true`` must not become a 1 s timeout.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"{key} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{key} must be a number, got {value!r}") from None
    except OverflowError:  # a TOML integer of 400 digits
        raise UsageError(
            f"{key} {str(value)[:12]}... ({len(str(value))} digits) is too large"
        ) from None


def _check_jobs(jobs: int) -> None:
    """More worker processes than CPUs only slow every cell down (and skew its timings)."""
    cpus = os.cpu_count() or 1
    if jobs > cpus:
        raise UsageError(f"--jobs {jobs} is more than the {cpus} CPUs of this machine")


def build_spec(
    preset: str | None,
    config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    present: Callable[[str], bool] | None = None,
    config_name: str = "the config file",
) -> RunSpec:
    """Merge preset defaults < config file < command-line flags into a checked RunSpec.

    ``present(name)`` says whether a dataset's files are on this machine: a preset's
    ``datasets_when_present`` join its datasets where it says so, unless the config file or the
    flags name the datasets (None: they never join).
    """
    # An empty value (an unset shell variable, say) would quietly mean "the default" or "no
    # limit" (--budget "" lifting a preset's budget): refused, as --out "" is.
    for source, where in ((config, "in the config file"), (overrides, "")):
        for key, value in {**source, **({"preset": preset} if not where else {})}.items():
            if isinstance(value, str) and not value.strip():
                name = key if where else "--" + key.replace("_", "-")
                raise UsageError(
                    f"{name} is empty{' ' + where if where else ''}; give a value or leave it out"
                )
    if preset and "preset" in config and config["preset"] not in PRESETS:  # hidden by --preset
        raise ConfigError(
            f"unknown preset {config['preset']!r} (in {config_name}; a flag overrides it this "
            f"time); valid presets: {', '.join(PRESETS)}"
        )
    preset = preset or config.get("preset") or DEFAULT_PRESET
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    sources = (PRESETS[preset], config, overrides)
    merged: dict[str, Any] = {**PRESETS[preset], **config, **overrides, "preset": preset}
    merged.setdefault("methods", "all")  # a preset may name its methods; else every one
    optional = merged.pop("datasets_when_present", [])
    if present is not None and "datasets" not in config and "datasets" not in overrides:
        joining = [name for name in optional if present(name)]
        merged["datasets"] = [*_as_names("datasets", merged["datasets"]), *joining]
    merged.pop("out", None)
    merged.pop("data_dir", None)
    params: dict[str, dict[str, Any]] = {}
    selected = {
        *_as_names("methods", merged["methods"]),
        *_as_names("datasets", merged["datasets"]),
    }
    for i, source in enumerate(sources):  # the preset's, then the config file's, then --param
        given = source.get("params", {})
        if not isinstance(given, Mapping) or not all(
            isinstance(v, Mapping) for v in given.values()
        ):
            raise UsageError(
                f"params must map each method to its parameters, e.g. "
                f'{{"loo": {{"batch_size": 32}}}}, got {given!r}'
            )
        for name, values in given.items():
            if i > 0 or name in selected or "all" in selected:  # a preset's: selected only
                # numpy scalars (np.int64(3) from an API caller) as the Python values they
                # hold: the spec is recorded as JSON.
                plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}
                params.setdefault(name, {}).update(plain)
    kwargs: dict[str, Any] = {"preset": preset, "params": params}
    for key, value in merged.items():
        if key in ("methods", "datasets"):
            kwargs[key] = _as_names(key, value)
        elif key in ("noise", "fractions"):
            kwargs[key] = _as_floats(key, value)
        elif key == "metrics":
            kwargs[key] = _as_metrics(value)
        elif key == "jobs" and value == "auto":  # one worker per CPU of this machine
            kwargs[key] = os.cpu_count() or 1
        elif key in ("seeds", "root_seed", "random_repeats", "jobs", "lds_subsets"):
            kwargs[key] = _as_int(key, value)
        elif key == "max_train":
            caps = _merge_caps(
                [src["max_train"] for src in sources if "max_train" in src],
                kwargs.get("datasets") or _as_names("datasets", merged["datasets"]),
                from_preset="max_train" in PRESETS[preset],
            )
            kwargs["max_train"], kwargs["max_train_by_dataset"] = caps
        elif key in ("timeout", "max_memory_mb"):
            kwargs[key] = _as_float_or_none(key, value)
        elif key == "imbalance":
            # Unset means balanced; 0 is not unset, RunSpec refuses it.
            imbalance = _as_float_or_none(key, value)
            kwargs[key] = 1.0 if imbalance is None else imbalance
        elif key == "scratch_model":
            if value is not None and (not isinstance(value, str) or not value):
                raise UsageError(f"scratch_model must be a model name or none, got {value!r}")
            # "none" in any letter case ("None" as Python spells it) turns a preset's reading off.
            kwargs[key] = None if value is None or value.lower() == "none" else value
        elif key in ("noise_model", "label_column", "id_column"):
            if not isinstance(value, str):
                raise UsageError(f"{key} must be a string, got {value!r}")
            kwargs[key] = value
        elif key == "model":
            kwargs["model"], kwargs["model_by_dataset"] = _merge_models(
                [src["model"] for src in sources if "model" in src],
                kwargs.get("datasets") or _as_names("datasets", merged["datasets"]),
                from_preset="model" in PRESETS[preset],
            )
        elif key in ("budget", "device"):
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise UsageError(f"{key} must be a string, got {value!r}")
            kwargs[key] = str(value)
    spec = RunSpec(**kwargs)
    _check_jobs(spec.jobs)
    _check_overridden_config(preset, config, overrides, config_name)
    return spec


#: Config keys whose value is checked only together with others (names, per-dataset caps and
#: models, parameters, paths) or against the machine (jobs: a file may be written for a larger
#: one): an overridden one is left to the run that uses it.
_CHECKED_TOGETHER = frozenset(
    {"methods", "datasets", "max_train", "model", "params", "out", "data_dir", "preset", "jobs"}
)


def _check_overridden_config(
    preset: str, config: Mapping[str, Any], overrides: Mapping[str, Any], config_name: str
) -> None:
    """A config value that a flag overrides is still checked: a file that says ``seeds =
    "abc"`` is wrong even while ``--seeds 1`` hides it, and would fail the next run without
    that flag."""
    for key in sorted((config.keys() & overrides.keys()) - _CHECKED_TOGETHER):
        try:
            build_spec(preset, {key: config[key]}, {})
        except UsageError as exc:
            raise ConfigError(f"{exc} (in {config_name}; a flag overrides it this time)") from None


def spec_changes(a: Any, b: Any, key: str = "") -> list[str]:
    """What changed from spec (or setting) ``a`` to ``b``, one short line per setting:
    ``seeds: 3 -> 5``, nested tables by their dotted keys (``params.knn-shapley.k: 5 -> 1``),
    lists by what joined and left (``methods: + centroid``); ``key`` prefixes the names."""

    def shown(value: Any) -> str:
        text = "unset" if value is None else repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    table_a, table_b = (v if isinstance(v, Mapping) else {} for v in (a, b))
    if (isinstance(a, Mapping) or isinstance(b, Mapping)) and table_a != table_b:
        return [
            change
            for k in sorted(set(table_a) | set(table_b), key=str)
            if table_a.get(k) != table_b.get(k)
            for change in spec_changes(
                table_a.get(k), table_b.get(k), f"{key}.{k}" if key else str(k)
            )
        ]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        added = [str(v) for v in b if v not in a]
        gone = [str(v) for v in a if v not in b]
        if not added and not gone:
            return [f"{key}: the order"] if list(a) != list(b) else []
        parts = ([f"+ {', '.join(added)}"] if added else []) + (
            [f"- {', '.join(gone)}"] if gone else []
        )
        return [f"{key}: {' '.join(parts)}"]
    return [f"{key}: {shown(a)} -> {shown(b)}"] if a != b else []
