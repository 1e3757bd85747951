"""check_expression: every matrix format, every kind of invalid value, exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellrlhf.cell2text.expression_checks import (
    InvalidExpressionError,
    check_expression,
    count_invalid_cells,
    invalid_value_error,
)

FORMATS = ["csr", "csc", "coo", "dense"]


def as_format(dense: np.ndarray, fmt: str):
    return dense if fmt == "dense" else sp.csr_matrix(dense).asformat(fmt)


def bad_matrix(dtype=np.float32) -> np.ndarray:
    X = np.ones((6, 4), dtype=dtype)
    X[0, 1] = np.nan  # cell 0: NaN
    X[2, 0] = np.inf  # cell 2: inf
    X[2, 3] = -2.0  # cell 2: also negative
    X[5, 2] = -0.5  # cell 5: negative
    return X


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_counts_cells_per_kind(fmt, dtype):
    bad = count_invalid_cells(as_format(bad_matrix(dtype), fmt))
    assert (bad.n_cells, bad.nan, bad.inf, bad.negative) == (6, 1, 1, 2)
    assert list(bad.rows) == [0, 2, 5]
    assert bad.n_invalid == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_names_layer_and_counts(fmt):
    with pytest.raises(InvalidExpressionError) as info:
        check_expression(as_format(bad_matrix(), fmt), "counts")
    message = str(info.value)
    assert message.startswith("layers['counts']: 3 of 6 cells")
    assert "1 with NaN" in message and "1 with infinite values" in message
    assert "2 with negative values" in message
    assert "rows 0, 2, 5" in message
    assert isinstance(info.value, ValueError)


def test_x_is_named_adata_x():
    X = np.array([[1.0, -1.0]])
    with pytest.raises(ValueError, match=r"^adata\.X: 1 of 1 cells"):
        check_expression(X)


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_inputs_pass(fmt):
    X = np.array([[0, 1.5, 3], [0, 0, 0]], dtype=np.float32)
    check_expression(as_format(X, fmt), "X")
    check_expression(as_format(X.astype(np.int64), fmt), "X")
    check_expression(as_format(X.astype(np.uint16), fmt), "X")
    check_expression(as_format(X.astype(bool), fmt), "X")
    check_expression(np.array([[-0.0, 1.0]]), "X")  # negative zero is zero


def test_negative_integers_are_caught():
    X = sp.csr_matrix(np.array([[1, 0], [0, -3]], dtype=np.int32))
    with pytest.raises(ValueError, match="1 of 2 cells.*1 with negative values"):
        check_expression(X, "raw")


def test_non_numeric_dtype_is_refused():
    with pytest.raises(TypeError, match="real numbers"):
        check_expression(np.array([["a", "b"]], dtype=object))


def test_many_rows_are_abbreviated_and_partial_counts_say_so():
    flags = np.zeros(100, dtype=np.uint8)
    flags[10:30] = 4
    err = invalid_value_error(flags, "X", row_offset=1000, partial=True)
    message = str(err)
    assert "20 in the 100 cells read so far (rows 1000-1099)" in message
    assert "rows 1010, 1011, 1012, 1013, 1014, ..." in message
