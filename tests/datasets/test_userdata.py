"""The user's own files: .npz, .csv, .parquet, and one clear error per malformed case."""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
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
    capped = ds.load(seed=1, max_train=12)
    assert len(capped.y_train) == 12
    # A cap chooses training rows, never the values of the validation and test rows (they
    # were standardised by the capped rows).
    np.testing.assert_array_equal(capped.x_val, a.x_val)
    np.testing.assert_array_equal(capped.x_test, a.x_test)
    assert set(capped.train_rows.tolist()) <= set(a.train_rows.tolist())


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
    ({"x": X, "y": Y, "y_test": Y[:5]}, "has y_test without its partner"),
    ({"x": X, "y": Y.astype(complex)}, "labels must be integers or strings"),
    # Whole numbers a cast to int64 would merge (1e20 and 2e20 both became -2**63).
    ({"x": X, "y": np.where(Y == 0, 1e20, 2e20)}, r"beyond 2\*\*53 \(first in row 0: 1e\+20\)"),
    ({"x": X, "y": Y.astype(np.uint64) + np.uint64(2**63)}, "beyond int64.s range .first in row 0"),
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


def test_upper_case_suffixes_read_as_their_type(tmp_path: Path) -> None:
    # Windows tools write DATA.CSV; its type is .csv, read with every .csv rule (here the
    # labels as written: "01" and "02" are two classes, not 1 and 2 read as numbers).
    x, y = _xy(k=2)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    frame["label"] = np.array(["01", "02"])[y]
    frame.to_csv(tmp_path / "DATA.CSV", index=False)
    with open(tmp_path / "DATA.NPZ", "wb") as f:  # a path would get ".npz" appended
        np.savez(f, x=x, y=y)
    frame.to_parquet(tmp_path / "DATA.Parquet")
    csv = load_file_dataset(str(tmp_path / "DATA.CSV"), label_column="label").load(seed=0)
    npz = load_file_dataset(str(tmp_path / "DATA.NPZ")).load(seed=0)
    parquet = load_file_dataset(str(tmp_path / "DATA.Parquet"), label_column="label")
    assert csv.n_classes == npz.n_classes == parquet.load(seed=0).n_classes == 2
    np.testing.assert_array_equal(csv.x_train, npz.x_train)
    with pytest.raises(DatasetError, match="applies to .csv/.parquet files, not .npz"):
        load_file_dataset(str(tmp_path / "DATA.NPZ"), label_column="label").load(seed=0)


def test_an_upper_case_table_takes_the_run_s_column_flags(tmp_path: Path) -> None:
    from valbench.runner import resolve_names
    from valbench.spec import RunSpec

    x, y = _xy(k=2)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    frame["kind"] = y
    frame.to_csv(tmp_path / "DATA.CSV", index=False)
    spec = RunSpec(methods=("random",), datasets=(f"file:{tmp_path / 'DATA.CSV'}",))
    resolved = resolve_names(replace(spec, label_column="kind"))
    assert resolved.datasets == spec.datasets


def _one_line(message: str) -> None:
    """One printable line: no newline, no terminal escape or other control character."""
    assert message.isprintable(), repr(message)


