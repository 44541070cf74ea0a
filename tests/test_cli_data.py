"""Data files of ``amortized-ppl sample``: the CSV convention (indexed columns make a matrix),
``.npz`` files, the draws' file, and every file that does not fit the model refused in one line
naming the file, the column and what was expected."""

import numpy as np
import pytest

from amortized_ppl._cli_data import check_draws_path, group_columns, read_data, write_draws

ARGS = ("x", "y", "num_obs")


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_indexed_columns_make_a_matrix_in_index_order(tmp_path):
    path = _csv(tmp_path, "y,x_1,x_0\n1.5,2,3\n-0.5,4,5\n")
    data = read_data(path, ARGS)
    assert set(data) == {"x", "y"}
    np.testing.assert_array_equal(data["x"], [[3, 2], [5, 4]])
    assert data["x"].dtype == np.int32 and data["y"].dtype == np.float32
    np.testing.assert_allclose(data["y"], [1.5, -0.5])


def test_bracket_columns_a_bom_spaces_and_blank_lines_are_read(tmp_path):
    path = _csv(tmp_path, "\ufeff x[0] , x[1],y\n1, 2.5 ,3\n\n4,5,6\n")
    data = read_data(path, ARGS)
    np.testing.assert_allclose(data["x"], [[1.0, 2.5], [4.0, 5.0]])
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int32


def test_an_argument_named_like_an_indexed_column_is_taken_whole():
    assert group_columns(["x_0", "y"], ("x_0", "y"), "f") == {"x_0": 0, "y": 1}
    assert group_columns(["beta_hat_1", "beta_hat_0"], ("beta_hat",), "f") == {"beta_hat": [1, 0]}


CSV_REFUSALS = [
    ("z,y\n1,2\n", ("column 'z' of", "its arguments: x, y, num_obs")),
    ("x,x_0,y\n1,2,3\n", ("gives argument 'x' twice", "x_0, x_1")),
    ("x_0,x_2,y\n1,2,3\n", ("expected indices 0 to 1, got [0, 2]", "'x'")),
    ("y,y\n1,2\n", ("the column 'y' twice", "header")),
    ("y,\n1,2\n", ("an empty column name", "header")),
    ("x_0,y\n1,\n", ("row 2", "an empty cell in column 'y'")),
    ("x_0,y\n1,2\n3,abc\n", ("row 3", "'abc', not a number, in column 'y'")),
    ("x_0,y\n1,2,3\n", ("row 2", "3 cells, the header 2")),
    ("x_0,y\n", ("no data rows", "header")),
]


@pytest.mark.parametrize("text,needles", CSV_REFUSALS, ids=[n[0] for _, n in CSV_REFUSALS])
def test_csv_files_that_do_not_fit_are_refused(tmp_path, text, needles):
    path = _csv(tmp_path, text)
    with pytest.raises(ValueError) as error:
        read_data(path, ARGS)
    message = str(error.value)
    assert message.startswith("--data: ") and "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_npz_files_give_arrays_and_scalars(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((3, 2)), y=np.zeros(3), num_obs=np.array(3))
    data = read_data(path, ARGS)
    assert data["x"].shape == (3, 2) and data["num_obs"] == 3 and type(data["num_obs"]) is int


def test_npz_and_file_refusals(tmp_path):
    np.savez(tmp_path / "extra.npz", x=np.ones(3), w=np.ones(2))
    with pytest.raises(ValueError, match=r"holds w, not arguments of the model"):
        read_data(tmp_path / "extra.npz", ARGS)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        read_data(tmp_path / "bad.npz", ARGS)
    with pytest.raises(FileNotFoundError, match="--data: no file"):
        read_data(tmp_path / "missing.csv", ARGS)
    with pytest.raises(ValueError, match=r"expected a \.csv or \.npz file, got"):
        read_data(tmp_path / "data.txt", ARGS)


def test_the_draws_path_is_checked_before_any_work(tmp_path):
    assert check_draws_path(tmp_path / "new" / "draws.npz").name == "draws.npz"
    with pytest.raises(ValueError, match=r"--out: expected a file ending in \.npz or \.nc"):
        check_draws_path(tmp_path / "draws.csv")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_draws_path(tmp_path / "dir.npz")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot be created"):
        check_draws_path(tmp_path / "file" / "draws.npz")
    with pytest.raises(ValueError, match="hold 4 data sets"):
        check_draws_path(tmp_path / "draws.nc", num_datasets=4)


def test_draws_are_written_as_npz(tmp_path):
    draws = {"w": np.arange(6.0).reshape(3, 2), "s": np.ones(3)}
    path = write_draws(tmp_path / "out" / "draws.npz", draws)
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["w"], draws["w"])
        assert saved["s"].shape == (3,)
