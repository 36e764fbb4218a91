"""Tests of npgru.FlatDict: a mapping of named views into one flat buffer that can be written
but never detached from it (no replaced values, no new names, no removed names)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import MutableMapping

import numpy as np
import pytest

import npgru
from npgru import FlatDict
from npgru.errors import ShapeError


def make() -> FlatDict:
    return FlatDict.from_arrays(
        {"W": np.arange(6.0).reshape(2, 3), "b": np.array([10.0, 20.0]), "c": np.array(7.0)}
    )


def attached(d: FlatDict) -> bool:
    return all(np.shares_memory(a, d.flat) for a in d.values())


def test_a_mutable_mapping_not_a_dict():
    d = make()
    assert isinstance(d, MutableMapping) and not isinstance(d, dict)
    assert list(d) == ["W", "b", "c"] and len(d) == 3
    assert "W" in d and "x" not in d
    assert d.get("x") is None
    assert [a.shape for a in d.values()] == [(2, 3), (2,), ()]
    np.testing.assert_array_equal(d.flat, [0, 1, 2, 3, 4, 5, 10, 20, 7])
    assert attached(d)
    assert dict(d)["b"] is d["b"]
    assert "'W': (2, 3)" in repr(d) and "9 values of float64" in repr(d)


def test_assignment_copies_into_the_view():
    d = make()
    view = d["b"]
    d["b"] = np.array([1.0, 2.0])
    assert d["b"] is view and attached(d)
    np.testing.assert_array_equal(d.flat[6:8], [1.0, 2.0])
    d["W"] *= 2  # in place, then assigned to itself
    np.testing.assert_array_equal(d.flat[:6], 2 * np.arange(6.0))


def test_or_equals_copies_into_the_views_never_detaches():
    """The bug of issue 10: ``params |= {"b_q": x}`` used to replace the view by x."""
    d = make()
    views = dict(d)
    x = np.array([-1.0, -2.0])
    result = d.__ior__({"b": x})
    assert result is d
    d |= {"c": np.array(3.0)}
    assert all(d[name] is views[name] for name in d) and attached(d)
    np.testing.assert_array_equal(d.flat[6:], [-1.0, -2.0, 3.0])
    x[0] = 99.0  # the value was copied, not kept
    assert d["b"][0] == -1.0


@pytest.mark.parametrize(
    "change",
    [{"b": np.zeros(2), "new": np.zeros(2)}, {"b": np.zeros(2), "W": np.zeros((3, 2))}],
    ids=["new name", "wrong shape"],
)
def test_bad_updates_are_refused_and_change_nothing(change):
    d = make()
    before = d.flat.copy()
    with pytest.raises(ShapeError):
        d |= change
    with pytest.raises(ShapeError):
        d.update(change)
    with pytest.raises(ShapeError):
        d.update(**change)
    np.testing.assert_array_equal(d.flat, before)
    assert list(d) == ["W", "b", "c"] and attached(d)
    with pytest.raises(ShapeError, match="no parameter named 'x'"):
        d["x"] = np.zeros(2)
    with pytest.raises(ShapeError, match="cannot assign shape"):
        d["b"] = np.zeros(3)


def test_update_accepts_pairs_and_keywords():
    d = make()
    d.update([("b", np.ones(2))], c=np.array(5.0))
    np.testing.assert_array_equal(d.flat[6:], [1.0, 1.0, 5.0])

    class Keyed:  # not a Mapping, but has keys() and [ ], which dict.update accepts too
        def keys(self):
            return ["c"]

        def __getitem__(self, name):
            return np.array(6.0)

    d.update(Keyed())
    assert d["c"] == 6.0
    d.update(make())  # another FlatDict: its values are copied
    np.testing.assert_array_equal(d.flat, make().flat)
    assert attached(d)


def test_or_makes_a_new_buffer():
    d = make()
    e = d | {"b": np.zeros(2)}
    assert isinstance(e, FlatDict) and e.layout == d.layout
    assert not np.shares_memory(e.flat, d.flat) and attached(e)
    np.testing.assert_array_equal(e["b"], [0.0, 0.0])
    np.testing.assert_array_equal(d["b"], [10.0, 20.0])


def test_names_cannot_be_removed_or_added():
    d = make()
    for remove in (lambda: d.pop("b"), d.popitem, d.clear, lambda: d.__delitem__("b")):
        with pytest.raises(ShapeError):
            remove()
    assert d.setdefault("b") is d["b"]
    with pytest.raises(ShapeError):
        d.setdefault("new", np.zeros(2))
    assert list(d) == ["W", "b", "c"]


def test_the_buffer_cannot_be_replaced():
    d = make()
    with pytest.raises(AttributeError):
        d.flat = np.zeros(9)
    with pytest.raises(AttributeError):
        d.layout = ()
    d.flat[...] = 1.0  # writing into it is the point
    assert all(np.all(a == 1.0) for a in d.values())


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda d: pickle.loads(pickle.dumps(d))])
def test_copies_keep_their_views_attached(clone):
    d = make()
    e = clone(d)
    assert isinstance(e, FlatDict) and attached(e) and not np.shares_memory(e.flat, d.flat)
    np.testing.assert_array_equal(e.flat, d.flat)
    e.flat[...] = 0.0
    assert not np.any(e["W"]) and np.any(d["W"])


def test_bad_layouts_are_refused():
    with pytest.raises(ShapeError, match="twice"):
        FlatDict(np.zeros(4), [("a", (2,)), ("a", (2,))])
    with pytest.raises(ShapeError, match="covers"):
        FlatDict(np.zeros(4), [("a", (3,))])


def test_a_model_stays_attached_after_or_equals(rng):
    """After ``model.params |= {...}`` the SGD update (one operation on the flat buffer)
    still reaches every parameter, the replaced one included."""
    model = npgru.GRULanguageModel(5, 4, dtype="float64", seed=0)
    b_q = rng.normal(size=5)
    model.params |= {"b_q": b_q}
    assert attached(model.params)
    np.testing.assert_array_equal(model.params["b_q"], b_q)
    X, Y = rng.integers(0, 5, size=(2, 3)), rng.integers(0, 5, size=(2, 3))
    _, grads, _ = model.loss_and_grads(X, Y, model.begin_state(2))
    expected = model.params["b_q"] - 0.5 * grads["b_q"]
    npgru.sgd(model.params, grads, lr=0.5)
    np.testing.assert_allclose(model.params["b_q"], expected, rtol=0, atol=1e-15)
