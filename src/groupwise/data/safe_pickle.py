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
  builtin types.

Everything else raises :class:`ForbiddenGlobalError` before anything is called.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy < 2, numpy >= 2
_BUILTIN_MODULES = ("builtins", "__builtin__")  # Python 3, Python 2
_BUILTIN_TYPES = ("set", "frozenset", "bytearray", "complex")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {(f"{core}.multiarray", name) for core in _NUMPY_CORE for name in ("_reconstruct", "scalar")}
    | {(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE}
    | {(module, name) for module in _BUILTIN_MODULES for name in _BUILTIN_TYPES}
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle names a global outside :data:`ALLOWED_GLOBALS`; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        allowed = ", ".join(f"{m}.{n}" for m, n in sorted(ALLOWED_GLOBALS))
        super().__init__(
            f"refused global {module}.{name}: only plain data and numpy arrays may be"
            f" unpickled (allowed globals: {allowed})"
        )


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3's protocol 0-2 pickles of ``bytes`` call it."""
    if not isinstance(encoding, str) or encoding.lower().replace("-", "").replace("_", "") not in (
        "latin1",
        "iso88591",
    ):
        raise pickle.UnpicklingError(
            f"refused _codecs.encode(..., {encoding!r}): pickles of bytes use 'latin1' only"
        )
    return codecs.encode(text, "latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        # names as written in the file: Python 2's are mapped (``__builtin__`` ->
        # ``builtins``) only by the base class, after this check
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobalError(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        return super().find_class(module, name)


def load(file: IO[bytes], *, encoding: str = "ASCII") -> Any:
    """``pickle.load(file, encoding=encoding)`` allowing only :data:`ALLOWED_GLOBALS`.

    Raises :class:`ForbiddenGlobalError` on any other global, and whatever
    ``pickle.load`` raises on a truncated or corrupt file.
    """
    return RestrictedUnpickler(file, encoding=encoding).load()
