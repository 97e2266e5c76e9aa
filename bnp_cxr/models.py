"""CNN regressors: a grayscale radiograph in [0, 1] -> [log10 BNP, log10 BNPP].

Huynh et al. (MIDL 2022) fine-tune an ImageNet ResNet152; resnet50, densenet121 and efficientnetv2s
from `keras.applications` are offered as alternatives, and `small_cnn` trains on a laptop CPU.
Every model is ONE flat functional graph: the backbone is built on our input tensor
(`input_tensor=`) and the final Model is made from the flattened tensors, so each conv layer is
addressable with `model.get_layer(name)`, which Grad-CAM needs (no nested sub-Model). An ensemble
(`ensemble_model`) is flat too: its members' layers side by side, their feature maps concatenated.
"""

from __future__ import annotations

import io
import json
import urllib.error
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import layers
from keras.src.utils import naming

from bnp_cxr.workspace import BACKBONE_NAMES, SMALL_CNN_WIDTHS, model_reads_px

OUTPUT_NAME = "log10_bnp_bnpp"
POOL_NAME = "global_pool"
STEM_NAME = "grayscale_stem"
DOWNSAMPLE_NAME = "downsample"
SMALL_CNN_FEATURES = "features"
WEIGHTS_SUFFIXES = (".weights.h5", ".keras")

# ImageNet input conventions of keras.applications.imagenet_utils.preprocess_input, applied to a
# gray image replicated to 3 channels: channel c = x * scale[c] + offset[c] for x in [0, 1].
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB, _TORCH_STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_STEMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # caffe: RGB->BGR on 0..255 then BGR mean subtraction (ResNet); for gray, only the means' order matters.
    "caffe": ((255.0,) * 3, tuple(-m for m in _CAFFE_MEAN_BGR)),
    # torch: 0..1 then per-channel mean/std (DenseNet).
    "torch": (tuple(1.0 / s for s in _TORCH_STD_RGB), tuple(-m / s for m, s in zip(_TORCH_MEAN_RGB, _TORCH_STD_RGB))),
    # raw255: the backbone normalises 0..255 itself (EfficientNetV2 include_preprocessing=True).
    "raw255": ((255.0,) * 3, (0.0,) * 3),
}
# From scratch, a single channel centred on 0 is enough: the first BatchNorm learns the rest.
SCRATCH_STEM = ((2.0,), (-1.0,))


class WeightsDownloadError(RuntimeError):
    """ImageNet weights could not be downloaded (keras.applications fetches them on first use)."""


@keras.saving.register_keras_serializable(package="bnp_cxr")
class GrayscaleStem(layers.Layer):
    """Grayscale [B, H, W, 1] in [0, 1] -> len(scale) channels, channel c = x * scale[c] + offset[c]."""

    def __init__(self, scale: tuple[float, ...], offset: tuple[float, ...], **kwargs):
        # float32 even under mixed precision: caffe means on a 0..255 scale need more than float16's 8 bits.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if len(scale) != len(offset):
            raise ValueError(f"scale and offset differ in length: {scale} vs {offset}")
        self.scale, self.offset = tuple(float(s) for s in scale), tuple(float(o) for o in offset)

    def call(self, inputs):
        scale = keras.ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=self.compute_dtype)
        return inputs * scale + offset

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.scale))

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": list(self.scale), "offset": list(self.offset)}


