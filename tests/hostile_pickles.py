"""Pickles that call numpy's allowed globals with states of one's choosing, as a crafted
CIFAR-10 batch file would. Import from tests as ``from hostile_pickles import ...``.

``Reduce(func, args, state)`` pickles as ``func(*args)`` followed by ``BUILD state``, with
``func`` written as the global it is (``numpy.dtype``, ``numpy[._]core.multiarray
._reconstruct``, ...): the pickler writes exactly what a hand-made file would hold.
"""

from __future__ import annotations

import numpy as np

# the globals of the installed numpy (numpy.core on numpy 1.x, numpy._core on 2.x)
RECONSTRUCT = np.zeros(0).__reduce__()[0]
SCALAR = np.int64(0).__reduce__()[0]
FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]
NO_STATE = object()


class Reduce:
    """Pickles as ``func(*args)``, then ``BUILD state`` unless state is ``NO_STATE``."""

    def __init__(self, func, args, state=NO_STATE):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is NO_STATE:
            return self.func, self.args
        return self.func, self.args, self.state

    def __repr__(self):
        state = "" if self.state is NO_STATE else f" BUILD {self.state!r}"
        return f"{getattr(self.func, '__name__', self.func)}{self.args!r}{state}"


def dtype(type_string, state) -> Reduce:
    """``numpy.dtype(type_string, False, True)`` then ``__setstate__(state)``, as numpy
    pickles a dtype."""
    return Reduce(np.dtype, (type_string, False, True), state)


def plain_dtype(type_string: str) -> Reduce:
    """A dtype pickled with the very state numpy writes for it."""
    return Reduce(*np.dtype(type_string).__reduce__())


def array(dt, shape, raw, fortran=False) -> Reduce:
    """``_reconstruct(ndarray, (0,), b"b")`` then ``__setstate__((1, shape, dt, fortran, raw))``."""
    return Reduce(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dt, fortran, raw))


OBJECT = dtype("O8", (3, "|", None, None, None, -1, -1, 63))  # numpy's own state of 'O'
NPY_ITEM_REFCOUNT = 0x01
ADDRESS = (0x4141414141414141).to_bytes(8, "little")  # nothing lives there


def object_field_without_references(raw: bytes = ADDRESS) -> Reduce:
    """A one-element array of a structured dtype whose one field is an object, with flags
    0: numpy copies ``raw`` into the field as if it held no references, so its 8 bytes
    are read as a pointer when the element is used."""
    no_refs = dtype("V8", (3, "|", None, ("a",), {"a": (OBJECT, 0)}, 8, 1, 0))
    assert not no_refs.state[-1] & NPY_ITEM_REFCOUNT
    return array(no_refs, (1,), raw)


def object_field_under_bytes_field() -> Reduce:
    """An object field and an ``S8`` field at the same offset (numpy's own flags for an
    object field): setting the bytes field overwrites the object pointer."""
    s8 = dtype("S8", (3, "|", None, None, None, 8, 1, 0))
    both = dtype("V8", (3, "|", None, ("o", "s"), {"o": (OBJECT, 0), "s": (s8, 0)}, 8, 1, 27))
    return array(both, (1,), [(None, b"AAAAAAAA")])
