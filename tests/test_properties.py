"""Property-based tests (Hypothesis) over the spec: random valid networks agree with the
NumPy reference on every backend under test, and random invalid ones (through the
Python API or a file's metadata) are refused with a ValueError that says something,
never another exception.

Few examples by default, for CI's 2 cores; more with e.g.
``RESNET_MULTI_HYPOTHESIS_EXAMPLES=200``.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
from cases import BACKEND_CASES
from helpers import random_weights, rel_err

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resnet_multi import memory, shapes, validate  # noqa: E402
from resnet_multi.spec import (  # noqa: E402
    BLOCK_KINDS,
    INITS,
    SHORTCUTS,
    STRIDE_PLACEMENTS,
    ArchSpec,
    BatchNormSpec,
    block_spec,
    get_arch,
    stage_spec,
)
from resnet_multi.weights import count  # noqa: E402

EXAMPLES = int(os.environ.get("RESNET_MULTI_HYPOTHESIS_EXAMPLES", "8"))
settings.register_profile(
    "resnet-multi",
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("resnet-multi")

CASES = [c for c in BACKEND_CASES if c.values[0] is not None]


@st.composite
def valid_specs(draw):
    preact = draw(st.booleans())
    return ArchSpec(
        "random",
        tuple(draw(st.lists(st.integers(1, 2), min_size=1, max_size=4))),
        block=draw(st.sampled_from(BLOCK_KINDS)),
        in_channels=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(1, 6)),
        width=draw(st.integers(1, 6)),
        conv_bias=draw(st.booleans()),
        shortcut=draw(st.sampled_from(SHORTCUTS)),
        stride_on=draw(st.sampled_from(STRIDE_PLACEMENTS)),
        preact=preact,
        zero_init_last_bn=False if preact else draw(st.booleans()),
        init=draw(st.sampled_from(INITS)),
        bn=BatchNormSpec(eps=draw(st.sampled_from([1e-5, 1e-3])), momentum=draw(st.sampled_from([0.1, 0.5, 1.0]))),
    )


@pytest.mark.skipif(not CASES, reason="no backend under test is installed")
@given(
    spec=valid_specs(),
    n=st.integers(1, 3),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_random_valid_specs_agree_with_the_reference(oracle, spec, n, height, width, seed):
    """Shapes always; inference logits within the parity suite's 1e-4 (float32 vs float64)."""
    input_shape = (n, spec.in_channels, height, width)
    want_shapes = shapes.layer_shapes(spec, input_shape)
    weights = random_weights(spec, seed=seed)
    ref = oracle.build(spec)
    oracle.set_weights(ref, weights)
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    want = oracle.forward64(ref, x)
    assert want.shape == (n, spec.num_classes)
    for case in CASES:
        backend, device = case.values
        model = backend.build(spec, device=device)
        assert backend.layer_shapes(model, input_shape) == want_shapes, case.id
        assert backend.count_parameters(model) == count(spec), case.id
        backend.set_weights(model, weights)
        got = backend.forward(model, x)
        assert got.shape == want.shape, case.id
        assert rel_err(got, want) <= 1e-4, case.id


