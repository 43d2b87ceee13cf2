"""Importing model zoos' checkpoints (resnet_multi.zoo) and ``predict``.

Each zoo's model is built by its own library under a seed (with random BatchNorm statistics,
so that a misread running mean or variance shows), saved the way that zoo publishes it,
imported, and its logits compared with the zoo model's own forward pass, in the NumPy
reference and in the backend of the environment: torchvision and timm in the torch
environment (tox -e torch), Keras in tf, PaddlePaddle in paddle. The framework-free tests
(key maps, the restricted unpickler, metadata, bad files, predict) run everywhere.

torchvision's wheels on PyPI are CUDA builds: with the CPU torch their C extension does not
load, and ``import torchvision`` fails registering meta kernels for its ops
(``operator torchvision::nms does not exist``). The models are pure Python, so
:func:`_torchvision` loads the package with that registration module replaced by an empty
one; timm, which imports torchvision, then imports too.
"""

import json
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import random_weights, rel_err

from resnet_multi import data, images, validate, zoo
from resnet_multi import weights as canonical
from resnet_multi.backend import load_backend
from resnet_multi.spec import get_arch

RTOL = 1e-4
SIZE = 64  # small inputs: a ResNet50 forward pass stays cheap on a CPU


def _batch(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def _onnxruntime():
    """ONNX Runtime's backend where the environment has it (the numpy and torch ones), else None."""
    try:
        return load_backend("onnxruntime")
    except ImportError:
        return None


def _check_logits(spec, weights, x, expected, backend_name):
    """The imported weights' logits against the zoo's own, in the NumPy reference, the
    environment's backend, and ONNX Runtime where it is installed."""
    names = ["numpy", backend_name] + (["onnxruntime"] if _onnxruntime() is not None else [])
    for name in names:
        backend = load_backend(name)
        model = backend.build(spec)
        backend.set_weights(model, weights)
        err = rel_err(backend.forward(model, x), expected)
        assert err < RTOL, f"{name}: logits differ from the zoo's by {err:.2e}"


# ---- framework-free: key maps, layouts, the restricted unpickler --------------------------
def test_torchvision_key_map_by_hand():
    spec = get_arch("resnet50")
    names = {t.name: zoo._torch_name(t.name) for t in canonical.tensor_specs(spec)}
    assert names["stem.conv.weight"] == "conv1.weight"
    assert names["stem.bn.running_var"] == "bn1.running_var"
    assert names["stages.0.0.shortcut.conv.weight"] == "layer1.0.downsample.0.weight"
    assert names["stages.1.0.shortcut.bn.running_mean"] == "layer2.0.downsample.1.running_mean"
    assert names["stages.3.2.conv3.weight"] == "layer4.2.conv3.weight"
    assert names["stages.2.5.bn2.bias"] == "layer3.5.bn2.bias"
    assert names["head.fc.bias"] == "fc.bias"
    assert len(set(names.values())) == len(names)
    assert zoo._paddle_name("stages.0.1.bn1.running_var") == "layer1.1.bn1._variance"
    assert zoo._paddle_name("stem.bn.running_mean") == "bn1._mean"
    assert zoo._keras_name("stages.1.0.shortcut.bn.running_var") == "conv3_block1_0_bn/3"
    assert zoo._keras_name("stages.0.2.conv3.bias") == "conv2_block3_3_conv/1"
    assert zoo._keras_name("head.fc.weight") == "predictions/0"


def _as_zoo(weights, spec, zoo_name):
    """Canonical weights under a zoo's names and layouts (the inverse of zoo.convert)."""
    out = {}
    for t in canonical.tensor_specs(spec):
        value = weights[t.name]
        if zoo_name == "paddle" and t.role == "fc":
            value = value.T
        out[zoo._NAMES[zoo_name](t.name)] = np.ascontiguousarray(value)
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_paddle_pickle_round_trip_without_paddle(tmp_path, arch):
    spec = get_arch(arch)
    weights = random_weights(spec)
    state = _as_zoo(weights, spec, "paddle")
    state["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(state)}
    path = tmp_path / "m.pdparams"
    path.write_bytes(pickle.dumps(state, protocol=4))
    imported = zoo.import_weights("paddle", path, arch)
    assert imported.weights.keys() == weights.keys()
    for name, value in weights.items():
        np.testing.assert_array_equal(imported.weights[name], value, err_msg=name)


_CALLED = []


def _planted():
    _CALLED.append(True)


class _Payload:
    def __reduce__(self):
        return (_planted, ())


@pytest.mark.parametrize(
    "payload", [_Payload(), print, types.SimpleNamespace(a=1)], ids=["reduce-callable", "builtin", "object"]
)
def test_paddle_reader_refuses_a_pickle_that_names_a_callable(tmp_path, payload):
    spec = get_arch("resnet18")
    state = _as_zoo(random_weights(spec), spec, "paddle")
    state["layer1.0.conv1.weight"] = payload
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(zoo.ZooError, match=r"evil\.pdparams: refused: it names .*only NumPy arrays"):
        zoo.import_weights("paddle", path, "resnet18")
    assert not _CALLED


def _torchvision_safetensors(tmp_path, arch="resnet18", seed=0):
    from safetensors.numpy import save_file

    spec = get_arch(arch)
    weights = random_weights(spec, seed)
    state = _as_zoo(weights, spec, "torchvision")
    state.update({k.rsplit(".", 1)[0] + ".num_batches_tracked": np.zeros((), np.int64) for k in state if "bn" in k})
    path = tmp_path / f"{arch}.safetensors"
    save_file(state, str(path))
    return path, weights, state


def test_safetensors_checkpoint_imports_without_torch(tmp_path):
    path, weights, _ = _torchvision_safetensors(tmp_path)
    out = zoo.import_file("torchvision", path, "resnet18", tmp_path / "w.safetensors")
    loaded = canonical.load_weights(out, get_arch("resnet18"))
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    meta = canonical.read_metadata(out)
    assert meta.classes == tuple(zoo.imagenet_classes())
    assert meta.classes[0] == "tench" and len(set(meta.classes)) == 1000
    assert meta.preprocess == zoo.PREPROCESS["torchvision"]
    assert meta.source["zoo"] == "torchvision" and meta.source["file"] == "resnet18.safetensors"
    import hashlib

    assert meta.source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(tmp_path, zoo_name, path, arch, *patterns):
    out = tmp_path / "out.safetensors"
    with pytest.raises(zoo.ZooError) as info:
        zoo.import_file(zoo_name, path, arch, out)
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return str(info.value)


def test_checkpoint_of_another_architecture_names_key_shapes_and_the_fit(tmp_path):
    path, _, _ = _torchvision_safetensors(tmp_path, "resnet18")
    message = _refused(
        tmp_path, "torchvision", path, "resnet34", str(path), "missing: layer1.2.conv1.weight", "fits --arch resnet18"
    )
    message = _refused(tmp_path, "torchvision", path, "resnet50", "layer1.0.conv1.weight: expected (64, 64, 1, 1)")
    assert "found (64, 64, 3, 3)" in message


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    from safetensors.numpy import save_file

    _, _, state = _torchvision_safetensors(tmp_path)
    del state["fc.bias"], state["layer2.0.downsample.1.running_var"]
    state["fc2.weight"] = np.zeros((3, 3), np.float32)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    _refused(
        tmp_path,
        "torchvision",
        path,
        "resnet18",
        "missing: layer2.0.downsample.1.running_var, fc.bias",
        "unexpected: fc2.weight",
    )


def test_truncated_and_wrong_zoo_files_are_refused(tmp_path):
    path, _, _ = _torchvision_safetensors(tmp_path)
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(tmp_path, "timm", short, "resnet18", str(short), "cannot be read as a safetensors file", "truncated")
    _refused(tmp_path, "keras", path, "keras-resnet50", str(path), "is a safetensors file", "not a keras checkpoint")
    _refused(tmp_path, "paddle", path, "resnet18", "is a safetensors file (--from torchvision or timm)")
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    _refused(tmp_path, "torchvision", text, "resnet18", "notes.txt: is none of the formats")
    _refused(tmp_path, "torchvision", tmp_path / "absent.pth", "resnet18", "absent.pth does not exist")
    short_pickle = tmp_path / "short.pdparams"
    short_pickle.write_bytes(pickle.dumps({"a": np.zeros(100, np.float32)}, protocol=4)[:60])
    _refused(tmp_path, "paddle", short_pickle, "resnet18", "short.pdparams: cannot be read as a PaddlePaddle")


def test_an_architecture_the_zoo_lacks_is_refused(tmp_path):
    path, _, _ = _torchvision_safetensors(tmp_path)
    _refused(tmp_path, "torchvision", path, "d2l-resnet18", "torchvision has no d2l-resnet18", "resnet50")
    _refused(tmp_path, "keras", path, "resnet50", "keras has no resnet50", "keras-resnet50")


def test_metadata_schema_refuses_inconsistent_records(tmp_path):
    spec = get_arch("resnet18")
    weights = random_weights(spec)
    bad = {**zoo.PREPROCESS["torchvision"], "mean": [0.5, 0.5]}
    with pytest.raises(canonical.WeightsError, match="2 means and 3 stds"):
        canonical.save_weights(tmp_path / "a.safetensors", weights, spec, preprocess=bad)
    with pytest.raises(canonical.WeightsError, match="crops 300 pixels from an image resized to 256"):
        canonical.save_weights(
            tmp_path / "a.safetensors", weights, spec, preprocess={**zoo.PREPROCESS["torchvision"], "crop": 300}
        )
    grey = get_arch("d2l-resnet18")
    with pytest.raises(canonical.WeightsError, match="3-channel images for a network of 1 input channel"):
        canonical.save_weights(
            tmp_path / "a.safetensors", random_weights(grey), grey, preprocess=zoo.PREPROCESS["torchvision"]
        )
    with pytest.raises(canonical.WeightsError, match="names 2 classes for a network with 1000 outputs"):
        canonical.save_weights(tmp_path / "a.safetensors", weights, spec, classes=["a", "b"])
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(validate.SchemaError, match="must be one of 'L', 'RGB', 'BGR'"):
        validate.check_preprocess({**zoo.PREPROCESS["keras"], "channels": "CMYK"})


# ---- predict ------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnet_multi.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_import_and_predict_on_the_command_line(tmp_path):
    from PIL import Image

    path, weights, _ = _torchvision_safetensors(tmp_path)
    out = tmp_path / "w.safetensors"
    result = _cli("import", "--from", "torchvision", path, "--arch", "resnet18", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "torchvision resnet18" in result.stdout
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)).save(photo)
    result = _cli("predict", "--weights", out, "--backend", "numpy", photo, "--top", "3")
    assert result.returncode == 0, result.stderr
    # the same numbers from the package's pieces: the image prepared as torchvision does
    oracle = load_backend("numpy")
    model = oracle.build("resnet18")
    oracle.set_weights(model, weights)
    x = images.load(photo, zoo.PREPROCESS["torchvision"], get_arch("resnet18"))
    assert x.shape == (3, 224, 224)
    best = images.top_k(oracle.forward(model, x[None]), zoo.imagenet_classes(), 3)[0]
    lines = result.stdout.splitlines()
    assert lines[0] == str(photo) and len(lines) == 4
    for line, (index, name, prob) in zip(lines[1:], best):
        assert line.endswith(f"{name} ({index})") and f"{prob:6.2%}" in line
    # a file that is not an image: named, exit 1, nothing predicted
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    result = _cli("predict", "--weights", out, "--backend", "numpy", photo, fake)
    assert result.returncode == 1 and "fake.jpg is not an image Pillow can read" in result.stderr
    assert result.stdout == ""
    # a wrong --from on the command line: exit 1, one line, nothing written
    result = _cli("import", "--from", "keras", path, "--arch", "keras-resnet50", "--output", tmp_path / "k.safetensors")
    assert result.returncode == 1 and "not a keras checkpoint" in result.stderr
    assert not (tmp_path / "k.safetensors").exists()


def test_predict_on_chapter_weights_prepares_images_as_training_does(tmp_path, oracle):
    from PIL import Image

    spec = get_arch("d2l-resnet18", width=8)
    weights = random_weights(spec)
    out = canonical.save_weights(tmp_path / "chapter.safetensors", weights, spec, preprocess=data.preprocessing(32))
    meta = canonical.read_metadata(out)
    assert meta.classes is None  # training records no class names: predict names Fashion-MNIST's
    assert images.class_names(meta.classes, spec) == list(data.FASHION_MNIST_CLASSES)
    pixels = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    photo = tmp_path / "item.png"
    Image.fromarray(pixels).save(photo)
    x = images.load(photo, meta.preprocess, spec)
    (expected, _), *_ = data.iterate_batches(pixels[None], np.zeros(1, np.int64), 1, shuffle=False, resize=32)
    np.testing.assert_array_equal(x[None], expected)
    result = _cli("predict", "--weights", out, "--backend", "numpy", photo)
    assert result.returncode == 0, result.stderr
    model = oracle.build(spec)
    oracle.set_weights(model, weights)
    index = int(oracle.forward(model, expected).argmax())
    assert result.stdout.splitlines()[1].endswith(f"{data.FASHION_MNIST_CLASSES[index]} ({index})")


# ---- torchvision and timm (the torch environment) ----------------------------------------
def _torchvision():
    torch = pytest.importorskip("torch", reason="torch is not installed here: torchvision runs in tox -e torch")
    if "torchvision" not in sys.modules:
        # the CUDA build's ops cannot load with the CPU torch; the models need none of them
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    tv = pytest.importorskip("torchvision", reason="torchvision is not installed here: it runs in tox -e torch")
    return torch, tv


def _randomize_bn(torch, model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model.eval()


def _torch_zoo_case(torch, model, zoo_name, arch, tmp_path, fmt):
    state = model.state_dict()
    if fmt == "pth":
        path = tmp_path / f"{arch}.pth"
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / f"{arch}.safetensors"
        save_file(state, str(path))
    out = zoo.import_file(zoo_name, path, arch, tmp_path / "w.safetensors")
    x = _batch()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    _check_logits(get_arch(arch), canonical.load_weights(out, get_arch(arch)), x, expected, "torch")


@pytest.mark.parametrize("arch, fmt", [("resnet18", "pth"), ("resnet50", "pth"), ("resnet18", "safetensors")])
def test_torchvision_checkpoint_gives_torchvisions_logits(tmp_path, arch, fmt):
    torch, tv = _torchvision()
    torch.manual_seed(0)
    model = _randomize_bn(torch, getattr(tv.models, arch)())
    _torch_zoo_case(torch, model, "torchvision", arch, tmp_path, fmt)


@pytest.mark.parametrize("arch, fmt", [("resnet18", "safetensors"), ("resnet50", "pth")])
def test_timm_checkpoint_gives_timms_logits(tmp_path, arch, fmt):
    torch, _ = _torchvision()
    timm = pytest.importorskip("timm", reason="timm is not installed here: it runs in tox -e torch")
    torch.manual_seed(0)
    model = _randomize_bn(torch, timm.create_model(arch, pretrained=False))
    _torch_zoo_case(torch, model, "timm", arch, tmp_path, fmt)


def test_torchvision_and_timm_preprocessing_are_their_own(tmp_path):
    from PIL import Image

    torch, tv = _torchvision()
    weights = tv.models.ResNet50_Weights.IMAGENET1K_V1
    assert zoo.imagenet_classes() == list(weights.meta["categories"])
    transforms = weights.transforms()
    assert (transforms.resize_size, transforms.crop_size) == ([256], [224])
    assert zoo.PREPROCESS["torchvision"]["mean"] == list(transforms.mean)
    assert zoo.PREPROCESS["torchvision"]["std"] == list(transforms.std)
    photo = tmp_path / "photo.png"
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    image.save(photo)
    spec = get_arch("resnet50")
    expected = transforms(image).numpy()
    np.testing.assert_allclose(images.load(photo, zoo.PREPROCESS["torchvision"], spec), expected, atol=1e-5)
    timm = pytest.importorskip("timm", reason="timm is not installed here: it runs in tox -e torch")
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        config = timm.data.resolve_data_config({}, model=timm.create_model(arch, pretrained=False))
        transform = timm.data.create_transform(**config)
        ours = images.load(photo, zoo.PREPROCESS["timm"], spec)
        np.testing.assert_allclose(ours, transform(image).numpy(), atol=1e-5, err_msg=arch)


def test_a_pickle_weights_only_refuses_is_refused(tmp_path):
    torch, _ = _torchvision()
    path = tmp_path / "model.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": types.SimpleNamespace(a=1)}, path)
    _refused(tmp_path, "torchvision", path, "resnet18", "model.pth: torch.load(weights_only=True) refuses it")
    full = tmp_path / "short.pth"
    torch.save({"a": torch.zeros(1000)}, full)
    full.write_bytes(full.read_bytes()[:300])
    _refused(tmp_path, "torchvision", full, "resnet18", "short.pth: cannot be read as a PyTorch checkpoint")
    _refused(tmp_path, "paddle", path, "resnet18", "is a zip archive")


