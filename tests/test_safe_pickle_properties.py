"""The promise of ``safe_pickle.load`` as properties over generated pickles (issue 26):

1. a pickle made only of the allowed globals, with any dtype arguments and states,
   shapes, raw-data lengths, extra ``BUILD`` states, sharing and nesting, either loads
   to plain data (dicts, lists, tuples, sets, bytes, str, numbers, numpy arrays and
   scalars of plain numeric or byte-string types) or raises ``RefusedPickleError``:
   never a crash, never another exception;
2. plain data with numpy arrays of every allowed type, byte order, memory order and
   shape loads exactly as numpy's own unpickling gives it, under every protocol.

The hostile pickles are loaded in this process: a crash here is a crash of the test run.
"""

from __future__ import annotations

import io
import math
import pickle
import warnings

import numpy as np
import pytest
from hostile_pickles import (
    FROMBUFFER,
    NO_STATE,
    OBJECT,
    RECONSTRUCT,
    SCALAR,
    Reduce,
    plain_dtype,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_safe_pickle import assert_same_numpy_value

from groupwise.data import safe_pickle
from groupwise.data.safe_pickle import RefusedPickleError

PLAIN_KINDS = "biufcS"  # bool, int, uint, float, complex, bytes
TYPE_STRINGS = ["b1", "i1", "u1", "i2", "u4", "i8", "f2", "f4", "f8", "c8", "c16", "S1", "S5"]
HOSTILE_TYPE_STRINGS = ["O8", "O", "V8", "V16", "U3", "M8", "m8", "S0", "i3", "u1,u1", ""]
ORDERS = ["|", "<", ">", "=", b"|", b"<", "x", None]
PROTOCOLS = st.integers(0, pickle.HIGHEST_PROTOCOL)


def numpy_state(type_string: str) -> tuple:
    """numpy's own state for the type string (a u1's where numpy knows none)."""
    try:
        with warnings.catch_warnings():  # numpy's deprecated aliases among the bytes drawn
            warnings.simplefilter("ignore", DeprecationWarning)
            reduced = np.dtype(type_string).__reduce__()
    except (TypeError, ValueError, SyntaxError):  # not a type string numpy knows
        reduced = ()
    return reduced[2] if len(reduced) == 3 else (3, "|", None, None, None, -1, -1, 0)


@st.composite
def dtype_states(draw, type_string, inner) -> tuple:
    """numpy's own state for the type, or that state with items replaced: names, fields
    (at any offsets, so fields overlap), a subarray, sizes, flags, metadata."""
    state = list(numpy_state(type_string))
    replacements = {
        0: st.sampled_from([0, 1, 2, 3, 4]),
        1: st.sampled_from(ORDERS),
        2: st.tuples(inner, st.tuples(st.integers(0, 3))),
        3: st.tuples(st.sampled_from(["a", "b"])),
        4: st.dictionaries(
            st.sampled_from(["a", "b"]), st.tuples(inner, st.integers(-8, 16)), max_size=2
        ),
        5: st.integers(-1, 32),
        6: st.integers(-1, 16),
        7: st.sampled_from([0, 1, 8, 27, 63, 255]),
    }
    changes = st.sets(st.sampled_from(sorted(replacements)), max_size=3)
    for index in draw(st.one_of(st.just(set()), changes)):  # numpy's own state half the time
        state[index] = draw(replacements[index])
    if draw(st.booleans()) and state[0] == 4:
        state.append({"meta": 1})
    return tuple(state)


# the dtypes a state may nest before the recursion gives generated ones
FIELD_DTYPES = st.sampled_from([OBJECT, plain_dtype("S8"), plain_dtype("u1")])


def dtypes(inner=FIELD_DTYPES):
    """``numpy.dtype(t, align, copy)`` with a state; ``inner`` gives nested dtypes."""
    type_strings = st.one_of(
        st.sampled_from(TYPE_STRINGS),  # mostly plain types, so that many pickles load
        st.sampled_from(TYPE_STRINGS),
        st.sampled_from(HOSTILE_TYPE_STRINGS),
        st.binary(max_size=2),
    )
    return type_strings.flatmap(
        lambda t: st.builds(
            lambda flags, state: Reduce(np.dtype, (t, *flags), state),
            st.sampled_from([(False, True)] * 4 + [(0, 1), (True, True), ("x", None)]),
            st.one_of(dtype_states(t, inner), dtype_states(t, inner), st.just(NO_STATE)),
        )
    )


NESTED_DTYPES = st.recursive(dtypes(), lambda inner: dtypes(inner), max_leaves=3)
SHAPES = st.tuples() | st.tuples(st.integers(-1, 3)) | st.tuples(*[st.integers(0, 3)] * 2)


def item_size(dt: Reduce) -> int:
    type_string = dt.args[0]
    if dt.state is not NO_STATE and isinstance(dt.state[5], int) and dt.state[5] > 0:
        return dt.state[5]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.dtype(type_string).itemsize or 1
    except (TypeError, ValueError, SyntaxError):
        return 8


@st.composite
def raw_data(draw, dt, shape):
    """Bytes of the length the array takes, one more or one less, a list (as numpy pickles
    object arrays) or text."""
    exact = max(math.prod(shape), 0) * item_size(dt)
    length = max(exact + draw(st.sampled_from([0, 0, 0, -1, 1])), 0)
    return draw(
        st.one_of(
            st.binary(min_size=length, max_size=length),
            st.lists(st.one_of(st.none(), st.integers(), st.binary(max_size=8)), max_size=3),
            st.text(max_size=8),
        )
    )


STATES_AFTER = st.one_of(
    st.just(NO_STATE),
    st.just(NO_STATE),
    st.tuples(st.just(1), SHAPES, NESTED_DTYPES, st.booleans(), st.binary(max_size=16)),
)


@st.composite
def numpy_values(draw):
    """An array (``_reconstruct`` + state, or ``_frombuffer``), a scalar, or a call of
    numpy.ndarray, each built from generated dtypes, shapes and raw data; sometimes with
    a further ``BUILD`` state."""
    dt = draw(NESTED_DTYPES)
    shape = draw(SHAPES)
    raw = draw(raw_data(dt, shape))
    kind = draw(st.sampled_from(["reconstruct", "reconstruct", "frombuffer", "scalar", "call"]))
    if kind == "reconstruct":
        fortran = draw(st.sampled_from([False, True, 1, "x"]))
        state = draw(st.sampled_from([(1, shape, dt, fortran, raw), (shape, dt, fortran, raw)]))
        args = draw(st.sampled_from([(np.ndarray, (0,), b"b"), (np.ndarray, shape, b"b")]))
        return Reduce(RECONSTRUCT, args, state)
    if kind == "frombuffer":
        order = draw(st.sampled_from(["C", "F", "K"]))
        return Reduce(FROMBUFFER, (raw, dt, shape, order), draw(STATES_AFTER))
    if kind == "scalar":
        return Reduce(SCALAR, (dt, raw), draw(STATES_AFTER))
    return Reduce(np.ndarray, (shape, dt))


def shared(children):
    """A list holding the same object twice (a memo reference in the pickle)."""
    return children.map(lambda x: [x, x])


HOSTILE = st.recursive(
    numpy_values(),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from([b"data", b"labels", 0]), children, max_size=3),
        st.tuples(children),
        shared(children),
    ),
    max_leaves=4,
)


