"""Unpickling data files without running code from them: plain data and numpy arrays only.

The official CIFAR-10 python batches are pickles, and ``pickle.load`` calls whatever
callable a pickle names (``os.system``, ``builtins.exec``, ...), so a crafted
``data_batch_1`` runs any code it likes. ``pickle`` itself has no option to restrict
that; its documentation ("Restricting Globals") says to subclass ``Unpickler`` and
allow only known names in ``find_class``, which is what this module does.
(``numpy.load(allow_pickle=True)`` is unrestricted, and the restricted unpickler behind
``torch.load(weights_only=True)`` is private and reads only torch's own file format.)

Allowed are exactly the globals that pickles of numpy arrays and plain Python data
need, whichever Python and numpy wrote them:

- the official files (Python 2, numpy 1.x): ``numpy.core.multiarray._reconstruct``,
  ``numpy.ndarray``, ``numpy.dtype``;
- numpy >= 2 writes ``numpy._core.multiarray`` instead of ``numpy.core.multiarray``;
- protocol 5 (Python 3.14's default) pickles arrays with ``numpy[._]core.numeric._frombuffer``;
- numpy scalars (e.g. labels stored as ``np.int64``) need ``numpy[._]core.multiarray.scalar``;
- Python 3 writes ``bytes`` in protocols 0-2 as ``_codecs.encode(text, "latin1")``
  (allowed with that encoding only);
- protocols 0-3 write sets, frozensets, bytearrays and complex numbers through their
  builtin types, and protocols 0-2 write ``b""`` as ``bytes()`` (allowed without
  arguments only).

Everything else raises :class:`ForbiddenGlobalError` before anything is called.

Allowing a global is not enough, though: numpy trusts the *state* a pickle hands to
``dtype.__setstate__`` and ``ndarray.__setstate__``. A structured dtype whose state says
its object field holds no references, or that lays a bytes field over an object field,
turns bytes of the file into object pointers: the process crashes, or gets whatever
live object sits at an address the file names. numpy has no option to check such
states, so no numpy callable here ever sees what the file holds: ``find_class`` returns
checking stand-ins. They accept only what plain numeric arrays and scalars need (a type
string of a bool, integer, float, complex or byte-string type; a dtype state without
subarray, names, fields, metadata or flags; a shape and raw bytes of matching length),
build each dtype anew from the checked type string and each array with
``numpy.frombuffer``, and hand the result over only when loading ends (until then the
pickle holds a stand-in, so a later ``BUILD`` cannot reach the real array). Anything
else raises :class:`RefusedPickleError`, and so does a numpy value anywhere but an
item of a list, a value of a dict or the whole pickle (nothing CIFAR-10 needs).
"""

from __future__ import annotations

import codecs
import inspect
import math
import pickle
import re
import reprlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy < 2, numpy >= 2
_BUILTIN_MODULES = ("builtins", "__builtin__")  # Python 3, Python 2
_BUILTIN_TYPES = ("set", "frozenset", "bytearray", "complex", "bytes")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {(f"{core}.multiarray", name) for core in _NUMPY_CORE for name in ("_reconstruct", "scalar")}
    | {(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE}
    | {(module, name) for module in _BUILTIN_MODULES for name in _BUILTIN_TYPES}
)

# numpy type strings of plain numeric and byte-string dtypes, as numpy pickles them
# (``np.dtype("f8").__reduce__()[1][0] == "f8"``): bool, integers, floats, complex, S<n>
_TYPE_STRING = re.compile(r"b1|[iu][1248]|f(2|4|8|16)|c(8|16|32)|S(0|[1-9][0-9]{0,8})")
PLAIN_TYPES = "b1, i1..i8, u1..u8, f2, f4, f8, f16, c8, c16, c32, S<n>"
_MAX_DIMS = 32  # numpy 1.x's limit (numpy 2 allows 64)
_LATIN1 = ("latin1", "iso88591")  # spellings of latin-1, after lower() and removing - and _

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlevel = 3
_short.maxtuple = 9  # a dtype state whole: its last item is the flags


class RefusedPickleError(pickle.UnpicklingError):
    """A pickle asks for more than plain data and plain numeric numpy arrays; what it
    named was not called with what it gave."""