# ---- Keras (the tf environment) ----------------------------------------------------------
def _keras_resnet50(seed=0):
    keras = pytest.importorskip("keras", reason="Keras is not installed here: it runs in tox -e tf")
    keras.utils.set_random_seed(seed)
    model = keras.applications.ResNet50(weights=None, classifier_activation=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.2, c),
                    rng.normal(0, 0.2, c),
                    rng.uniform(0.5, 2.0, c),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.05, bias.shape)])
    return keras, model


@pytest.mark.parametrize("fmt", ["weights.h5", "keras", "legacy-h5"])
def test_keras_checkpoint_gives_keras_logits(tmp_path, fmt):
    keras, model = _keras_resnet50()
    spec = get_arch("keras-resnet50")
    assert model.count_params() == sum(canonical.count(spec))
    if fmt == "weights.h5":
        path = tmp_path / "resnet50.weights.h5"
        model.save_weights(path)
    elif fmt == "keras":
        path = tmp_path / "resnet50.keras"
        model.save(path)
    else:  # the layout of the file that keras.applications downloads for weights="imagenet"
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    out = zoo.import_file("keras", path, "keras-resnet50", tmp_path / "w.safetensors")
    x = _batch()
    expected = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
    _check_logits(spec, canonical.load_weights(out, spec), x, expected, "tf")
    assert canonical.read_metadata(out).preprocess["channels"] == "BGR"


