"""Crafted CIFAR-10 batch files that use only the allowed globals (``numpy.dtype``,
``_reconstruct``, ``ndarray``, ``scalar``, ``_frombuffer``, ``_codecs.encode``) to make
numpy read bytes of the file as object pointers (issue 26, item 2): each is refused with
one message, and numpy values come out exactly as numpy's own unpickling gives them.

The crafted files crash the interpreter when numpy gets their states unchecked, so they
are loaded in a subprocess (a crash is a return code of -11 there, not a dead test run).
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_run import LENET, ROOT, groupwise
from fake_cifar import CLASSES, write_python_layout
from file_snapshot import snapshot
from hostile_pickles import (
    FROMBUFFER,
    SCALAR,
    Reduce,
    array,
    dtype,
    object_field_under_bytes_field,
    object_field_without_references,
    plain_dtype,
)

from groupwise.data import safe_pickle
from groupwise.data.safe_pickle import RefusedPickleError

CRAFTED = {
    "object-field-without-references": object_field_without_references,
    "object-field-under-bytes-field": object_field_under_bytes_field,
}
REFUSED_V8 = (
    "refused numpy.dtype 'V8': only plain numeric and byte-string types"
    f" ({safe_pickle.PLAIN_TYPES})"
)


def load(obj: object, protocol: int = 2) -> object:
    return safe_pickle.load(io.BytesIO(pickle.dumps(obj, protocol=protocol)), encoding="bytes")


# safe_pickle imported from its file alone: the package's __init__ imports torch (seconds)
IMPORT_SAFE_PICKLE = f"""
import importlib.util, pickle, sys
spec = importlib.util.spec_from_file_location("safe_pickle", {str(safe_pickle.__file__)!r})
safe_pickle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(safe_pickle)
"""
LOAD_AND_USE = (
    IMPORT_SAFE_PICKLE
    + """
try:
    out = safe_pickle.load(open(sys.argv[1], "rb"))
except safe_pickle.RefusedPickleError as e:
    print("refused:", e)
else:
    print("loaded:", repr(out))
"""
)


def load_in_subprocess(path: Path, code: str = LOAD_AND_USE, *args: str):
    return subprocess.run(
        [sys.executable, "-c", code, str(path), *args],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "tests"), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("crafted", CRAFTED)
def test_crafted_object_pointers_are_refused_before_numpy_sees_them(tmp_path, crafted):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"labels": CRAFTED[crafted]()}, protocol=2))
    done = load_in_subprocess(path)
    assert done.returncode == 0, f"crashed with {done.returncode}: {done.stderr[-500:]}"
    assert done.stdout == f"refused: {REFUSED_V8}\n"


KNOWN_ADDRESS = (
    IMPORT_SAFE_PICKLE
    + """
sys.path.insert(0, sys.argv[2])
from hostile_pickles import object_field_without_references
target = ["a live object of this process"]
blob = pickle.dumps(object_field_without_references(id(target).to_bytes(8, "little")))
with open(sys.argv[1], "wb") as f:
    f.write(blob)
try:
    out = safe_pickle.load(open(sys.argv[1], "rb"))
except safe_pickle.RefusedPickleError as e:
    print("refused:", e)
else:
    print("got the live object:", out[0][0] is target)