def test_misleading_cases_get_their_own_one_line_message(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = []
    junk = tmp_path / "junk.npz"
    junk.write_bytes(bytes(range(256)) * 4)
    cases.append((junk, "not a .npz archive"))
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, X)
    cases.append((single, "a single .npy array"))
    header = tmp_path / "header.csv"
    header.write_text("x1,x2,label\n")
    cases.append((header, "no data rows"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases.append((empty, "is empty"))
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    cases.append((folder, "is a folder; give the data file itself"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"x1,label\ncaf\xe9,1\n2,0\n")
    cases.append((latin, "not UTF-8 text: save it as UTF-8"))
    packed = tmp_path / "packed.csv"
    packed.write_bytes(gzip.compress(b"x1,label\n1,0\n2,1\n"))
    cases.append((packed, "gzip-compressed: decompress it"))
    wide = tmp_path / "wide.csv"
    wide.write_bytes("x1,label\n1,0\n2,1\n".encode("utf-16"))
    cases.append((wide, "UTF-16 text: save it as UTF-8"))
    bare = tmp_path / "bare.csv"  # UTF-16 without its byte-order mark: NULs between letters
    bare.write_bytes("x1,label\n1,0\n2,1\n".encode("utf-16-le"))
    cases.append((bare, r"holds a NUL byte \(on line 1\).*save it as UTF-8 CSV"))
    nul = tmp_path / "nul.csv"  # pandas would cut the field at the NUL and read text
    nul.write_bytes(b"x1,label\n1,0\n2\x00,1\n3,0\n")
    cases.append((nul, r"holds a NUL byte \(on line 3\)"))
    far = tmp_path / "far.csv"  # past the first block read: lines counted across blocks
    far.write_bytes(b"x1,label\n" + b"1.000000,0\n" * 100_000 + b"\x00")
    cases.append((far, r"holds a NUL byte \(on line 100002\)"))
    for path, message in cases:
        with pytest.raises(DatasetError, match=message) as err:
            FileDataset(path=str(path)).load(seed=0)
        assert str(err.value).startswith(str(path)), err.value
        _one_line(str(err.value))
        assert "object arrays" not in str(err.value) and "not numeric" not in str(err.value)


def test_numbers_written_with_a_decimal_comma_are_named_as_such(tmp_path: Path) -> None:
    rows = "".join(f'"{i % 7},5",{i % 3},{i % 2}\n' for i in range(40))
    (tmp_path / "comma.csv").write_text("a,b,label\n" + rows)
    with pytest.raises(DatasetError, match="not numeric: a") as err:
        FileDataset(path=str(tmp_path / "comma.csv")).load(seed=0)
    assert "numbers written with a comma ('0,5'): write them with a decimal point" in str(err.value)
    # Dot or space thousands with a decimal comma, as German or French spreadsheets save them
    # (French ones with a no-break space); a value with no comma ("1.234") may sit beside them.
    kinds = ("1.234,5", "1.234", "2 345,25", "2\u00a0345,25", "3\u202f456,5")
    euro = "".join(f'"{kinds[i % 5]}",{i % 3},{i % 2}\n' for i in range(40))
    (tmp_path / "euro.csv").write_text("a,b,label\n" + euro)
    with pytest.raises(DatasetError, match="not numeric: a") as err:
        FileDataset(path=str(tmp_path / "euro.csv")).load(seed=0)
    assert "numbers written with a comma ('1.234,5')" in str(err.value)
    # Text that is not all numbers keeps the advice to encode it.
    (tmp_path / "words.csv").write_text("a,b,label\n" + rows.replace('"6,5"', "six"))
    with pytest.raises(DatasetError, match=r"not numeric: a \(encode or drop them"):
        FileDataset(path=str(tmp_path / "words.csv")).load(seed=0)


@pytest.mark.parametrize(("sep", "name"), [(";", "semicolons"), ("\t", "tabs"), ("|", "'|'")])
def test_another_separator_is_named_even_with_decimal_commas_in_the_rows(
    tmp_path: Path, sep: str, name: str
) -> None:
    # "1,5;2,25;x": the commas split the rows into more fields than the one-column header,
    # which read as a ragged row, not as a file separated by semicolons.
    for decimal in (",", "."):
        rows = "".join(f"{i}{decimal}5{sep}{i % 3}{decimal}25{sep}{i % 2}\n" for i in range(8))
        path = tmp_path / f"data{decimal == ','}.csv"
        path.write_text(f"a{sep}b{sep}label\n" + rows)
        with pytest.raises(DatasetError, match=f"its values are separated by {name}, not commas"):
            FileDataset(path=str(path)).load(seed=0)
    # A comment line before the header is a comment, whatever it holds.
    path = tmp_path / "commented.csv"
    path.write_text(f"# exported by a tool{sep} v2\na,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(DatasetError, match="the first line .* is a comment, not the header"):
        FileDataset(path=str(path)).load(seed=0)


def test_a_table_of_labels_and_ids_only_names_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("label\n" + "0\n1\n" * 10)
    with pytest.raises(DatasetError, match="no feature columns, only the label column 'label';"):
        FileDataset(path=str(tmp_path / "labels.csv")).load(seed=0)
    (tmp_path / "ids.csv").write_text("id,kind\n" + "".join(f"r{i},{i % 2}\n" for i in range(20)))
    with pytest.raises(
        DatasetError, match="only the label column 'kind' and the id column 'id'; add one column"
    ):
        load_file_dataset(str(tmp_path / "ids.csv"), label_column="kind", id_column="id").load(
            seed=0
        )


def test_true_false_features_beside_numbers_are_0_1_and_a_missing_label_names_its_row(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=60),
            "flag": rng.random(60) < 0.5,
            "label": np.where(rng.random(60) < 0.5, "cat", "dog"),
        }
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    splits = FileDataset(path=str(tmp_path / "t.csv"), standardize=False).load(seed=0)
    flags = np.concatenate([splits.x_train[:, 1], splits.x_val[:, 1], splits.x_test[:, 1]])
    assert set(np.unique(flags)) == {0.0, 1.0}
    frame["label"] = frame["label"].astype(object)
    frame.loc[[7, 9], "label"] = None
    frame.to_csv(tmp_path / "na.csv", index=False)
    with pytest.raises(DatasetError, match=r"2 missing values \(first in row 7") as err:
        FileDataset(path=str(tmp_path / "na.csv")).load(seed=0)
    _one_line(str(err.value))


def test_a_repeated_label_column_is_refused_not_made_a_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{int(a > 0)},{b:.3f},{int(b > 0)}" for a, b in rng.normal(size=(40, 2))]
    (tmp_path / "t.csv").write_text("a,label,c,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="has 2 columns named label; rename all but one"):
        FileDataset(path=str(tmp_path / "t.csv")).load(seed=0)
    # nor is a repeated id column (its second copy would pass as a feature)
    (tmp_path / "i.csv").write_text("id,a,id,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="has 2 columns named id; rename all but one"):
        FileDataset(path=str(tmp_path / "i.csv"), id_column="id").load(seed=0)
    # repeated feature names are harmless: each column is a feature
    (tmp_path / "f.csv").write_text("a,label,a,c\n" + "\n".join(rows) + "\n")
    assert FileDataset(path=str(tmp_path / "f.csv")).load(seed=0).x_train.shape[1] == 3


def test_label_codes_pandas_would_merge_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes = rng.choice(["01", "1", "2"], size=60)
    rows = [f"{a:.3f},{c}" for a, c in zip(rng.normal(size=60), codes, strict=True)]
    (tmp_path / "t.csv").write_text("a,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="labels '0?1' and '0?1' of column 'label' are the same"):
        FileDataset(path=str(tmp_path / "t.csv")).load(seed=0)
    # one spelling per class: numeric labels as before
    rows = [r.replace(",01", ",1") for r in rows]
    (tmp_path / "ok.csv").write_text("a,label\n" + "\n".join(rows) + "\n")
    assert FileDataset(path=str(tmp_path / "ok.csv")).load(seed=0).n_classes == 2


def test_a_second_label_or_a_saved_index_is_refused_not_made_a_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40), "y": rng.integers(0, 2, size=40)})
    frame["label"] = np.where(frame["y"] == 1, "pos", "neg")
    frame.to_csv(tmp_path / "both.csv", index=False)
    with pytest.raises(DatasetError, match="both a 'label' and a 'y' column; name the label"):
        FileDataset(path=str(tmp_path / "both.csv")).load(seed=0)
    # Naming the label does not make the other one a feature: it would carry the labels in.
    with pytest.raises(DatasetError, match="column 'y' beside the label column 'label' that looks"):
        FileDataset(path=str(tmp_path / "both.csv"), label_column="label").load(seed=0)
    with pytest.raises(DatasetError, match="column 'label' beside the label column 'y' that looks"):
        FileDataset(path=str(tmp_path / "both.csv"), label_column="y").load(seed=0)
    # A measurement named y (fractional values) beside the labels is a feature.
    frame.assign(y=rng.normal(size=40)).to_csv(tmp_path / "coords.csv", index=False)
    assert FileDataset(path=str(tmp_path / "coords.csv"), label_column="label").load(seed=0)
    frame.drop(columns=["y"]).to_csv(tmp_path / "index.csv")  # pandas' index as a first column
    with pytest.raises(DatasetError, match=r"without a name \('Unnamed: 0'.*--id-column") as err:
        FileDataset(path=str(tmp_path / "index.csv")).load(seed=0)
    _one_line(str(err.value))
    # as the message offers, the saved index named as the id column reads, as ids
    ds = FileDataset(path=str(tmp_path / "index.csv"), id_column="Unnamed: 0")
    assert ds.read(carved=False)[0]["train"][0].shape == (40, 1)
    # a saved index before an empty last column is not called trailing commas
    frame.drop(columns=["y"]).assign(b=np.nan).to_csv(tmp_path / "index_gap.csv")
    with pytest.raises(DatasetError, match=r"without a name \('Unnamed: 0'"):
        FileDataset(path=str(tmp_path / "index_gap.csv")).load(seed=0)


def test_labels_that_differ_only_in_spaces_are_refused_not_made_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(60) < 0.5, "cat", "dog").astype(object)
    labels[::5] = [f"{v} " for v in labels[::5]]  # a stray trailing space on every 5th row
    frame = pd.DataFrame({"a": rng.normal(size=60), "label": labels})
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DatasetError, match="differ only in leading/trailing spaces") as err:
        FileDataset(path=str(tmp_path / "t.csv")).load(seed=0)
    _one_line(str(err.value))
    # a stray leading space too
    frame["label"] = np.where(
        np.arange(60) % 3 == 0, " dog", np.where(labels == "cat", "cat", "dog")
    )
    frame.to_csv(tmp_path / "lead.csv", index=False)
    with pytest.raises(DatasetError, match="labels ' dog' and 'dog' differ only in leading"):
        FileDataset(path=str(tmp_path / "lead.csv")).load(seed=0)
    # clean labels with inner spaces are fine
    frame["label"] = np.where(rng.random(60) < 0.5, "tabby cat", "dog")
    frame.to_csv(tmp_path / "ok.csv", index=False)
    assert FileDataset(path=str(tmp_path / "ok.csv")).load(seed=0).n_classes == 2


@pytest.mark.parametrize("standardize", [True, False])
def test_huge_finite_features_are_refused_naming_the_file(
    tmp_path: Path, standardize: bool
) -> None:
    big = X.copy()
    big[7, 2] = 1e308 if standardize else 1e300
    big[8, 2] = -1e308 if standardize else -1e300
    path = _npz(tmp_path, x=big, y=Y)
    with pytest.raises(DatasetError, match="too large") as err:
        FileDataset(path=str(path), standardize=standardize).load(seed=0)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "row 7" in msg and "NaN" not in msg
    _one_line(msg)
    ok = X * 1e20  # large but well within range: loads, finite
    s = FileDataset(path=str(_npz(tmp_path, x=ok, y=Y)), standardize=standardize).load(seed=0)
    assert np.isfinite(s.x_train).all()


HOSTILE = ["a\x1b[31mred", "b\nnext line", "c\r\x07", "d\u202eevil"]


def test_hostile_class_and_column_names_are_escaped(tmp_path: Path) -> None:
    names = np.array(HOSTILE)
    y = names[np.arange(90) % 4]
    y[:3] = HOSTILE[3]
    y[3:] = np.where(y[3:] == HOSTILE[3], HOSTILE[0], y[3:])  # one class of 3 rows: too few
    y[0] = HOSTILE[1]
    y[1] = HOSTILE[1]
    np.savez(tmp_path / "d.npz", x=X, y=y)
    messages = []
    with pytest.raises(DatasetError, match="row.s.; each class needs") as err:
        FileDataset(path=str(tmp_path / "d.npz")).load(seed=0)
    messages.append(str(err.value))
    # a class only in the validation split
    np.savez(tmp_path / "v.npz", x=X, y=names[Y], x_val=X[:2], y_val=names[[3, 3]])
    with pytest.raises(DatasetError, match="never occur") as err:
        FileDataset(path=str(tmp_path / "v.npz")).load(seed=0)
    messages.append(str(err.value))
    frame = pd.DataFrame({"f\x1b[2J": ["s"] * 3, "label\n": [0, 1, 0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    for column in (None, "label\n", "k\x1b[0m"):
        with pytest.raises(DatasetError) as err:
            load_file_dataset(str(tmp_path / "t.csv"), label_column=column).load(seed=0)
        messages.append(str(err.value))
    weird = tmp_path / "we\x1bird\nname.npz"
    with pytest.raises(DatasetError) as err:
        FileDataset(path=str(weird)).load(seed=0)
    messages.append(str(err.value))
    for message in messages:
        _one_line(message)
    assert "'d\\u202eevil'" in messages[0] and "\\x1b" in messages[-1]


def test_file_is_parsed_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.userdata as userdata

    calls = []
    real = userdata.read_file_arrays
    monkeypatch.setattr(userdata, "read_file_arrays", lambda *a: calls.append(a) or real(*a))
    path = _npz(tmp_path, x=X, y=Y)
    a = FileDataset(path=str(path), standardize=False).load(seed=0)
    FileDataset(path=str(path), standardize=False).load(seed=1)
    assert len(calls) == 1
    np.savez(path, x=X + 1, y=Y)  # same path, new content: parsed again
    b = FileDataset(path=str(path), standardize=False).load(seed=0)
    assert len(calls) == 2 and np.allclose(b.x_train, a.x_train + 1)
    with pytest.raises(ValueError, match="read-only"):
        FileDataset(path=str(path)).read()[0]["train"][0][0, 0] = 1.0


def test_a_file_datasets_parameters_are_set_with_param_and_checked_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json as _json

    from valbench.cli import main

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    path = tmp_path / "d.csv"
    lines = ["a,b,c,y"] + [f"{r[0]},{r[1]},{r[2]},{int(r[0] > 0)}" for r in x]
    path.write_text("\n".join(lines) + "\n")
    base = ["run", "--methods", "random", "--datasets", f"file:{path}", "--label-column", "y"]
    base += ["--seeds", "1", "--noise", "0", "--backend", "serial"]
    name = f"file:{path}"
    for bad, message in [
        ("val_fraction=2", "val_fraction=2 is not in (0, 1)"),
        ("val_frac=0.3", "has no parameter 'val_frac'"),
        ("label_column=y", "set label_column with --label-column"),
        # one training row: the smallest removal would leave nothing (as --max-train 1)
        ("n_train=1", "n_train=1 is not in [2, inf) or None"),
    ]:
        out = tmp_path / "bad"
        assert main([*base, "--param", f"{name}.{bad}", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    out = tmp_path / "run"
    assert main([*base, "--param", f"{name}.val_fraction=0.3", "--out", str(out)]) == 0
    manifest = _json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["params"][name] == {"val_fraction": 0.3}
    (scores,) = (out / "scores").glob("*.npz")
    with np.load(scores) as arrays:  # 120 rows: 36 validation (0.3), 24 test, 60 training
        assert (len(arrays["scores"]), len(arrays["val_rows"])) == (60, 36)


def test_csv_integer_labels_beyond_64_bits_are_refused_not_merged(tmp_path: Path) -> None:
    # pandas reads such a column as Python ints (dtype object); they used to be refused only
    # as "dtype object", and their float form was cast to one int64 value.
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1]})
    frame["label"] = np.where(Y == 0, "1", "99999999999999999999999")
    frame.to_csv(tmp_path / "big.csv", index=False)
    with pytest.raises(DatasetError, match="beyond int64.s range .first in row [0-9]+: 9999"):
        FileDataset(path=str(tmp_path / "big.csv")).load(seed=0)


def test_nullable_feature_columns_are_numbers_and_a_gap_names_its_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40), "label": np.arange(40) % 2})
    frame["b"] = pd.Series(rng.integers(0, 9, size=40), dtype="Int64")
    frame["c"] = pd.Series(rng.normal(size=40), dtype="Float64")
    frame["d"] = pd.Series(rng.random(40) < 0.5, dtype="boolean")
    frame.to_parquet(tmp_path / "ok.parquet")
    parts, _ = FileDataset(path=str(tmp_path / "ok.parquet")).read(carved=False)
    x = parts["train"][0]
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x[:, 2], frame["c"].to_numpy(dtype=float))
    frame.loc[5, "c"] = pd.NA
    frame.to_parquet(tmp_path / "gap.parquet")
    gap = r"column c has 1 missing values \(first in row 5, counting data rows from 0\)"
    with pytest.raises(DatasetError, match=gap) as err:
        FileDataset(path=str(tmp_path / "gap.parquet")).read(carved=False)
    _one_line(str(err.value))


