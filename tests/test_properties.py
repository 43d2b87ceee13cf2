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


# ---- files: traces, checkpoints, preprocessing, with deep nesting and non-finite values ------
DEEP = st.integers(validate.MAX_JSON_DEPTH + 1, 20_000).map(lambda n: "[" * n + "]" * n)
NUMBERS = st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 0.0]))


def _mutated(document: dict, data) -> tuple[dict, str]:
    """``document`` (JSON) with one key at any depth replaced by random JSON, a number
    that may be NaN or huge, or dropped; and the dotted path of that key."""
    doc = json.loads(json.dumps(document))
    node, path = doc, []
    while True:
        key = data.draw(st.sampled_from(sorted(node)))
        path.append(key)
        if isinstance(node[key], dict) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        break
    action = data.draw(st.sampled_from(["json", "number", "drop"]))
    if action == "drop":
        del node[key]
    else:
        node[key] = data.draw(JSON if action == "json" else NUMBERS)
    return doc, ".".join(path)


@pytest.fixture(scope="module")
def trace_parts():
    """A two-step NumPy trace of a tiny network: (tensors, metadata)."""
    from resnet_multi import data, trace
    from resnet_multi.backend import load_backend

    oracle = load_backend("numpy")
    model = oracle.build("d2l-resnet18", width=2)
    ds = data.load_fashion_mnist(subset=True)
    batches = trace.training_batches(ds, steps=2, batch_size=4, seed=0, resize=16)
    return trace.record(oracle, model, batches, lr=0.05, activation_images=1)


@pytest.fixture(scope="module")
def checkpoint_state(tmp_path_factory):
    """A one-epoch run's checkpoint.json, parsed."""
    from resnet_multi import data, train
    from resnet_multi.backend import load_backend

    oracle = load_backend("numpy")
    model = oracle.build("d2l-resnet18", width=2)
    ds = data.load_fashion_mnist(subset=True)
    ds = data.Dataset(ds.train_images[:8], ds.train_labels[:8], ds.test_images[:8], ds.test_labels[:8], ds.source)
    out = tmp_path_factory.mktemp("run")
    train.fit(oracle, model, ds, epochs=1, lr=0.05, batch_size=8, resize=16, out=out, plot=False)
    return json.loads((out / train.CHECKPOINT).read_text())


def _save_trace(directory, tensors, meta_text):
    from safetensors.numpy import save_file

    path = os.path.join(directory, "t.safetensors")
    save_file(tensors, path, metadata={"trace": meta_text})
    return path


@given(data=st.data())
def test_random_trace_metadata_is_refused_naming_the_file(trace_parts, data):
    """Any change to a trace's metadata: it loads (a change the schema allows) or gives a
    TraceError that starts with the file's path; never another exception."""
    import tempfile

    from resnet_multi import trace

    tensors, meta = trace_parts
    changed, key = _mutated(meta, data)
    text = data.draw(st.one_of(st.just(json.dumps(changed)), DEEP))
    with tempfile.TemporaryDirectory() as directory:
        path = _save_trace(directory, tensors, text)
        try:
            trace.load(path)
        except trace.TraceError as e:
            assert str(e).startswith(f"{path}: ") and "resnet-multi trace" in str(e), (key, str(e))


@given(data=st.data())
def test_random_trace_tensors_load_or_are_refused_and_non_finite_ones_differ(trace_parts, data):
    """Tensors dropped, reshaped or filled with NaN/Inf: a TraceError naming the tensor,
    or a trace whose non-finite values compare as an infinite difference."""
    import tempfile

    from resnet_multi import compare, trace

    tensors, meta = trace_parts
    name = data.draw(st.sampled_from(sorted(tensors)))
    changed = dict(tensors)
    action = data.draw(st.sampled_from(["drop", "reshape", "non-finite"]))
    if action == "drop":
        del changed[name]
    elif action == "reshape":
        changed[name] = tensors[name].reshape(-1)[: max(tensors[name].size - 1, 0)]
    elif tensors[name].dtype.kind == "f":
        value = tensors[name].copy()
        first = value[0].size if name.startswith("bn.") else 0  # row 0: the statistics before step 0
        value.flat[data.draw(st.integers(first, value.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
        changed[name] = value
    with tempfile.TemporaryDirectory() as directory:
        good = _save_trace(directory, tensors, json.dumps(meta))
        other = dict(meta, backend="other")
        path = os.path.join(directory, "other.safetensors")
        from safetensors.numpy import save_file

        save_file(changed, path, metadata={"trace": json.dumps(other)})
        try:
            trace.load(path)
        except trace.TraceError as e:
            assert str(e).startswith(f"{path}: ") and ("tensor" in str(e)), str(e)
            return
        result = compare.compare([good, path])
        finite = all(np.isfinite(v).all() for v in changed.values() if v.dtype.kind == "f")
        if not finite and not name.startswith("grad."):  # step 0's full gradients are recorded, not compared
            assert result.worst() == float("inf"), name


@given(data=st.data())
def test_random_checkpoints_fields_are_refused_with_a_schema_error(checkpoint_state, data):
    """A real checkpoint with one key anywhere replaced (NaN and huge numbers included),
    dropped, or the whole file nested deep: a valid checkpoint or a SchemaError naming
    where, never another exception."""
    changed, key = _mutated(checkpoint_state, data)
    text = data.draw(st.one_of(st.just(json.dumps(changed)), DEEP))
    try:
        state = validate.check_checkpoint(validate.parse_json(text, "the file"))
    except validate.SchemaError as e:
        assert str(e).strip()
    else:
        for value in (state["lr"], state["recipe"]["lr"], *state["history"]["train_loss"]):
            assert np.isfinite(value), key


@given(
    resize=st.one_of(st.none(), st.integers(-3, 1 << 15), JSON),
    scale=st.one_of(NUMBERS, JSON),
    mean=st.one_of(NUMBERS, JSON),
    std=st.one_of(NUMBERS, JSON),
)
def test_random_preprocessing_maps_pixels_to_finite_inputs_or_is_refused(resize, scale, mean, std):
    record = {"resize": resize, "scale": scale, "mean": mean, "std": std}
    try:
        validate.check_preprocess(record, "metadata.preprocess")
    except validate.SchemaError as e:
        assert str(e).startswith("metadata.preprocess")
    else:
        for pixel in (0, 255):
            x = np.float32((pixel * scale - mean) / std)
            assert np.isfinite(x) and abs(x) <= validate.MAX_INPUT
        assert scale > 0


@given(depth=st.integers(validate.MAX_JSON_DEPTH + 1, 100_000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_a_schema_error_at_any_depth(depth, opener):
    closer = "]" if opener == "[" else "}"
    with pytest.raises(validate.SchemaError, match="nested more than"):
        validate.parse_json(opener * depth + "1" + closer * depth, "metadata.arch")