"""
)


def test_a_known_address_does_not_give_back_the_live_object_there(tmp_path):
    done = load_in_subprocess(tmp_path / "batch", KNOWN_ADDRESS, str(ROOT / "tests"))
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout == f"refused: {REFUSED_V8}\n"


@pytest.mark.parametrize(
    ("crafted", "file"),
    [
        ("object-field-without-references", "batches.meta"),  # read as the class names
        ("object-field-under-bytes-field", "data_batch_2"),  # an extra entry of a good batch
    ],
)
def test_fit_on_a_folder_with_a_crafted_file_is_one_message_and_exit_2(tmp_path, crafted, file):
    root = write_python_layout(tmp_path / "data", n_train=60, n_test=10)
    bad = root / "cifar-10-batches-py" / file
    if file == "batches.meta":
        content = {b"label_names": CRAFTED[crafted](), b"num_vis": 3072}
    else:
        content = pickle.loads(bad.read_bytes(), encoding="bytes") | {b"x": CRAFTED[crafted]()}
    bad.write_bytes(pickle.dumps(content, protocol=2))
    before = snapshot(root)
    runs = tmp_path / "runs"
    done = groupwise(
        "fit", "--config", LENET, "--data.data_dir", str(root),
        "--trainer.default_root_dir", str(runs), "--trainer.max_epochs", "1",
    )  # fmt: skip
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-500:]}"
    error = done.stderr[done.stderr.index("error:") :]
    assert error == (
        f"error: Refusing to load CIFAR-10 batch file {bad}: {REFUSED_V8}. The official"
        " format holds only numbers, byte strings, lists, dicts and numpy arrays of plain"
        f" numeric types. Delete {bad.parent} and load again with download: true to fetch"
        " the official archive (or extract cifar-10-python.tar.gz there yourself).\n"
    )
    assert "Traceback" not in done.stderr
    assert snapshot(root) == before  # nothing written: no cache, no file changed
    assert not runs.exists()


# ---- every other way numpy or a builtin could get a state or argument unchecked --------------

S8 = dtype("S8", (3, "|", None, None, None, 8, 1, 0))
U1 = plain_dtype("u1")


def u1_state(**changes) -> tuple:
    """numpy's state of ``u1`` with some of its items changed."""
    names = ("version", "order", "subarray", "names", "fields", "size", "align", "flags")
    state = dict(zip(names, (3, "|", None, None, None, -1, -1, 0), strict=True)) | changes
    return tuple(state.values())


REFUSALS = {
    "object dtype": (plain_dtype("O"), "refused numpy.dtype 'O8': only plain numeric"),
    "unicode dtype": (plain_dtype("U3"), "refused numpy.dtype 'U3'"),
    "datetime dtype": (plain_dtype("M8[s]"), "refused numpy.dtype 'M8'"),
    "names and fields in a u1 state": (
        array(dtype("u1", u1_state(names=("a",), fields={"a": (U1, 0)})), (1,), b"x"),
        "refused state of numpy.dtype('u1') (3, '|', None, ('a',), {'a': ",
    ),
    "subarray in a u1 state": (
        array(dtype("u1", u1_state(subarray=(S8, (2,)))), (1,), b"x"),
        "refused state of numpy.dtype('u1') (3, '|', (",
    ),
    "flags of an object type on u1": (
        array(dtype("u1", u1_state(flags=63)), (1,), b"x"),
        "refused state of numpy.dtype('u1') (3, '|', None, None, None, -1, -1, 63): expected"
        " (3, '|', None, None, None, -1, -1, 0): no subarray, names, fields, metadata or flags",
    ),
    "size of S8 in its state": (
        array(dtype("S8", (3, "|", None, None, None, 16, 1, 0)), (1,), b"x" * 8),
        "refused state of numpy.dtype('S8')",
    ),
    "no byte order on f8": (
        array(dtype("f8", u1_state(order="|")), (1,), b"x" * 8),
        "refused state of numpy.dtype('f8') (3, '|', ",
    ),
    "a dtype without a state": (
        array(Reduce(np.dtype, ("u1", False, True)), (1,), b"x"),
        "refused numpy.dtype('u1') without its state in an array",
    ),
    "raw data one byte short": (
        array(U1, (2, 3), b"x" * 5),
        "refused raw data of an array '5 bytes': a uint8 array of shape (2, 3) takes 6 bytes",
    ),
    "raw data as a list of objects": (
        array(U1, (1,), [7]),
        "refused raw data of an array [7]: expected bytes",
    ),
    "a negative size": (array(U1, (-1,), b""), "refused array shape (-1,)"),
    "a state for the array _frombuffer made": (
        Reduce(FROMBUFFER, (b"x", U1, (1,), "C"), (1, (1,), U1, False, b"y")),
        "refused state for numpy array (1, (1,), ",
    ),
    "a state for a numpy scalar": (
        Reduce(SCALAR, (U1, b"x"), (1, (1,), U1, False, b"y")),
        "refused state for numpy scalar",
    ),
    "a dtype on its own": (U1, "refused numpy.dtype('u1') outside an array or scalar"),
    "a numpy scalar as a dict key": (
        {Reduce(SCALAR, (U1, b"x")): 1},
        "refused numpy scalar as a dict key or set member",
    ),
    "a numpy array in a tuple": (
        (array(U1, (1,), b"x"),),
        "refused numpy array in a tuple: numpy values may be list items, dict values or the"
        " whole pickle",
    ),
    "numpy.ndarray called: memory as it was": (
        Reduce(np.ndarray, ((3,), "u1")),
        "refused a call of numpy.ndarray: only _reconstruct takes it",
    ),
    "bytearray of a size": (
        Reduce(bytearray, (3,)),
        "refused bytearray arguments (3, None): expected bytes, or a str and 'latin-1'",
    ),
    "a global on its own": ([np.dtype], "refused the global numpy.dtype as a value"),
}