def test_ids_are_kept_as_written_even_when_pandas_would_read_them_as_missing(
    tmp_path: Path,
) -> None:
    from valbench.userdata import read_ids

    path = tmp_path / "ids.csv"
    path.write_text("id,a,label\nNA,1,0\nnull,2,1\n007,3,0\nn/a,4,1\n")
    np.testing.assert_array_equal(read_ids(path, "id"), ["NA", "null", "007", "n/a"])
    FileDataset(path=str(path), id_column="id").read(carved=False)  # no "empty id" refusal
    path.write_text("id,a,label\nx,1,0\n ,2,1\ny,3,0\n,4,1\n")
    with pytest.raises(DatasetError, match=r"id column 'id' is empty in row 1;"):
        FileDataset(path=str(path), id_column="id").read(carved=False)


def test_true_false_labels_keep_their_names(tmp_path: Path) -> None:
    path = tmp_path / "tf.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(30, 2)), y=np.arange(30) % 3 == 0)
    parts, classes = FileDataset(path=str(path)).read(carved=False)
    assert classes == ["False", "True"]
    np.testing.assert_array_equal(parts["train"][1], (np.arange(30) % 3 == 0).astype(int))


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        # Every row one field longer than the header: pandas would take the first field as
        # the index and read each column's neighbour under its name (labels from "c").
        (["a,b,label", "1,2,0,1", "3,4,1,0", "5,6,0,1"], "data row 0 .* 4 fields, more than"),
        # Only a later row longer.
        (["a,b,label", "1,2,0", "3,4,1", "5,6,0,7"], "data row 2 .* 4 fields, more than"),
        # A short row: pandas would fill it with a gap, told as a missing label.
        (["a,b,label", "1,2,0", "", "3,4", "5,6,1"], "data row 1 .* 2 fields, fewer than"),
    ],
)
def test_a_csv_row_longer_or_shorter_than_the_header_is_named_not_shifted_or_filled(
    tmp_path: Path, lines: list[str], problem: str
) -> None:
    path = tmp_path / "ragged.csv"
    # Enough rows that nothing else (too few rows per class) is the first problem.
    good = [f"{i % 7},{i % 5},{i % 2}" for i in range(60)]
    path.write_text("\n".join(lines + good) + "\n")
    with pytest.raises(DatasetError, match=problem) as err:
        FileDataset(path=str(path)).load(seed=0)
    assert "one value per column" in str(err.value)
    _one_line(str(err.value))