def test_keras_preprocessing_is_caffes(tmp_path):
    from PIL import Image

    keras = pytest.importorskip("keras", reason="Keras is not installed here: it runs in tox -e tf")
    pixels = np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    photo = tmp_path / "photo.png"
    Image.fromarray(pixels).save(photo)
    expected = keras.applications.resnet50.preprocess_input(pixels.astype(np.float32))
    ours = images.load(photo, zoo.PREPROCESS["keras"], get_arch("keras-resnet50"))
    np.testing.assert_allclose(ours, expected.transpose(2, 0, 1), atol=1e-4)


def test_keras_stem_padding_equals_the_specs():
    """ZeroPadding2D + valid conv / max pool, as Keras builds the stem, against the spec's padded
    layers: the pool sees zeros where the spec pads with -inf, the same after a ReLU."""
    keras, model = _keras_resnet50()
    stem = keras.Model(model.inputs, model.get_layer("pool1_pool").output)
    spec = get_arch("keras-resnet50")
    weights = _weights_of(model, spec)
    oracle = load_backend("numpy")
    ref = oracle.build(spec)
    oracle.set_weights(ref, weights)
    x = _batch(seed=5)
    stem_out = oracle.named_outputs(ref, x)["stem"]
    np.testing.assert_allclose(stem_out, np.asarray(stem(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2), atol=1e-4)


def _weights_of(model, spec):
    """A live Keras model's weights, by layer name, as canonical weights."""
    tensors = {}
    for layer in model.layers:
        for i, value in enumerate(layer.get_weights()):
            tensors[f"{layer.name}/{i}"] = np.asarray(value)
    return zoo.convert(tensors, "keras", spec)


# ---- PaddlePaddle (the paddle environment) -----------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_paddle_checkpoint_gives_paddles_logits(tmp_path, arch):
    paddle = pytest.importorskip("paddle", reason="PaddlePaddle is not installed here: it runs in tox -e paddle")
    paddle.seed(0)
    model = getattr(paddle.vision.models, arch)()
    rng = np.random.default_rng(0)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            c = layer.weight.shape[0]
            layer._mean.set_value(rng.normal(0, 0.2, c).astype(np.float32))
            layer._variance.set_value(rng.uniform(0.5, 2.0, c).astype(np.float32))
            layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.bias.set_value(rng.normal(0, 0.2, c).astype(np.float32))
    model.eval()
    path = tmp_path / f"{arch}.pdparams"
    paddle.save(model.state_dict(), str(path))
    out = zoo.import_file("paddle", path, arch, tmp_path / "w.safetensors")
    x = _batch()
    expected = model(paddle.to_tensor(x)).numpy()
    _check_logits(get_arch(arch), canonical.load_weights(out, get_arch(arch)), x, expected, "paddle")


def test_preprocess_records_are_valid_json_metadata():
    for name, record in zoo.PREPROCESS.items():
        validate.check_preprocess(json.loads(json.dumps(record)), name)


def test_evaluate_refuses_zoo_weights_and_points_to_predict(tmp_path):
    """evaluate measures Fashion-MNIST accuracy; ImageNet weights would reach the pipeline with a
    per-channel mean and 1,000 classes. The command refuses them before any work, naming predict."""
    spec = get_arch("resnet18", width=8)
    path = tmp_path / "imagenet.safetensors"
    canonical.save_weights(
        path,
        canonical.init_weights(spec, 0),
        spec,
        preprocess=zoo.PREPROCESS["torchvision"],
        classes=zoo.imagenet_classes(),
        source={"zoo": "torchvision", "file": "resnet18.pth", "sha256": "0" * 64},
    )
    result = _cli("evaluate", "--backend", "numpy", "--weights", path, "--subset", "--limit", "8")
    assert result.returncode == 2, result.stderr
    assert "3-channel images and 1000 classes (torchvision)" in result.stderr
    assert f"predict --weights {path}" in result.stderr
    assert result.stdout == ""