def small_cnn_features(x, widths: tuple[int, ...] = SMALL_CNN_WIDTHS, bn_momentum: float = 0.9):
    """A few conv blocks (stride-2 stem, then conv-BN-ReLU pairs and 2x max pools); 1/16 resolution output."""
    # BatchNorm momentum 0.9 (Keras: 0.99): a few hundred images give only ~10 steps per epoch, and
    # slow moving averages would leave validation on stale statistics for many epochs.
    x = layers.Conv2D(16, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for block, width in enumerate(widths, start=1):
        # The first block is a single conv: it runs at half resolution, where convs cost the most.
        for conv in range(1 if block == 1 else 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv + 1}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"block{block}_bn{conv + 1}")(x)
            last = block == len(widths) and conv == 1
            x = layers.ReLU(name=SMALL_CNN_FEATURES if last else f"block{block}_relu{conv + 1}")(x)
        if block < len(widths):
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return x


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone on an input tensor; `imagenet_stem` None = no ImageNet weights exist."""

    build: Callable  # (input_tensor, weights, imagenet_stem: bool[, widths]) -> feature tensor [B, h, w, C]
    imagenet_stem: str | None = None
    takes_widths: bool = False  # whether build takes the conv blocks' channels (widths=...)


def _application(constructor_name: str, **imagenet_kwargs) -> Callable:
    def build(x, weights, imagenet_stem: bool):
        constructor = getattr(keras.applications, constructor_name)
        extra = imagenet_kwargs if imagenet_stem else {key: False for key in imagenet_kwargs}
        return constructor(include_top=False, weights=weights, input_tensor=x, **extra).output
    return build


BACKBONES: dict[str, Backbone] = {
    "resnet152": Backbone(_application("ResNet152"), "caffe"),  # the paper's (Huynh et al. 2022)
    "resnet50": Backbone(_application("ResNet50"), "caffe"),
    "densenet121": Backbone(_application("DenseNet121"), "torch"),
    # include_preprocessing=True: EfficientNetV2 rescales 0..255 inputs itself (keras.applications docs).
    "efficientnetv2s": Backbone(_application("EfficientNetV2S", include_preprocessing=True), "raw255"),
    "small_cnn": Backbone(lambda x, weights, imagenet_stem, widths=SMALL_CNN_WIDTHS: small_cnn_features(x, widths),
                          takes_widths=True),  # for CPUs
}
if tuple(BACKBONES) != BACKBONE_NAMES:
    raise ImportError(f"bnp_cxr.workspace.BACKBONE_NAMES {BACKBONE_NAMES} must list the backbones built here, "
                      f"{tuple(BACKBONES)}")


def _graph(backbone: str, size: int, *, imagenet_stem: bool, download: bool, dropout: float,
           model_px: int | None = None, widths: tuple[int, ...] | None = None) -> keras.Model:
    """The model graph; imagenet_stem: 3-channel ImageNet-style input; download: fetch ImageNet weights."""
    spec = BACKBONES[backbone]
    image = keras.Input((size, size, 1), name="image", dtype="float32")
    scale, offset = IMAGENET_STEMS[spec.imagenet_stem] if imagenet_stem else SCRATCH_STEM
    x = image
    reads = model_reads_px(size, model_px)
    if reads < size:
        # Area averaging by a whole factor, as cv2.INTER_AREA makes the smaller records: the model reads the image as
        # records written at model_px would show it, while inputs, saliency and heatmaps stay at `size` px.
        x = layers.AveragePooling2D(size // reads, name=DOWNSAMPLE_NAME)(x)
    x = GrayscaleStem(scale, offset, name=STEM_NAME)(x)
    try:
        features = spec.build(x, "imagenet" if download else None, imagenet_stem,
                              **({"widths": tuple(widths)} if widths else {}))
    except Exception as error:  # keras' get_file raises a bare Exception("URL fetch failure ...")
        if download and ("URL fetch failure" in str(error) or isinstance(error, (urllib.error.URLError, OSError))):
            raise WeightsDownloadError(
                f"could not download the ImageNet weights of {backbone} ({error}). keras.applications fetches them "
                "from the internet on first use into ~/.keras/models ($KERAS_HOME); without internet access, copy "
                "that file there from a connected machine, or train from scratch (weights=None)") from error
        raise
    x = layers.GlobalAveragePooling2D(name=POOL_NAME)(features)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 outputs under mixed precision: log10 values and the L1 loss need more than float16 gives.
    outputs = layers.Dense(2, activation="linear", dtype="float32", name=OUTPUT_NAME)(x)
    # A fresh Model over the flat tensors (the application's own Model object is discarded).
    return keras.Model(image, outputs, name=f"{backbone}_{size}px" + (f"_reads{reads}px" if reads < size else ""))


def build_model(backbone: str, size: int, *, weights: str | None = None, dropout: float = 0.2,
                model_px: int | None = None, widths: Sequence[int] | None = None,
                log: Callable[[str], None] | None = None) -> keras.Model:
    """A regressor [B, size, size, 1] in [0, 1] -> float32 [B, 2] = [log10 BNP, log10 BNPP].

    model_px: the resolution the backbone reads; below `size` the input is area-averaged down to it in the
    graph (a whole factor); None or >= size: the full size. widths: the conv blocks' channels of a backbone that
    takes them (small_cnn; None: its default SMALL_CNN_WIDTHS).

    weights: None (from scratch, 1-channel stem), "imagenet" (3-channel replicated input with the
    backbone's own ImageNet preprocessing in the graph), or a path to a .weights.h5 / .keras file,
    loaded layer by layer as `load_checkpoint` describes (either stem; the first one that fits is
    used); `log` receives which layers were loaded and which kept their initialisation.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if widths is not None and not (BACKBONES[backbone].takes_widths and widths and min(widths) >= 1):
        raise ValueError(f"widths {tuple(widths)}: {backbone} takes no widths" if not BACKBONES[backbone].takes_widths
                         else f"widths must be one or more positive channel counts, got {tuple(widths)}")
    graph_options = {"dropout": dropout, "model_px": model_px, "widths": widths}
    imagenet_ok = BACKBONES[backbone].imagenet_stem is not None
    if weights is None or weights == "imagenet":
        if weights == "imagenet" and not imagenet_ok:
            raise ValueError(f"{backbone} has no ImageNet weights; use weights=None")
        imagenet = weights == "imagenet"
        return _graph(backbone, size, imagenet_stem=imagenet, download=imagenet, **graph_options)
    path = Path(weights)
    if not path.name.endswith(WEIGHTS_SUFFIXES):
        raise ValueError(f"weights file {path} must end with one of {WEIGHTS_SUFFIXES} (or pass 'imagenet' / None)")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    checkpoint = _read_checkpoint(path)
    errors = []
    # A run started from ImageNet keeps the 3-channel stem, a scratch run the 1-channel one: try both.
    for imagenet_stem in (False, True) if imagenet_ok else (False,):
        model = _graph(backbone, size, imagenet_stem=imagenet_stem, download=False, **graph_options)
        try:
            report = load_checkpoint(model, checkpoint)
        except ValueError as error:
            errors.append(f"{'3' if imagenet_stem else '1'}-channel stem: {error}")
            continue
        if log is not None:
            log(f"Weights from {path} ({'3' if imagenet_stem else '1'}-channel stem): {report}")
        return model
    raise ValueError(f"{path} does not fit a {backbone} model at {size} px: " + " | ".join(errors))


ENSEMBLE_FEATURES = "ensemble_features"


def member_prefix(index: int) -> str:
    """The layer-name prefix of member `index` in an ensemble model."""
    return f"member{index}_"


def ensemble_model(members: Sequence[keras.Model]) -> keras.Model:
    """One flat model whose output is the mean of the members' outputs (same architecture and input size).

    Each member's layers are cloned with a `member{k}_` prefix onto one input; their last feature maps are
    concatenated (ENSEMBLE_FEATURES, the global pool's input, so Grad-CAM reads every member at once) and
    one Dense layer holds the members' output weights stacked and divided by their count: at inference
    GAP and Dense are linear, so the output equals the mean of the members' predictions.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(member.inputs[0].shape[1:]) for member in members}
    if len(shapes) > 1:
        raise ValueError(f"ensemble members differ in input shape: {sorted(shapes)}")
    image = keras.Input(shapes.pop(), name="image", dtype="float32")
    features, kernels, biases = [], [], []
    for index, member in enumerate(members):
        try:
            head = member.get_layer(OUTPUT_NAME)
            pool_input = member.get_layer(POOL_NAME).input
        except ValueError as error:
            raise ValueError(f"member {index} ({member.name}) is not a bnp_cxr model: {error}") from None
        prefix = member_prefix(index)
        clone = keras.models.clone_model(
            member, input_tensors=image,
            clone_function=lambda layer, prefix=prefix: layer.__class__.from_config(
                {**layer.get_config(), "name": prefix + layer.name}))
        for layer in member.layers:
            if layer.weights:
                clone.get_layer(prefix + layer.name).set_weights(layer.get_weights())
        features.append(clone.get_layer(prefix + pool_input._keras_history.operation.name).output)
        kernel, bias = head.get_weights()
        kernels.append(kernel)
        biases.append(bias)
    x = layers.Concatenate(name=ENSEMBLE_FEATURES)(features) if len(features) > 1 else features[0]
    x = layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    head = layers.Dense(2, activation="linear", dtype="float32", name=OUTPUT_NAME)
    outputs = head(x)
    head.set_weights([np.concatenate(kernels) / len(members), np.mean(biases, axis=0)])
    return keras.Model(image, outputs, name=f"ensemble{len(members)}_{members[0].name}")


@dataclass(frozen=True)
class Checkpoint:
    """A weights file's arrays per layer key: layer names (.keras) or Keras's structure keys (.weights.h5)."""

    arrays: dict[str, list]
    by_name: bool


def structure_keys(class_names: list[str]) -> list[str]:
    """Keras's .weights.h5 keys of layers with these class names, in layer order: conv2d, conv2d_1, dense, ..."""
    # keras.saving stores no layer names: each layer under its snake_case class name, numbered from the second on.
    counts: dict[str, int] = {}
    keys = []
    for class_name in class_names:
        base = naming.to_snake_case(class_name)
        counts[base] = counts.get(base, -1) + 1
        keys.append(f"{base}_{counts[base]}" if counts[base] else base)
    return keys


def _h5_arrays(handle, source: Path) -> dict[str, list]:
    """The arrays of each top-level layer of a Keras 3 weights file by structure key (layers with weights only)."""
    import h5py

    group = handle.get("layers")
    if not isinstance(group, h5py.Group):
        raise ValueError(f"{source} holds no Keras 3 layer weights (no 'layers' group)")
    return {key: [item["vars"][str(index)][()] for index in range(len(item["vars"]))]
            for key, item in group.items() if isinstance(item.get("vars"), h5py.Group) and len(item["vars"])}


def _read_checkpoint(path: Path) -> Checkpoint:
    """A .weights.h5 file's arrays by structure key, or a .keras file's by layer name (from its config.json).

    Read from the files without building the saved model: no custom objects needed, and no random draws
    that would change the initialisation of the layers the checkpoint does not cover.
    """
    import h5py

    if path.name.endswith(".weights.h5"):
        with h5py.File(path, "r") as handle:
            return Checkpoint(_h5_arrays(handle, path), by_name=False)
    try:
        with zipfile.ZipFile(path) as archive:
            saved_layers = json.loads(archive.read("config.json"))["config"]["layers"]
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as handle:
                by_key = _h5_arrays(handle, path)
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError) as error:
        raise ValueError(f"could not read the layers of the model in {path}: {error!r}") from error
    keys = structure_keys([layer["class_name"] for layer in saved_layers])
    return Checkpoint({layer["config"]["name"]: by_key[key] for key, layer in zip(keys, saved_layers) if key in by_key},
                      by_name=True)