# ---- invalid: always ValueError, with a message ---------------------------------------------
def _refused(call):
    """Run ``call``: it may succeed (some random values are valid) or raise ValueError
    with a non-empty message; any other exception fails the property."""
    try:
        call()
    except ValueError as e:
        assert str(e).strip(), f"ValueError without a message from {call}"
        return True
    return False


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = [
    "layers",
    "block",
    "in_channels",
    "num_classes",
    "width",
    "conv_bias",
    "shortcut",
    "stride_on",
    "preact",
    "zero_init_last_bn",
    "init",
    "bn",
]
BAD_VALUES = {
    "layers": st.one_of(
        st.just(()),
        st.tuples(st.integers(-5, 0)),
        st.tuples(st.integers(1001, 10**9)),
        st.tuples(st.floats(0.5, 3.5)),
        st.tuples(st.text(max_size=2)),
        st.integers(),
        st.none(),
    ),
    "block": st.text(max_size=10).filter(lambda t: t not in BLOCK_KINDS),
    "in_channels": st.one_of(st.integers(-10, 0), st.floats(0.5, 3.5), st.text(max_size=2), st.none(), st.just(True)),
    "num_classes": st.one_of(st.integers(-10, 0), st.floats(), st.text(max_size=2)),
    "width": st.one_of(st.integers(-10, 0), st.floats(), st.just(False), st.none()),
    "shortcut": st.text(max_size=10).filter(lambda t: t not in SHORTCUTS),
    "stride_on": st.one_of(st.text(max_size=4).filter(lambda t: t not in STRIDE_PLACEMENTS), st.integers()),
    "init": st.text(max_size=10).filter(lambda t: t not in INITS),
    "bn": st.one_of(st.none(), st.integers(), st.dictionaries(st.text(max_size=3), st.floats(), max_size=2)),
}


@given(field=st.sampled_from(sorted(BAD_VALUES)), data=st.data())
def test_random_invalid_specs_raise_value_error(field, data):
    value = data.draw(BAD_VALUES[field])
    assert _refused(lambda: get_arch("d2l-resnet18", **{field: value})), (field, value)


@given(overrides=st.dictionaries(st.sampled_from(FIELDS + ["depth", "dropout", "name"]), JUNK, max_size=4))
def test_random_overrides_raise_only_value_error(overrides):
    _refused(lambda: get_arch("resnet18", **overrides))


@given(
    args=st.tuples(JUNK, JUNK, JUNK, JUNK),
    kind=st.sampled_from(BLOCK_KINDS + ("wide",)),
    stride_on=st.sampled_from(STRIDE_PLACEMENTS + ("5x5",)),
)
def test_random_blocks_and_stages_raise_only_value_error(args, kind, stride_on):
    cin, cout, flag, stride = args
    _refused(lambda: block_spec(cin, cout, flag, stride, kind=kind, stride_on=stride_on))
    _refused(lambda: stage_spec(cin, cout, stride, bool(flag), kind=kind))
    _refused(lambda: BatchNormSpec(cin, cout))


@given(eps=JUNK, momentum=JUNK)
def test_random_batch_norm_settings_raise_only_value_error(eps, momentum):
    _refused(lambda: BatchNormSpec(eps, momentum))


def _valid_fields():
    return json.loads(json.dumps(dataclasses.asdict(get_arch("d2l-resnet18", width=4))))


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@given(key=st.sampled_from(FIELDS + ["name", "extra"]), value=JSON, drop=st.booleans())
def test_random_metadata_is_refused_with_a_schema_error(key, value, drop):
    """A weights file's architecture, one key replaced (or removed) by random JSON:
    it is a network within the schema's bounds, or a ValueError naming the key."""
    fields = _valid_fields()
    if drop:
        fields.pop(key, None)
    else:
        fields[key] = value
    try:
        spec = validate.arch_from_dict(fields, "metadata.arch")
    except validate.SchemaError as e:
        assert isinstance(e, ValueError) and str(e).startswith("metadata.arch")
    else:
        assert isinstance(spec, ArchSpec) and all(1 <= n <= 1000 for n in spec.layers)
        memory.memory_estimate(spec, (1, spec.in_channels, 32, 32), training=False)  # no exception


@given(document=JSON)
def test_random_checkpoints_are_refused_with_a_schema_error(document):
    with pytest.raises(validate.SchemaError) as info:
        validate.check_checkpoint(document)
    assert str(info.value).strip()


@given(
    shape=st.tuples(st.integers(-2, 4), st.integers(-1, 4), st.integers(-2, 40), st.integers(-2, 40)),
    training=st.booleans(),
)
def test_random_input_shapes_raise_only_value_error(shape, training):
    spec = get_arch("d2l-resnet18", width=4)
    if not _refused(lambda: shapes.check_input_shape(spec, shape, training=training)):
        assert shape[1] == 1 and min(shape[0], shape[2], shape[3]) >= 1
