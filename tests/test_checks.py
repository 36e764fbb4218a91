"""Tests of npgru.checks: the float dtype is accepted in every spelling NumPy users write
(``"float64"``, ``np.float64``, ``np.dtype("f8")``, ``float``), the GRU variant and sizes are
validated, and each refusal is a one-line ConfigError naming the parameter."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import one_line

import npgru
from npgru import checks, gru
from npgru.errors import ConfigError

FLOAT64 = ["float64", "f8", np.float64, np.dtype("float64"), float, np.double]
FLOAT32 = ["float32", "f4", np.float32, np.dtype("float32"), np.single]


@pytest.mark.parametrize("spelling", FLOAT64, ids=repr)
def test_float64_spellings(spelling):
    assert checks.float_dtype(spelling) == "float64"


@pytest.mark.parametrize("spelling", FLOAT32, ids=repr)
def test_float32_spellings(spelling):
    assert checks.float_dtype(spelling) == "float32"


@pytest.mark.parametrize(
    "bad",
    ["float16", np.float16, np.int64, int, "int32", "complex128", None, True, "nonsense", object()],
    ids=lambda v: "object()" if type(v) is object else repr(v),
)
def test_other_dtypes_are_refused(bad):
    with pytest.raises(ConfigError) as info:
        checks.float_dtype(bad)
    assert "dtype" in one_line(info.value)


@pytest.mark.parametrize("variant", ["d2l", "reset_after"])
@pytest.mark.parametrize(
    ("spelling", "expected"), [(np.float64, np.float64), (np.float32, np.float32)]
)
def test_the_model_and_init_params_take_numpy_dtypes(variant, spelling, expected):
    """The API fault of issue 10: these raised "dtype must be 'float32' or 'float64'"."""
    model = npgru.GRULanguageModel(5, 3, variant=variant, dtype=spelling)
    assert model.dtype == np.dtype(expected).name
    assert model.params.flat.dtype == expected
    params = gru.init_params(5, 3, variant=variant, dtype=spelling)
    assert all(p.dtype == expected for p in params.values())
    assert np.array_equal(
        params["W_xz"],
        gru.init_params(5, 3, variant=variant, dtype=np.dtype(expected).name)["W_xz"],
    )


def test_variant():
    assert checks.gru_variant("d2l") == "d2l"
    assert checks.gru_variant("reset_after") == "reset_after"
    for bad in ("lstm", "D2L", None, 1):
        with pytest.raises(ConfigError) as info:
            checks.gru_variant(bad)
        assert "variant" in one_line(info.value)


def test_positive_int():
    assert checks.positive_int("hidden_size", 3) == 3
    assert type(checks.positive_int("hidden_size", np.int64(3))) is int
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ConfigError) as info:
            checks.positive_int("hidden_size", bad)
        assert "hidden_size" in one_line(info.value)
    assert checks.integer("seed", 0, low=0) == 0
    with pytest.raises(ConfigError, match="an integer >= 0"):
        checks.integer("seed", -1, low=0)


@pytest.mark.parametrize("check, good, bad", [
    (checks.fraction, [0, 0.5, 0.999], [1, 1.0, -0.1, float("nan"), True, "0.5", None]),
    (checks.factor, [1, 0.5, 1e-9], [0, 1.5, -1, float("nan"), True, "0.5", None]),
])  # fmt: skip
def test_fraction_and_factor(check, good, bad):
    for value in good:
        assert check("x", value) == float(value)
    for value in bad:
        with pytest.raises(ConfigError, match="x must be") as info:
            check("x", value)
        one_line(info.value)