def test_a_gap_in_a_csv_whose_rows_all_match_the_header_is_still_a_missing_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gap.csv"
    good = [f"{i % 7},{i % 5},{i % 2}" for i in range(60)]
    path.write_text("\n".join(["a,b,label", "1,2,", *good]) + "\n")
    with pytest.raises(
        DatasetError, match=r"label column 'label' has 1 missing values \(first in row 0"
    ):
        FileDataset(path=str(path)).load(seed=0)


def test_trailing_commas_and_spaced_header_names_are_told_as_such(tmp_path: Path) -> None:
    good = [f"{i % 7},{i % 5},{i % 2}" for i in range(60)]
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("\n".join(f"{line}," for line in ["a,b,label", *good]) + "\n")
    with pytest.raises(DatasetError, match="every line ends with a comma") as err:
        FileDataset(path=str(trailing)).load(seed=0)
    _one_line(str(err.value))
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("\n".join(["a, b, label", *good]) + "\n")
    with pytest.raises(DatasetError, match="column ' label' has spaces around its name") as err:
        FileDataset(path=str(spaced)).load(seed=0)
    _one_line(str(err.value))
    # the exact name, as the message offers, reads it
    assert FileDataset(path=str(spaced), label_column=" label").load(seed=0).n_classes == 2