class ForbiddenGlobalError(RefusedPickleError):
    """A pickle names a global outside :data:`ALLOWED_GLOBALS`; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        allowed = ", ".join(f"{m}.{n}" for m, n in sorted(ALLOWED_GLOBALS))
        super().__init__(
            f"refused global {module}.{name}: only plain data and numpy arrays may be"
            f" unpickled (allowed globals: {allowed})"
        )


def _refuse(what: str, value: object, valid: str) -> RefusedPickleError:
    return RefusedPickleError(f"refused {what} {_short.repr(value)}: {valid}")


# ---- checks of what the pickle hands over ----------------------------------------------


def _text(value: object) -> str | None:
    """A str as Python 3 wrote it, or a Python 2 str loaded as bytes; else None."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _is_flag(value: object) -> bool:
    """A pickled bool: True/False, or 0/1 as Python 2's protocol 0 may write it."""
    return type(value) in (bool, int) and value in (0, 1)


def _is_int(value: object) -> bool:
    return type(value) is int


def _raw_bytes(value: object, what: str) -> bytes | bytearray:
    """The raw data of an array or scalar: bytes, a bytearray, or a str that a Python 2
    pickle loaded with ``encoding="latin1"`` (numpy encodes it back the same way)."""
    if isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin1")
        except UnicodeEncodeError:
            pass
    raise _refuse(f"raw data of {what}", value, "expected bytes")


def _shape(value: object) -> tuple[int, ...]:
    if (
        isinstance(value, tuple)
        and len(value) <= _MAX_DIMS
        and all(_is_int(n) and n >= 0 for n in value)
    ):
        return value
    raise _refuse("array shape", value, f"expected a tuple of at most {_MAX_DIMS} sizes >= 0")


class _Pending:
    """What the pickle holds in place of a numpy value until :func:`load` ends: it takes
    no state (but :class:`_PendingDtype`'s and :class:`_PendingArray`'s one state) and
    cannot be a dict key or set member."""

    __slots__ = ("what", "value")

    def __init__(self, what: str, value: Any = None) -> None:
        self.what = what
        self.value = value

    def __setstate__(self, state: object) -> None:
        raise _refuse(f"state for {self.what}", state, "it takes none")

    def __hash__(self) -> int:
        raise RefusedPickleError(f"refused {self.what} as a dict key or set member")

    def result(self) -> Any:
        if self.value is None:
            raise RefusedPickleError(f"refused {self.what} without its state")
        return self.value


class _PendingDtype(_Pending):
    """``numpy.dtype(type_string, align, copy)``: built by its one ``__setstate__``."""

    __slots__ = ("type_string", "plain")

    def __init__(self, type_string: str, plain: np.dtype) -> None:
        super().__init__(f"numpy.dtype({type_string!r})")
        self.type_string = type_string
        self.plain = plain  # numpy's dtype of the type string, before its byte order

    def __setstate__(self, state: object) -> None:
        """numpy's state of a plain dtype: ``(3, byte order, None, None, None, item size,
        alignment, 0)``; item size and alignment are -1 but for ``S<n>`` (n and 1)."""
        if self.value is not None:
            raise _refuse(f"second state for {self.what}", state, "a dtype takes one")
        flexible = self.type_string.startswith("S")
        size, align = (int(self.type_string[1:]), 1) if flexible else (-1, -1)
        single_byte = flexible or self.plain.itemsize == 1
        orders = ("|",) if single_byte else ("<", ">", "=")
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and _text(state[1]) in orders
            and state[2:5] == (None, None, None)
            and all(_is_int(n) for n in state[5:])
            and state[5:] == (size, align, 0)
        ):
            raise _refuse(
                f"state of {self.what}",
                state,
                f"expected (3, {'|'.join(orders)!r}, None, None, None, {size}, {align}, 0):"
                " no subarray, names, fields, metadata or flags",
            )
        order = _text(state[1])
        self.value = np.dtype(self.type_string if order == "|" else order + self.type_string)

    def dtype(self, what: str) -> np.dtype:
        if self.value is None:
            raise RefusedPickleError(f"refused {self.what} without its state in {what}")
        return self.value


def _dtype_of(value: object, what: str) -> np.dtype:
    if isinstance(value, _PendingDtype):
        return value.dtype(what)
    raise _refuse(f"dtype of {what}", value, "expected a numpy.dtype from the pickle")


def _array(raw: object, dtype: np.dtype, shape: tuple[int, ...], order: str, what: str):
    """A new array of ``shape`` from ``raw``, whose length must be exactly the array's."""
    raw = _raw_bytes(raw, what)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise _refuse(
            f"raw data of {what}",
            f"{len(raw)} bytes",
            f"a {dtype} array of shape {shape} takes {math.prod(shape) * dtype.itemsize} bytes",
        )
    try:
        flat = np.frombuffer(raw, dtype) if raw else np.empty(0, dtype)  # any numpy's empty
        return flat.reshape(shape, order=order)
    except ValueError as e:  # e.g. more elements than numpy can index, in an empty array
        raise _refuse(f"shape of {what}", shape, str(e)) from None