@pytest.mark.parametrize("case", REFUSALS)
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_each_unsafe_state_or_call_is_refused_naming_it_and_what_is_valid(case, protocol):
    hostile, message = REFUSALS[case]
    with pytest.raises(RefusedPickleError) as info:
        load(hostile, protocol)
    assert str(info.value).startswith(message)


# ---- what is allowed comes out exactly as numpy's own unpickling gives it ---------------------

PLAIN = ["b1", "i1", "u1", "<i2", ">i2", "<u4", ">i8", "<f2", ">f4", "<f8", "<c8", ">c16", "S5"]


def assert_same_numpy_value(ours: object, numpy_own: object) -> None:
    assert type(ours) is type(numpy_own)
    assert ours.dtype == numpy_own.dtype and ours.dtype.str == numpy_own.dtype.str
    assert np.shape(ours) == np.shape(numpy_own)
    assert np.asarray(ours).tobytes("A") == np.asarray(numpy_own).tobytes("A")
    if isinstance(ours, np.ndarray):
        for flag in ("C_CONTIGUOUS", "F_CONTIGUOUS", "WRITEABLE"):
            assert ours.flags[flag] == numpy_own.flags[flag], flag


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("type_string", PLAIN)
def test_plain_arrays_and_scalars_load_as_numpy_loads_them(type_string, protocol):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, 2 * 3 * np.dtype(type_string).itemsize, dtype=np.uint8)
    c_order = raw.view(type_string).reshape(2, 3)
    values = [c_order, np.asfortranarray(c_order), c_order[:0], c_order[0, 0], c_order[1:, 1:]]
    blob = pickle.dumps({"values": values}, protocol=protocol)
    ours = safe_pickle.load(io.BytesIO(blob))["values"]
    numpy_own = pickle.loads(blob)["values"]
    for got, want in zip(ours, numpy_own, strict=True):
        assert_same_numpy_value(got, want)


def test_the_official_files_load_unchanged(tmp_path):
    """A batch as the official files hold it (Python 2, numpy 1.x names) loads to the same
    dict of the same values as plain pickle gives."""
    root = write_python_layout(tmp_path, n_train=10, n_test=3, official=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        raw = (root / "cifar-10-batches-py" / name).read_bytes()
        ours = safe_pickle.load(io.BytesIO(raw), encoding="bytes")
        numpy_own = pickle.loads(raw, encoding="bytes")
        assert ours.keys() == numpy_own.keys()
        for key, value in numpy_own.items():
            if isinstance(value, np.ndarray):
                assert_same_numpy_value(ours[key], value)
            else:
                assert ours[key] == value and type(ours[key]) is type(value)
    assert ours[b"label_names"] == [c.encode() for c in CLASSES]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_an_empty_numpy_bytes_scalar_loads(protocol):
    """Found by the property test: ``np.bytes_(b"")`` pickles with dtype ``S0`` (which
    no array has) and, in protocols 0-2, its raw data as ``bytes()``."""
    blob = pickle.dumps({b"data": np.bytes_(b"")}, protocol=protocol)
    ours = safe_pickle.load(io.BytesIO(blob))[b"data"]
    assert_same_numpy_value(ours, pickle.loads(blob)[b"data"])