def test_a_gap_in_a_feature_column_names_the_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "e": np.nan, "label": np.arange(60) % 2})
    frame.loc[:9, "e"] = 1.0  # gaps from row 10 on
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    with pytest.raises(
        DatasetError,
        match=r"column e has 50 missing values \(first in row 10, counting data rows from 0\)",
    ):
        FileDataset(path=str(tmp_path / "gaps.csv")).load(seed=0)


def test_a_whitespace_line_is_skipped_as_pandas_skips_it_not_called_a_short_row(
    tmp_path: Path,
) -> None:
    good = [f"{i % 7},{i % 5},{i % 2}" for i in range(60)]
    path = tmp_path / "gap.csv"
    path.write_text("\n".join(["a,b,label", *good[:10], "   ", ",4,1", *good[10:]]) + "\n")
    with pytest.raises(
        DatasetError,
        match=r"column a has 1 missing values \(first in row 10, counting data rows from 0\)",
    ):
        FileDataset(path=str(path)).load(seed=0)
    # an empty label and one spelled 'NA': both counted, the spelling named
    rows = [f"{i % 7},{'' if i == 3 else 'NA' if i % 2 else 'EU'}" for i in range(60)]
    path.write_text("\n".join(["a,label", *rows]) + "\n")
    with pytest.raises(DatasetError, match="29 values read as missing, spelled 'NA' .*and 1 empty"):
        FileDataset(path=str(path)).load(seed=0)


def test_a_label_problem_in_a_table_names_the_label_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=40), "b": np.arange(40) % 2}).to_csv(
        tmp_path / "t.csv", index=False
    )
    with pytest.raises(DatasetError, match="label column 'a' holds fractional numbers"):
        FileDataset(path=str(tmp_path / "t.csv"), label_column="a").load(seed=0)


def test_a_comment_line_booleans_spelled_twice_and_npz_flags_are_told_plainly(
    tmp_path: Path,
) -> None:
    good = [f"{i % 7},{i % 5},{i % 2}" for i in range(60)]
    path = tmp_path / "commented.csv"
    path.write_text("\n".join(["# exported by a tool", "a,b,label", *good]) + "\n")
    with pytest.raises(
        DatasetError, match=r"the first line \('# exported by a tool'\) is a comment"
    ):
        FileDataset(path=str(path)).load(seed=0)
    truth = [f"{i % 7},{['true', 'True', 'False'][i % 3]}" for i in range(60)]
    path.write_text("\n".join(["a,label", *truth]) + "\n")
    with pytest.raises(
        DatasetError, match="'true' and 'True' of column 'label' are the same truth"
    ):
        FileDataset(path=str(path)).load(seed=0)
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    with pytest.raises(DatasetError, match=r"a label column \(--label-column\) applies to .csv"):
        FileDataset(path=str(tmp_path / "d.npz"), label_column="y").load(seed=0)


def test_npz_arrays_under_other_names_are_refused_not_left_out(tmp_path: Path) -> None:
    """A hostile-input audit: x_valid and X_test were silently left out, and the validation
    and test rows carved from x instead of the user's own."""
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x[:60], y=y[:60], x_valid=x[60:], y_valid=y[60:], X_test=x)
    with pytest.raises(DatasetError) as err:
        load_file_dataset(str(tmp_path / "d.npz"), label_column=None).load(seed=0)
    said = str(err.value)
    assert "holds arrays valbench does not read ('X_test', 'x_valid', 'y_valid')" in said
    assert "name them x, y, x_val, y_val, x_test, y_test" in said and "\n" not in said


def test_an_infinite_or_oversized_feature_is_named_by_its_column(tmp_path: Path) -> None:
    """A hostile-input audit: an inf in a CSV was reported by row only ("x has 1 NaN/inf
    values"), and integers past 64 bits got pandas advice (.astype(float))."""
    (tmp_path / "inf.csv").write_text("a,b,label\n1,2,0\n3,inf,0\n3,4,1\n5,6,1\n")
    with pytest.raises(DatasetError, match=r"column b has 1 infinite values \(first in row 1"):
        load_file_dataset(str(tmp_path / "inf.csv"), label_column=None).load(seed=0)
    (tmp_path / "big.csv").write_text(f"a,b,label\n{10**30},2,0\n1,1,0\n3,4,1\n5,6,1\n")
    with pytest.raises(DatasetError, match="integers too large for 64 bits: write them as"):
        load_file_dataset(str(tmp_path / "big.csv"), label_column=None).load(seed=0)


def test_every_split_remembers_the_file_row_of_each_point(tmp_path: Path) -> None:
    """A row-mapping audit: each split's rows (train_rows, val_rows, test_rows) are the rows
    of the file its points hold, in the split's order; together they are every row once."""
    n = 40
    rows = "".join(f"{i},{(i * 7) % 5},{'cat' if i % 2 else 'dog'}\n" for i in range(n))
    (tmp_path / "rows.csv").write_text("a,b,label\n" + rows)
    ds = FileDataset(
        path=str(tmp_path / "rows.csv"), val_fraction=0.1, test_fraction=0.3, standardize=False
    )
    for seed in (0, 1):
        s = ds.load(seed=seed)
        assert (len(s.train_rows), len(s.val_rows), len(s.test_rows)) == (24, 4, 12)
        for x, y, where in [
            (s.x_train, s.y_train, s.train_rows),
            (s.x_val, s.y_val, s.val_rows),
            (s.x_test, s.y_test, s.test_rows),
        ]:
            # column a holds the row number, the label is cat on odd rows
            np.testing.assert_array_equal(x[:, 0], where)
            np.testing.assert_array_equal(y, 1 - where % 2)
        every = np.concatenate([s.train_rows, s.val_rows, s.test_rows])
        assert sorted(every.tolist()) == list(range(n))
        assert not np.array_equal(s.train_rows, np.sort(s.train_rows))  # shuffled, not sorted
    capped = ds.load(seed=0, max_train=10)
    np.testing.assert_array_equal(capped.x_train[:, 0], capped.train_rows)
    assert len(capped.train_rows) == 10
    # An .npz's own validation and test arrays are no rows of x: they have no row numbers.
    x = np.arange(20.0)[:, None]
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2, x_val=x[:6], y_val=np.arange(6) % 2)
    s = FileDataset(path=str(tmp_path / "d.npz"), standardize=False).load(seed=0)
    assert s.val_rows is None
    np.testing.assert_array_equal(s.x_train[:, 0], s.train_rows)
    np.testing.assert_array_equal(s.x_test[:, 0], s.test_rows)


