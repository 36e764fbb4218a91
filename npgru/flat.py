"""Named parameters stored in one flat buffer.

Training touches every parameter twice per step, in the global-norm clipping and in the
SGD update. Keeping all of them as views into one 1-D array makes each of those a single
vectorized operation instead of a loop over a dozen small arrays (docs/derivation.md,
section 10; ``npgru.optim``), while users still read and write ``params["W_xz"]`` by name.

A :class:`FlatDict` is a mapping whose values can be written but never replaced: every
assignment copies into the existing view, so no name can come loose from the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from npgru.backend import namespace_of
from npgru.errors import ShapeError

Array = Any


class FlatDict(MutableMapping):
    """A mapping of named arrays that are views into one 1-D buffer ``.flat``.

    Reading ``d[name]`` gives the view itself (writing into it writes into the buffer).
    Assigning, ``d[name] = value``, ``d.update(...)`` and ``d |= {...}``, copies the values
    into the existing views, after checking every name and shape; new names cannot be added
    and names cannot be removed, since the buffer has exactly the room of its layout. So the
    views can never be detached from the buffer that clipping and SGD update.

    Attributes:
        flat: the 1-D buffer holding every array, in ``.layout`` order.
        layout: tuple of ``(name, shape)``.
    """

    def __init__(self, flat: Array, layout: Iterable[tuple[str, tuple[int, ...]]]):
        xp = namespace_of(flat)
        self._flat = flat
        self._layout = tuple((name, tuple(shape)) for name, shape in layout)
        self._views: dict[str, Array] = {}
        start = 0
        for name, shape in self._layout:
            if name in self._views:
                raise ShapeError(f"the layout names {name!r} twice")
            size = math.prod(shape)
            self._views[name] = xp.reshape(flat[start : start + size], shape)
            start += size
        if start != flat.shape[0]:
            raise ShapeError(f"layout covers {start} values but the buffer holds {flat.shape[0]}")

    @property
    def flat(self) -> Array:
        """The 1-D buffer (read-only attribute: write into it, ``d.flat[...] = ...``)."""
        return self._flat

    @property
    def layout(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return self._layout

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Array]) -> FlatDict:
        """Copy ``arrays`` (all of one namespace and dtype) into a new flat buffer."""
        first = next(iter(arrays.values()))
        xp = namespace_of(first)
        flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays.values()])
        return cls(flat, [(name, a.shape) for name, a in arrays.items()])

    def zeros_like(self) -> FlatDict:
        """A FlatDict of zeros with the same layout, namespace and dtype (e.g. gradients)."""
        xp = namespace_of(self._flat)
        return FlatDict(xp.zeros_like(self._flat), self._layout)

    def empty_like(self) -> FlatDict:
        """Like :meth:`zeros_like` but uninitialized, for a caller that fills every entry."""
        xp = namespace_of(self._flat)
        return FlatDict(xp.empty_like(self._flat), self._layout)

    def copy(self) -> FlatDict:
        """An independent copy (a new buffer)."""
        xp = namespace_of(self._flat)
        return FlatDict(xp.asarray(self._flat, copy=True), self._layout)

    # ---------------------------------------------------------------- the mapping

    def __getitem__(self, name: str) -> Array:
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, name: object) -> bool:
        return name in self._views

    def _checked(self, name: Any, value: Any) -> Array:
        """The view ``value`` may be copied into; ShapeError for a new name or a wrong shape."""
        if name not in self._views:
            raise ShapeError(f"no parameter named {name!r}; known: {', '.join(self._views)}")
        view = self._views[name]
        shape = tuple(getattr(value, "shape", ()))
        if shape != tuple(view.shape):
            raise ShapeError(f"{name} has shape {tuple(view.shape)}, cannot assign shape {shape}")
        return view

    def __setitem__(self, name: str, value: Array) -> None:
        self._checked(name, value)[...] = value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Copy values into the views of existing names; all are checked before any is copied."""
        if isinstance(other, Mapping):
            pairs = list(other.items())
        elif hasattr(other, "keys"):  # like dict.update: anything with keys() and [ ]
            pairs = [(name, other[name]) for name in other.keys()]
        else:
            pairs = list(other)
        pairs += list(kwargs.items())
        targets = [(self._checked(name, value), value) for name, value in pairs]
        for view, value in targets:
            view[...] = value

    def __ior__(self, other: Any) -> FlatDict:
        """``d |= {...}``: copies into the views, like :meth:`update` (never detaches)."""
        self.update(other)
        return self

    def __or__(self, other: Any) -> FlatDict:
        """``d | {...}``: a new FlatDict (a new buffer) with ``other``'s values copied in."""
        if not isinstance(other, Mapping):
            return NotImplemented
        new = self.copy()
        new.update(other)
        return new

    def __delitem__(self, name: str) -> None:
        raise ShapeError("parameters of a FlatDict cannot be removed")

    def popitem(self) -> Any:
        raise ShapeError("parameters of a FlatDict cannot be removed")

    def clear(self) -> None:
        raise ShapeError("parameters of a FlatDict cannot be removed")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy.deepcopy rebuild the views from the buffer, so they stay views
        return (type(self), (self._flat, self._layout))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name!r}: {shape}" for name, shape in self._layout)
        return f"FlatDict({{{shapes}}}, {self._flat.shape[0]} values of {self._flat.dtype})"
