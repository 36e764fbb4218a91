"""Named parameters stored in one flat buffer.

Training touches every parameter twice per step, in the global-norm clipping and in the
SGD update. Keeping all of them as views into one 1-D array makes each of those a single
vectorized operation instead of a loop over a dozen small arrays (design.md §5), while
users still read and write ``params["W_xz"]`` by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from npgru.backend import namespace_of
from npgru.errors import ShapeError

Array = Any


class FlatDict(dict):
    """A dict of named arrays that are views into one 1-D buffer ``.flat``.

    Assigning to an existing name copies into its view (the buffer stays shared); new names
    cannot be added, since the buffer has no room for them.

    Attributes:
        flat: the 1-D buffer holding every array, in ``.layout`` order.
        layout: tuple of ``(name, shape)``.
    """

    def __init__(self, flat: Array, layout: Iterable[tuple[str, tuple[int, ...]]]):
        xp = namespace_of(flat)
        self.flat = flat
        self.layout = tuple((name, tuple(shape)) for name, shape in layout)
        start = 0
        for name, shape in self.layout:
            size = math.prod(shape)
            super().__setitem__(name, xp.reshape(flat[start : start + size], shape))
            start += size
        if start != flat.shape[0]:
            raise ShapeError(f"layout covers {start} values but the buffer holds {flat.shape[0]}")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Array]) -> FlatDict:
        """Copy ``arrays`` (all of one namespace and dtype) into a new flat buffer."""
        first = next(iter(arrays.values()))
        xp = namespace_of(first)
        flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays.values()])
        return cls(flat, [(name, a.shape) for name, a in arrays.items()])

    def zeros_like(self) -> FlatDict:
        """A FlatDict of zeros with the same layout, namespace and dtype (e.g. gradients)."""
        xp = namespace_of(self.flat)
        return FlatDict(xp.zeros_like(self.flat), self.layout)

    def empty_like(self) -> FlatDict:
        """Like :meth:`zeros_like` but uninitialized, for a caller that fills every entry."""
        xp = namespace_of(self.flat)
        return FlatDict(xp.empty_like(self.flat), self.layout)

    def copy(self) -> FlatDict:
        """An independent copy (a new buffer)."""
        xp = namespace_of(self.flat)
        return FlatDict(xp.asarray(self.flat, copy=True), self.layout)

    def __setitem__(self, name: str, value: Array) -> None:
        if name not in self:
            raise ShapeError(f"no parameter named {name!r}; known: {', '.join(self)}")
        view = self[name]
        if tuple(getattr(value, "shape", ())) != tuple(view.shape):
            raise ShapeError(
                f"{name} has shape {tuple(view.shape)}, cannot assign shape "
                f"{tuple(getattr(value, 'shape', ()))}"
            )
        view[...] = value

    def __delitem__(self, name: str) -> None:
        raise ShapeError("parameters of a FlatDict cannot be removed")

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def pop(self, *args: Any) -> Any:
        raise ShapeError("parameters of a FlatDict cannot be removed")

    def popitem(self) -> Any:
        raise ShapeError("parameters of a FlatDict cannot be removed")

    def setdefault(self, *args: Any) -> Any:
        raise ShapeError("parameters of a FlatDict cannot be added")

    def clear(self) -> None:
        raise ShapeError("parameters of a FlatDict cannot be removed")