def test_csv_lines_ids_and_label_spellings_are_read_as_the_file_writes_them(
    tmp_path: Path,
) -> None:
    """What exports write back beside each row: the line it starts on (1 = the header, as an
    editor counts; blank and whitespace-only lines skipped, a quoted line break counted, a
    row starting on its first line), its id as written (stripped; "007" not 7) and its label
    as spelled ("010", not pandas' 10), found in a `y` column too."""
    from valbench.userdata import class_spellings, csv_record_lines, read_ids

    path = tmp_path / "mine.csv"
    lines = ["id,a,y", " 007 ,0.5,010", "", "010,1.5,007", '"1\n2",2.5,010', "   ", "9,3.5,007"]
    path.write_text("\n".join(lines) + "\n")
    np.testing.assert_array_equal(csv_record_lines(path, 4), [2, 4, 5, 8])
    assert csv_record_lines(path, 5) is None  # never a wrong number
    np.testing.assert_array_equal(read_ids(path, "id"), ["007", "010", "1\n2", "9"])
    numeric = tmp_path / "numeric.csv"
    numeric.write_text("id,a,label\n007,1,0\n010,2,1\n")
    np.testing.assert_array_equal(read_ids(numeric, "id"), ["007", "010"])
    parts, classes = FileDataset(path=str(path), id_column="id").read(carved=False)
    assert classes == ["7", "10"]
    codes = parts["train"][1]
    np.testing.assert_array_equal(codes, [1, 0, 1, 0])
    assert class_spellings(path, None, codes, classes) == ["007", "010"]
    assert class_spellings(path, "y", codes, classes) == ["007", "010"]


def test_an_id_repeated_up_to_spaces_is_refused_naming_the_repeat(tmp_path: Path) -> None:
    """Ids are read stripped, as exports write them: "r1" and " r1 " name one row."""
    path = tmp_path / "ids.csv"
    path.write_text("id,a,label\nr0,1,0\nr1,2,1\nr2,3,0\n r1 ,4,1\n")
    with pytest.raises(DatasetError, match=r"repeats the id 'r1' \(row 3\)"):
        FileDataset(path=str(path), id_column="id").read(carved=False)


def test_a_label_read_as_missing_names_its_data_row(tmp_path: Path) -> None:
    """Rows in messages count data rows from 0 (the line after the header is row 0)."""
    path = tmp_path / "regions.csv"
    path.write_text("a,label\n1,EU\n2,NA\n3,EU\n4,\n5,NA\n")
    with pytest.raises(DatasetError) as err:
        FileDataset(path=str(path)).read(carved=False)
    assert "has 2 values read as missing, spelled 'NA' (first in row 1, counting" in str(err.value)
    assert ", and 1 empty ones;" in str(err.value)
    # an empty label before the first 'NA': the row named is the first 'NA'
    path.write_text("a,label\n1,EU\n2,\n3,EU\n4,NA\n")
    with pytest.raises(DatasetError, match=r"spelled 'NA' \(first in row 3, counting"):
        FileDataset(path=str(path)).read(carved=False)


def test_nullable_integer_and_float_columns_alone_are_numbers(tmp_path: Path) -> None:
    """Without a True/False column beside them, nullable Int64/Float64 columns made an object
    array (refused as not numbers): they are cast to floats too."""
    frame = pd.DataFrame({"a": [0.5, 1.5, 2.5, 3.5], "label": [0, 1, 0, 1]})
    frame["b"] = pd.Series([4, 5, 6, 7], dtype="Int64")
    frame["c"] = pd.Series([0.25, 0.5, 0.75, 1.0], dtype="Float64")
    frame.to_parquet(tmp_path / "n.parquet")
    parts, classes = FileDataset(path=str(tmp_path / "n.parquet")).read(carved=False)
    x, y = parts["train"]
    assert x.dtype == np.float64 and classes == ["0", "1"]
    np.testing.assert_array_equal(x, [[0.5, 4, 0.25], [1.5, 5, 0.5], [2.5, 6, 0.75], [3.5, 7, 1]])
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


def test_an_id_column_is_never_a_feature_and_never_the_label(tmp_path: Path) -> None:
    from valbench.userdata import read_ids

    frame = pd.DataFrame(
        {"id": [101, 102, 103, 104], "a": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1]}
    )
    frame.to_parquet(tmp_path / "ids.parquet")
    frame.to_csv(tmp_path / "ids.csv", index=False)
    for name in ("ids.parquet", "ids.csv"):
        path = tmp_path / name
        parts, _ = FileDataset(path=str(path), id_column="id").read(carved=False)
        np.testing.assert_array_equal(parts["train"][0], [[1.0], [2.0], [3.0], [4.0]])
        ids = read_ids(path, "id")
        assert ids.tolist() == ["101", "102", "103", "104"]  # text, as exports write it
        with pytest.raises(DatasetError, match="'label' cannot be both the label and the id"):
            FileDataset(path=str(path), id_column="label").read(carved=False)
    # Without --id-column the numbers are a feature like any other.
    parts, _ = FileDataset(path=str(tmp_path / "ids.parquet")).read(carved=False)
    assert parts["train"][0].shape == (4, 2)


