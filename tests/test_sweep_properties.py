"""The space file as properties over generated specs and keys (in-process, no training):
a spec is either Optuna's distribution with its bounds, whose suggestions stay in them, or
one ConfigError naming the key; setting generated keys changes those keys only."""

import copy
import math

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from groupwise.errors import ConfigError
from groupwise.sweep.space import apply, flat_keys, load_space, locate, suggest

CONFIG = {
    "trainer": {"max_epochs": 3, "limit_train_batches": None},
    "model": {
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
        "param_groups": [
            {"name": "features", "modules": ["features"]},
            {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0},
        ],
    },
}
KEY = "model.param_groups.classifier.lr_scale"
numbers = st.one_of(
    st.integers(-5, 5), st.floats(-1e3, 1e3), st.sampled_from([0, math.nan, math.inf, True])
)
KINDS = st.sampled_from(["float", "log_float", "int", "log_int", "flaot"])
CHOICES = st.lists(st.sampled_from([0.8, "a", None, [1]]), max_size=3, unique_by=repr)
specs = st.one_of(
    st.builds(lambda kind, args: {kind: args}, KINDS, st.lists(numbers, max_size=3)),
    st.builds(lambda choices: {"categorical": choices}, CHOICES),
    st.sampled_from([None, 3, "float", [0, 1], {"float": [0, 1], "int": [0, 1]}]),
)


def write(tmp_path, space) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return str(path)


@settings(max_examples=150, deadline=None)
@given(spec=specs, seed=st.integers(0, 2**16))
def test_a_spec_is_a_distribution_within_its_bounds_or_one_error(tmp_path_factory, spec, seed):
    path = write(tmp_path_factory.mktemp("s"), {KEY: spec})
    try:
        space = load_space(path, CONFIG)
    except ConfigError as error:
        assert str(error).startswith(f"space file {path}: {KEY}: ")
        return
    ((kind, args),) = spec.items()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(5):
        value = suggest(study.ask(), space)[KEY]
        if kind == "categorical":
            assert value in args
        else:
            low, high = args
            assert low < high and low <= value <= high
            assert isinstance(value, int) == kind.endswith("int")
            assert not kind.startswith("log") or low > 0


NEW = "model.param_groups.features.weight_decay"  # an option the rule does not have yet
LEAVES = [k for k in flat_keys(CONFIG) if not k.endswith(".name")]  # a name is no value
KEYS = sorted(
    k for k in LEAVES if not isinstance(locate(CONFIG, k)[0][locate(CONFIG, k)[1]], (dict, list))
)
SETTABLE = KEYS


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(st.sampled_from([*SETTABLE, NEW]), st.floats(0, 1)))
def test_apply_sets_the_given_keys_and_nothing_else(values):
    before = copy.deepcopy(CONFIG)
    after = apply(CONFIG, values)
    assert before == CONFIG  # the base config is not changed
    for key in [*KEYS, *values]:
        container, leaf = locate(after, key)
        if key in values:
            assert container[leaf] == values[key]
        else:
            old_container, old_leaf = locate(CONFIG, key)
            assert container[leaf] == old_container[old_leaf]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("model.optimizer.init_args.lrr", "(did you mean 'model.optimizer.init_args.lr'?)"),
        ("model.param_groups.head.lr_scale", "is no key of the config"),
        ("model.param_groups.features.momentun", "(did you mean 'momentum'?)"),
        ("model.param_groups.1.lr_scale", None),  # an index names the entry too
        # found by the property: a searched name renamed the rule under the other keys
        ("model.param_groups.classifier.name", "names the entry: it cannot be searched"),
    ],
)
def test_keys(tmp_path, key, message):
    path = write(tmp_path, {key: {"float": [1, 2]}})
    if message is None:
        assert list(load_space(path, CONFIG)) == [key]
        return
    with pytest.raises(ConfigError, match=None) as error:
        load_space(path, CONFIG)
    assert message in str(error.value)
