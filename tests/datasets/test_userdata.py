"""The user's own files: .npz, .csv, .parquet, and one clear error per malformed case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valbench.errors import DatasetError
from valbench.userdata import FileDataset, load_file_dataset


def _xy(n: int = 90, k: int = 3, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    return rng.normal(size=(n, d)) + y[:, None], y


def test_npz_carves_missing_splits_deterministically(tmp_path: Path) -> None:
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_file_dataset(str(tmp_path / "d.npz"), label_column=None)
    a, b = ds.load(seed=1), ds.load(seed=1)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (54, 18, 18)
    assert a.n_classes == 3 and a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert np.array_equal(a.x_train, b.x_train)
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0, atol=1e-5)
    assert len(ds.load(seed=1, max_train=12).y_train) == 12


def test_npz_given_splits_and_string_labels(tmp_path: Path) -> None:
    x, y = _xy()
    names = np.array(["cat", "dog", "eel"])
    np.savez(
        tmp_path / "d.npz",
        x=x[:60], y=names[y[:60]], x_val=x[60:75], y_val=names[y[60:75]],
        x_test=x[75:], y_test=names[y[75:]],
    )  # fmt: skip
    s = FileDataset(path=str(tmp_path / "d.npz"), standardize=False).load(seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (60, 15, 15)
    assert np.array_equal(s.y_test, y[75:]) and np.allclose(s.x_test, x[75:])
    assert set(s.y_train.tolist()) == {0, 1, 2}


def test_csv_and_parquet(tmp_path: Path) -> None:
    x, y = _xy()
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    frame["kind"] = np.array(["a", "b", "c"])[y]
    frame.to_csv(tmp_path / "d.csv", index=False)
    s = load_file_dataset(str(tmp_path / "d.csv"), label_column="kind").load(seed=0)
    assert s.x_train.shape[1] == 4 and s.n_classes == 3
    pytest.importorskip("pyarrow")
    frame.rename(columns={"kind": "label"}).to_parquet(tmp_path / "d.parquet")
    s = load_file_dataset(str(tmp_path / "d.parquet"), label_column=None).load(seed=0)
    assert s.x_train.shape[1] == 4 and len(s.y_train) + len(s.y_val) + len(s.y_test) == 90


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


X, Y = _xy()
NAN_X = X.copy()
NAN_X[5, 1] = np.nan
MALFORMED = [
    ({"x": X}, "no array 'y'"),
    ({"x": X[:, 0], "y": Y}, "must be 2-D"),
    ({"x": X, "y": Y[:-1]}, "one label per row"),
    ({"x": X.astype(str), "y": Y}, "features must be real numbers"),
    ({"x": NAN_X, "y": Y}, "NaN/inf values .first in row 5"),
    ({"x": X, "y": Y + 0.5}, "labels must be integers or strings"),
    ({"x": X, "y": np.zeros(90, dtype=int)}, "need at least 2"),
    ({"x": X, "y": np.r_[np.zeros(88, int), [1, 1]]}, "class 1 has 2 row.s.; each class needs"),
    ({"x": X, "y": Y, "x_val": X[:5, :3], "y_val": Y[:5]}, "feature counts differ"),
    ({"x": X, "y": Y, "x_val": X[:5]}, "without its partner"),
    ({"x": X, "y": Y.astype(complex)}, "labels must be integers or strings"),
]


@pytest.mark.parametrize(("arrays", "message"), MALFORMED)
def test_malformed_npz_one_line_error_naming_the_file(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        FileDataset(path=str(path)).load(seed=0)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_object_arrays_and_table_problems(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", x=X, y=np.array([1, "a"] * 45, dtype=object))
    with pytest.raises(DatasetError, match="object arrays"):
        FileDataset(path=str(tmp_path / "o.npz")).load(seed=0)
    frame = pd.DataFrame({"a": X[:, 0], "b": ["s"] * 90, "label": Y})
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DatasetError, match="not numeric: b"):
        load_file_dataset(str(tmp_path / "t.csv"), label_column="label").load(seed=0)
    with pytest.raises(DatasetError, match="no column 'kind'"):
        load_file_dataset(str(tmp_path / "t.csv"), label_column="kind").load(seed=0)
    frame.drop(columns=["b"]).rename(columns={"label": "z"}).to_csv(tmp_path / "u.csv")
    with pytest.raises(DatasetError, match="--label-column"):
        load_file_dataset(str(tmp_path / "u.csv"), label_column=None).load(seed=0)
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_file_dataset(str(tmp_path / "d.txt"), label_column=None)
    with pytest.raises(DatasetError, match="no such file"):
        FileDataset(path=str(tmp_path / "missing.npz")).load(seed=0)