def _names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def load_checkpoint(model: keras.Model, checkpoint: Checkpoint) -> str:
    """Copy a checkpoint's weights into the model's layers that it matches; returns what was loaded and left.

    A .keras file's layers match the model's by layer name, so a checkpoint of any subset of the
    layers (an encoder pretrained elsewhere with the backbone's layer names) loads. A .weights.h5 file
    holds no layer names, only Keras's structure keys (see `structure_keys`): its layers match the
    model's layers of the same class at the same position among that class. A matched layer must hold
    arrays of the same shapes (else ValueError naming the layer and both shapes); nothing is copied
    unless every matched layer fits, and at least one must match. Unmatched model layers keep their
    initialisation, unmatched checkpoint layers are ignored. Only top-level layers count (a nested
    sub-model's layers are not matched).
    """
    keys = ([layer.name for layer in model.layers] if checkpoint.by_name
            else structure_keys([type(layer).__name__ for layer in model.layers]))
    targets = {key: layer for key, layer in zip(keys, model.layers) if layer.weights}
    matched = [key for key in targets if key in checkpoint.arrays]
    for key in matched:
        layer, arrays = targets[key], checkpoint.arrays[key]
        expected = [tuple(variable.shape) for variable in layer.weights]
        found = [tuple(array.shape) for array in arrays]
        if expected != found:
            where = "" if key == layer.name else f" ({key} in the file)"
            raise ValueError(f"layer {layer.name!r}{where}: checkpoint shapes {found}, model shapes {expected}")
    if not matched:
        kind = "layer name" if checkpoint.by_name else "structure key"
        raise ValueError(f"no layer matches by {kind} (checkpoint layers: {_names(sorted(checkpoint.arrays))})")
    for key in matched:
        targets[key].set_weights(checkpoint.arrays[key])
    kept = [layer.name for key, layer in targets.items() if key not in checkpoint.arrays]
    ignored = sorted(set(checkpoint.arrays) - set(targets))
    report = f"loaded {len(matched)} of {len(targets)} layers with weights"
    report += f"; left at their initialisation: {_names(kept)}" if kept else ""
    return report + (f"; not in the model, ignored: {_names(ignored)}" if ignored else "")