def assert_plain(value: object) -> None:
    """Only plain data and numpy values of plain types, all the way down."""
    stack, seen = [value], set()
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, np.ndarray | np.generic):
            assert type(value) is np.ndarray or isinstance(value, np.generic)
            assert value.dtype.kind in PLAIN_KINDS and value.dtype.fields is None
            assert value.dtype.subdtype is None and not value.dtype.hasobject
        elif isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple | set | frozenset):
            stack += list(value)
        else:
            assert type(value) in (type(None), bool, int, float, complex, str, bytes, bytearray)


def hostile_case(obj: object, protocol: int) -> None:
    blob = pickle.dumps(obj, protocol=protocol)
    try:
        out = safe_pickle.load(io.BytesIO(blob))
    except RefusedPickleError as e:
        event(f"refused {' '.join(str(e).split()[1:3])}")
        return
    event("loaded")
    assert_plain(out)


@settings(max_examples=1000, deadline=None)
@given(HOSTILE, PROTOCOLS)
def test_hostile_pickles_load_as_plain_data_or_are_refused(obj, protocol):
    hostile_case(obj, protocol)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None)
@given(HOSTILE, PROTOCOLS)
def test_hostile_pickles_load_as_plain_data_or_are_refused_many(obj, protocol):
    hostile_case(obj, protocol)


# ---- plain data round-trips exactly ------------------------------------------------------

PLAIN_DTYPES = st.sampled_from(TYPE_STRINGS).flatmap(
    lambda t: st.sampled_from([np.dtype(t), np.dtype(t).newbyteorder()])
)
ARRAYS = hnp.arrays(PLAIN_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
VALUES = st.one_of(
    ARRAYS,
    ARRAYS.map(np.asfortranarray),
    ARRAYS.map(lambda a: a[()] if a.ndim == 0 else a),  # a numpy scalar
    st.integers(),
    st.binary(max_size=8),
)
DATA = st.recursive(
    VALUES,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from([b"data", b"labels", "x"]), children, max_size=3)
    ),
    max_leaves=6,
)


def assert_same(ours: object, numpy_own: object) -> None:
    if isinstance(numpy_own, np.ndarray | np.generic):
        assert_same_numpy_value(ours, numpy_own)
    elif isinstance(numpy_own, dict):
        assert ours.keys() == numpy_own.keys()
        for key in numpy_own:
            assert_same(ours[key], numpy_own[key])
    elif isinstance(numpy_own, list):
        assert len(ours) == len(numpy_own)
        for a, b in zip(ours, numpy_own, strict=True):
            assert_same(a, b)
    else:
        assert type(ours) is type(numpy_own) and ours == numpy_own


@settings(max_examples=300, deadline=None)
@given(DATA, PROTOCOLS)
def test_plain_data_loads_as_numpy_loads_it(data, protocol):
    blob = pickle.dumps(data, protocol=protocol)
    assert_same(safe_pickle.load(io.BytesIO(blob)), pickle.loads(blob))