def test_a_y_column_beside_the_label_is_refused_only_when_it_looks_like_labels(
    tmp_path: Path,
) -> None:
    n = 42
    base = pd.DataFrame({"a": np.arange(n, dtype=float), "label": np.arange(n) % 2})
    looks = {
        "twenty whole numbers": np.arange(n) % 20,
        "true/false": np.arange(n) % 3 == 0,
    }
    for column in looks.values():
        base.assign(y=column).to_csv(tmp_path / "d.csv", index=False)
        with pytest.raises(DatasetError, match="looks like labels too"):
            FileDataset(path=str(tmp_path / "d.csv"), label_column="label").read(carved=False)
    # 21 distinct whole numbers (a count, a measurement): a feature.
    base.assign(y=np.arange(n) % 21).to_csv(tmp_path / "d.csv", index=False)
    parts, _ = FileDataset(path=str(tmp_path / "d.csv"), label_column="label").read(carved=False)
    np.testing.assert_array_equal(parts["train"][0][:, 1], np.arange(n) % 21)
    # A y column named as the id column holds the ids, read apart: no refusal.
    base.assign(y=[f"r{i}" for i in range(n)]).to_csv(tmp_path / "ids.csv", index=False)
    ds = FileDataset(path=str(tmp_path / "ids.csv"), label_column="label", id_column="y")
    assert ds.read(carved=False)[0]["train"][0].shape == (n, 1)