def synchronize_batchnorm(model: keras.Model) -> int:
    """Make every BatchNormalization layer all-reduce its batch statistics across replicas; returns how many.

    Keras keeps per-replica statistics by default, so with small per-replica batches (ResNet152 at
    1024 px) each replica normalises with noisy moments and every replica's moving statistics differ;
    synchronised, they are those of the global batch, as on one device (TensorFlow backend only).
    """
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, layers.BatchNormalization)]
    for layer in norms:
        layer.synchronized = True
    return len(norms)


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the layer whose output is the last spatial feature map (the global pool's input), for Grad-CAM."""
    try:
        pool_input = model.get_layer(POOL_NAME).input
        return pool_input._keras_history.operation.name
    except ValueError:  # not one of ours: fall back to the last layer with a 4-D output
        for layer in reversed(model.layers):
            try:
                rank = len(layer.output.shape)
            except (AttributeError, ValueError):  # layers shared between graphs have no single output
                continue
            if rank == 4:
                return layer.name
    raise ValueError(f"{model.name} has no layer with a spatial (4-D) output")


def load_model(path: str | Path, *, compile: bool = False) -> keras.Model:
    """Load a saved run model (model.keras) with the project's custom layers.

    compile=True also needs the loss and metrics, which bnp_cxr.training.losses registers: use its
    load_compiled_model (models sit below training in the stage order).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    return keras.saving.load_model(path, compile=compile)