class _PendingArray(_Pending):
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``, built by its one
    ``__setstate__``: ``(1, shape, dtype, is_fortran, raw bytes)`` (old numpy wrote it
    without the leading version)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("numpy array")

    def __setstate__(self, state: object) -> None:
        if self.value is not None:
            raise _refuse(f"second state for {self.what}", state, "an array takes one")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4 and _is_flag(state[2])):
            raise _refuse("array state", state, "expected (1, shape, dtype, is_fortran, raw bytes)")
        shape, dtype, is_fortran, raw = state
        view = _array(
            raw, _dtype_of(dtype, "an array"), _shape(shape), "F" if is_fortran else "C", "an array"
        )
        # a copy, as numpy's own for small arrays (for large ones numpy keeps a writable
        # view of the pickle's bytes), in native byte order, as numpy's own
        self.value = view.astype(view.dtype.newbyteorder("="), order="K", copy=True)


# ---- the stand-ins find_class returns ------------------------------------------------------


def _no_call(cls: type, *args: object, **kwargs: object) -> None:
    raise RefusedPickleError("refused a call of numpy.ndarray: only _reconstruct takes it")


# ``numpy.ndarray`` as a pickle names it: only the first argument of ``_reconstruct``
_NdarrayMarker = type("numpy.ndarray", (), {"__new__": _no_call, "__slots__": ()})


def _dtype(obj: object, align: object = False, copy: object = True) -> _PendingDtype:
    type_string = _text(obj)
    if type_string is None or not _TYPE_STRING.fullmatch(type_string):
        raise _refuse(
            "numpy.dtype", obj, f"only plain numeric and byte-string types ({PLAIN_TYPES})"
        )
    if not (_is_flag(align) and _is_flag(copy)):
        raise _refuse("numpy.dtype arguments", (obj, align, copy), "expected (type, False, True)")
    try:
        plain = np.dtype(type_string)
    except TypeError:  # f16 / c32 where the C long double is 8 bytes
        raise _refuse("numpy.dtype", obj, "not a type of this platform") from None
    return _PendingDtype(type_string, plain)


def _reconstruct(subtype: object, shape: object, typecode: object) -> _PendingArray:
    if subtype is not _NdarrayMarker or shape != (0,) or _text(typecode) != "b":
        raise _refuse(
            "_reconstruct arguments", (subtype, shape, typecode), "expected (ndarray, (0,), b'b')"
        )
    return _PendingArray()


def _scalar(dtype: object, raw: object) -> _Pending:
    dtype = _dtype_of(dtype, "a scalar")
    if dtype.itemsize == 0:  # np.bytes_(b"") pickles with dtype S0, which no array has
        if _raw_bytes(raw, "a scalar") != b"":
            raise _refuse("raw data of a scalar", raw, "an S0 scalar takes 0 bytes")
        return _Pending("numpy scalar", np.bytes_(b""))
    return _Pending("numpy scalar", _array(raw, dtype, (1,), "C", "a scalar").copy()[0])


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _Pending:
    if order not in ("C", "F"):
        raise _refuse("array order", order, "expected 'C' or 'F'")
    dtype = _dtype_of(dtype, "an array")
    if not isinstance(buffer, bytes | bytearray):
        raise _refuse("buffer of an array", buffer, "expected bytes")
    # numpy's _frombuffer shares the buffer; so does this (a bytearray stays writable)
    return _Pending("numpy array", _array(buffer, dtype, _shape(shape), order, "an array"))