def test_given_splits_sizes_and_carved_shares(tmp_path: Path) -> None:
    # Carved shares round to the nearest row: 0.19 of 30 is 5.7, so 6 rows.
    x = np.arange(30.0)[:, None]
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(30) % 2)
    s = FileDataset(path=str(tmp_path / "c.npz"), val_fraction=0.19, test_fraction=0.19).load(
        seed=0
    )
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (18, 6, 6)
    # a share rounding to no row still carves one: a split is never empty
    s = FileDataset(path=str(tmp_path / "c.npz"), val_fraction=0.01).load(seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (23, 1, 6)
    # A given validation split: n_val subsamples it (stratified, all but one row too) and
    # never carves rows out of the training data.
    y_val = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    np.savez(tmp_path / "g.npz", x=x, y=np.arange(30) % 2, x_val=x[:9] + 100, y_val=y_val)
    for n_val, counts in ((4, [2, 2]), (8, [4, 4])):
        g = FileDataset(path=str(tmp_path / "g.npz"), n_val=n_val, standardize=False).load(seed=0)
        assert np.bincount(g.y_val).tolist() == counts and g.val_rows is None
        assert (len(g.y_train), len(g.y_test)) == (24, 6)
        assert set(g.x_val[:, 0].tolist()) <= set(range(100, 109))
        assert g.y_val.flags.writeable  # a copy: the parsed arrays stay shared and read-only
    whole = FileDataset(path=str(tmp_path / "g.npz"), n_val=9, standardize=False).load(seed=0)
    np.testing.assert_array_equal(whole.y_val, y_val)
    whole.y_val[:] = 1
    again = FileDataset(path=str(tmp_path / "g.npz"), n_val=9, standardize=False).load(seed=0)
    np.testing.assert_array_equal(again.y_val, y_val)


def test_a_class_of_one_row_is_read_when_the_caller_splits_its_own_way(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", x=np.arange(7.0)[:, None], y=[0, 0, 0, 1, 1, 1, 2])
    parts, classes = FileDataset(path=str(tmp_path / "one.npz")).read(carved=False)
    assert classes == ["0", "1", "2"] and len(parts["train"][1]) == 7
    with pytest.raises(DatasetError, match="class 2 has 1 row"):
        FileDataset(path=str(tmp_path / "one.npz")).read()


# ------------------------------------------------ mutation-hunt additions, second round


def test_file_fingerprint_is_the_first_16_hex_digits_of_the_sha256(tmp_path: Path) -> None:
    # A run stores this key; a resumed run compares the file against it, so it must not drift.
    from valbench.userdata import file_fingerprint

    path = tmp_path / "abc.csv"
    path.write_bytes(b"abc")
    assert file_fingerprint(path) == "ba7816bf8f01cfea"  # sha256("abc") = ba7816bf8f01cfea41...


def test_file_fingerprint_reads_past_the_first_mebibyte(tmp_path: Path) -> None:
    # Two files alike in their first 2 MiB but for the last byte: different data, different key.
    from valbench.userdata import current_fingerprint, file_fingerprint

    body = bytes(2 << 20)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(body + b"0")
    b.write_bytes(body + b"1")
    assert file_fingerprint(a) != file_fingerprint(b)
    # Rewritten in place with the same size, the file is hashed again, not served from cache.
    before = current_fingerprint(a)
    stamp = a.stat().st_mtime_ns
    a.write_bytes(body + b"1")
    os.utime(a, ns=(stamp + 10**9, stamp + 10**9))  # a later time, even on a coarse clock
    assert current_fingerprint(a) == file_fingerprint(b) != before


def test_a_repeated_y_column_is_refused_when_y_is_the_default_label(tmp_path: Path) -> None:
    """With no --label-column, 'y' is the label: a second 'y' (pandas' 'y.1') would be read
    as a feature carrying the labels in."""
    rows = "".join(f"{i % 7},{i % 2},{i % 2}\n" for i in range(40))
    (tmp_path / "yy.csv").write_text("a,y,y\n" + rows)
    with pytest.raises(DatasetError, match="has 2 columns named y; rename all but one"):
        FileDataset(path=str(tmp_path / "yy.csv")).read()


def test_an_unnamed_last_column_with_some_values_is_not_called_trailing_commas(
    tmp_path: Path,
) -> None:
    """Only a nameless last column empty on every row is a line of trailing commas; one
    holding values on some rows is a column without a name."""
    rows = [f"{i % 7},{i % 2},{'' if i % 3 else i}" for i in range(30)]
    (tmp_path / "half.csv").write_text("a,label,\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"a column without a name \('Unnamed: 2'") as err:
        FileDataset(path=str(tmp_path / "half.csv")).read()
    assert "trailing" not in str(err.value)


def test_infinite_values_are_counted_not_just_noticed(tmp_path: Path) -> None:
    (tmp_path / "inf.csv").write_text("a,b,label\n1,-inf,0\n3,2,0\n3,inf,1\n5,inf,1\n")
    with pytest.raises(DatasetError, match=r"column b has 3 infinite values \(first in row 0,"):
        FileDataset(path=str(tmp_path / "inf.csv")).read()


def test_only_the_classes_a_csv_respells_change_how_they_are_written(tmp_path: Path) -> None:
    """'007' is written back as '007' even when the other class ('8') reads as written."""
    from valbench.userdata import class_spellings

    path = tmp_path / "mixed.csv"
    path.write_text("a,label\n1,007\n2,8\n3,007\n4,8\n")
    parts, classes = FileDataset(path=str(path)).read(carved=False)
    assert classes == ["7", "8"]
    assert class_spellings(path, None, parts["train"][1], classes) == ["007", "8"]
    # "8" beside " 8" (one number, a stray space): written as parsed, not as " 8"
    path.write_text("a,label\n1,7\n2,8\n3,7\n4, 8\n")
    parts, classes = FileDataset(path=str(path)).read(carved=False)
    assert class_spellings(path, None, parts["train"][1], classes) is None
    # ... and beside it "007" keeps its spelling (every class lost its own to the stray space)
    path.write_text("a,label\n1,007\n2,8\n3,007\n4, 8\n")
    parts, classes = FileDataset(path=str(path)).read(carved=False)
    assert class_spellings(path, None, parts["train"][1], classes) == ["007", "8"]
    # text labels with a leading space are their own names: written as read, not stripped
    path.write_text("a,label\n1, dog\n2, cat\n3, dog\n4, cat\n")
    parts, classes = FileDataset(path=str(path)).read(carved=False)
    assert classes == [" cat", " dog"]
    assert class_spellings(path, None, parts["train"][1], classes) is None


def test_unstandardised_features_must_fit_float32_standardised_ones_only_float64() -> None:
    from valbench.userdata import feature_problem

    x = np.array([[1.0, 2.0], [3.0, 1e39]])  # beyond float32 (3.4e38), far below 1e150
    assert feature_problem("x", x, standardize=True) is None
    problem = feature_problem("x", x, standardize=False)
    assert problem is not None and "first in row 1" in problem and "models use float32" in problem


def test_negative_and_column_shaped_labels_are_read_as_given(tmp_path: Path) -> None:
    from valbench.userdata import integer_labels

    # Python ints (as pandas keeps integers past 64 bits): negatives are no overflow.
    labels = integer_labels("y", np.array([-(2**63), -3, 2], dtype=object))
    np.testing.assert_array_equal(labels, [-(2**63), -3, 2])
    # A float label below -2**53 is as inexact as one above it.
    assert "beyond 2**53" in str(integer_labels("y", np.array([-1e17, 0.0])))
    # y of shape (n, 1), as sklearn-style code often saves it, is one label per row
    x, y = _xy(30, 2, 2)
    np.savez(tmp_path / "col.npz", x=x, y=y[:, None])
    parts, classes = FileDataset(path=str(tmp_path / "col.npz")).read()
    np.testing.assert_array_equal(parts["train"][1], y)


def test_labels_of_different_types_across_splits_are_refused(tmp_path: Path) -> None:
    x, y = _xy(30, 2, 2)
    np.savez(tmp_path / "mix.npz", x=x, y=y, x_val=x[:6], y_val=np.array(["0", "1"] * 3))
    with pytest.raises(DatasetError, match="labels mix strings and integers across splits"):
        FileDataset(path=str(tmp_path / "mix.npz")).read()


def test_a_column_leaving_float32_after_standardising_is_named(tmp_path: Path) -> None:
    """Column 1 is ordinary in training and beyond float32 in the given test split."""
    x, y = _xy(30, 2, 3)
    x_test = x[:6].copy()
    x_test[2, 1] = 1e39
    np.savez(tmp_path / "w.npz", x=x, y=y, x_test=x_test, y_test=y[:6])
    with pytest.raises(DatasetError, match="feature column 1 is too large in the test split"):
        FileDataset(path=str(tmp_path / "w.npz")).load(seed=0)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        # Excel saving an empty sheet: a byte-order mark, or line breaks, and nothing else
        (
            b"\xef\xbb\xbf",
            r"holds no header and no rows \(only blank lines, or a byte-order mark\)",
        ),
        (b"\r\n\r\n", "holds no header and no rows"),
        # Excel's separator hint stood where the header should be
        (
            b"sep=,\na,b,label\n" + b"".join(b"%d,%d,%d\n" % (i, i % 3, i % 2) for i in range(8)),
            r"the first line \('sep=,'\) is a spreadsheet's separator hint, not the header",
        ),
    ],
)
def test_spreadsheet_leftovers_are_named_not_reported_as_parse_errors(
    tmp_path: Path, content: bytes, said: str
) -> None:
    path = tmp_path / "sheet.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=said) as err:
        FileDataset(path=str(path)).load(seed=0)
    assert "cannot parse" not in str(err.value)


def test_a_parquet_file_with_a_repeated_column_name_is_named(tmp_path: Path) -> None:
    import pyarrow as pa  # a test dependency (the [test] extra)
    import pyarrow.parquet as pq

    columns = [pa.array([1.0, 2.0, 3.0, 4.0]), pa.array([0, 1, 0, 1]), pa.array([1, 0, 1, 0])]
    path = tmp_path / "twice.parquet"
    pq.write_table(pa.table(columns, names=["a", "label", "label"]), path)
    with pytest.raises(DatasetError, match="has more than one column named label; rename all"):
        FileDataset(path=str(path)).load(seed=0)


def test_the_run_s_column_flags_apply_to_its_tables_not_its_npz_files() -> None:
    from valbench.userdata import column_flags

    assert column_flags("d.NPZ", "y", "id") == {}  # an .npz names its arrays itself
    assert column_flags("d.csv", "y", None) == {"label_column": "y"}
    assert column_flags("d.parquet", None, "id") == {"id_column": "id"}


def test_features_of_another_dimension_are_refused_saying_how_to_reshape_them() -> None:
    from valbench.userdata import feature_problem

    images = feature_problem("x", np.zeros((20, 2, 2)), standardize=True)
    assert images == (
        "x has shape (20, 2, 2); features must be 2-D (n_rows, n_features) (an image per "
        "row: flatten it, x.reshape(len(x), -1))"
    )
    column = feature_problem("x_val", np.zeros(5), standardize=True)
    assert column is not None and column.endswith("(one feature per row: x_val.reshape(-1, 1))")
    assert feature_problem("x", np.zeros((5, 2)), standardize=True) is None