def _latin1_encode(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as Python 3's protocol 0-2 pickles of ``bytes`` call it."""
    if (
        not isinstance(encoding, str)
        or encoding.lower().replace("-", "").replace("_", "") not in _LATIN1
    ):
        raise _refuse(
            "_codecs.encode(..., encoding)", encoding, "pickles of bytes use 'latin1' only"
        )
    if not isinstance(text, str):
        raise _refuse("_codecs.encode text", text, "expected a str")
    try:
        return codecs.encode(text, "latin1")
    except UnicodeEncodeError:
        raise _refuse("_codecs.encode text", text, "expected latin-1 characters") from None


def _bytearray(source: object = b"", encoding: object = None) -> bytearray:
    if encoding is None and isinstance(source, bytes | bytearray):
        return bytearray(source)
    if isinstance(source, str) and isinstance(encoding, str):
        return bytearray(_latin1_encode(source, encoding))
    raise _refuse(
        "bytearray arguments", (source, encoding), "expected bytes, or a str and 'latin-1'"
    )


def _bytes() -> bytes:
    """``bytes()``: how Python 3's protocols 0-2 write ``b""``."""
    return b""


def _set_of(kind: type) -> Callable[..., set | frozenset]:
    def build(items: object = ()) -> set | frozenset:
        if not isinstance(items, list | tuple):
            raise _refuse(f"{kind.__name__} argument", items, "expected a list")
        try:
            return kind(items)
        except TypeError:
            raise _refuse(f"{kind.__name__} members", items, "expected hashable values") from None

    return build


def _complex(real: object = 0.0, imag: object = 0.0) -> complex:
    if not all(type(x) in (int, float) for x in (real, imag)):
        raise _refuse("complex arguments", (real, imag), "expected two numbers")
    return complex(real, imag)


def _stand_in(name: str, build: Callable[..., Any]) -> type:
    """A class for ``find_class`` to return: pickle's NEWOBJ needs a class, and REDUCE,
    NEWOBJ and INST each end in its ``__new__``, which calls ``build`` if the arguments
    fit its signature (a ``__new__`` that returns no instance of its class skips
    ``__init__``, so the caller gets ``build``'s result)."""
    signature = inspect.signature(build)

    def __new__(cls: type, *args: object, **kwargs: object) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            raise _refuse(f"arguments of {name}", args, f"expected {signature}") from None
        return build(*bound.args, **bound.kwargs)

    return type(name, (), {"__new__": __new__, "__slots__": ()})


_STAND_INS: dict[str, type] = {
    "dtype": _stand_in("numpy.dtype", _dtype),
    "ndarray": _NdarrayMarker,
    "_reconstruct": _stand_in("_reconstruct", _reconstruct),
    "scalar": _stand_in("scalar", _scalar),
    "_frombuffer": _stand_in("_frombuffer", _frombuffer),
    "encode": _stand_in("_codecs.encode", _latin1_encode),
    "bytearray": _stand_in("bytearray", _bytearray),
    "bytes": _stand_in("bytes", _bytes),
    "set": _stand_in("set", _set_of(set)),
    "frozenset": _stand_in("frozenset", _set_of(frozenset)),
    "complex": _stand_in("complex", _complex),
}


# ---- loading -------------------------------------------------------------------------------

_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _resolved(value: object) -> object:
    """``value`` with each stand-in in a list or a dict's values replaced by the numpy
    value it built; a stand-in anywhere else, or anything that is not plain data, is
    refused. Iterative, so any nesting depth the pickle had is fine."""
    if isinstance(value, _Pending):
        return _numpy_value(value)
    seen: set[int] = set()
    stack = [value]
    while stack:
        container = stack.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        if isinstance(container, list):
            items = enumerate(container)
        elif isinstance(container, dict):
            items = container.items()
        else:
            items = None
        if items is not None:
            replaced = []
            for key, item in items:
                if isinstance(item, _Pending):
                    replaced.append((key, _numpy_value(item)))
                else:
                    stack.append(item)
            for key, item in replaced:
                container[key] = item
            if isinstance(container, dict):
                stack.extend(container)  # keys are hashable: never a stand-in
        elif isinstance(container, tuple | set | frozenset):
            for item in container:
                if isinstance(item, _Pending):
                    raise RefusedPickleError(
                        f"refused {item.what} in a {type(container).__name__}: numpy values"
                        " may be list items, dict values or the whole pickle"
                    )
                stack.append(item)
        elif isinstance(container, type):  # a global that was not called
            raise RefusedPickleError(
                f"refused the global {container.__name__} as a value: only plain data and"
                " numpy arrays"
            )
        elif not isinstance(container, _LEAVES):
            raise _refuse("value", container, "only plain data and numpy arrays")
    return value


def _numpy_value(pending: _Pending) -> Any:
    if isinstance(pending, _PendingDtype):
        raise RefusedPickleError(f"refused {pending.what} outside an array or scalar")
    return pending.result()


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`, each to a
    checking stand-in (use :func:`load`, which hands over the numpy values they built)."""

    def find_class(self, module: str, name: str) -> Any:
        # names as written in the file: Python 2's ``__builtin__`` counts as ``builtins``
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobalError(module, name)
        return _STAND_INS[name]


def load(file: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """``pickle.load(file, encoding=encoding)`` of plain data and plain numeric numpy
    arrays and scalars, which come out exactly as numpy's own unpickling gives them.

    Raises :class:`ForbiddenGlobalError` on a global outside :data:`ALLOWED_GLOBALS`,
    :class:`RefusedPickleError` on any other numpy value or call argument than plain
    numeric arrays need, and whatever ``pickle.load`` raises on a truncated or corrupt
    file.
    """
    return _resolved(RestrictedUnpickler(file, encoding=encoding).load())
