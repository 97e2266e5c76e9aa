"""Attribution maps of one model output for a batch of radiographs: vanilla gradients, Grad-CAM, XRAI.

Every method runs through PAIR's `saliency.core` (Kapishnikov et al. 2019,
https://github.com/PAIR-code/saliency) with our callback (bnp_cxr.attribution.callbacks). An image
is float32 [H, W, 1] in [0, 1] (the model's input); a map is float32 [H, W] at the same size:

- vanilla: |d output / d pixel| (Simonyan et al. 2014), optionally SmoothGrad (Smilkov et al. 2017);
- gradcam: saliency's GradCam (ReLU, divided by its max, upsampled), in [0, 1] (Selvaraju et al. 2017);
- xrai: saliency's XRAI region-ranked attribution (Kapishnikov et al. 2019), via bnp_cxr.attribution.xrai;
- smoothgrad: vanilla with SmoothGrad on; ig, blur_ig, guided_ig, occlusion: bnp_cxr.attribution.library_methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import keras
import numpy as np
import saliency.core as saliency
import tensorflow as tf

from bnp_cxr.attribution.callbacks import ModelGradients, output_index
from bnp_cxr.attribution.names import ALL_METHODS, METHODS, XRAI_IMPLS  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class MethodConfig:
    """Settings of the attribution methods (SmoothGrad for vanilla, Grad-CAM's layer, XRAI's IG)."""

    smoothgrad: bool = False
    smoothgrad_samples: int = 25
    smoothgrad_stdev_spread: float = 0.15  # noise sigma as a fraction of the image's max - min (Smilkov et al.)
    conv_layer: str | None = None  # Grad-CAM's layer; None = the model's last spatial feature map
    xrai_impl: str = "fast"  # "fast" | "reference" (bnp_cxr.attribution.xrai)
    batch_size: int = 32  # images per gradient call (vanilla) / IG steps per call (XRAI)
    ig_steps: int = 100  # XRAI's integrated-gradients steps per baseline (saliency's default)
    seed: int = 0  # SmoothGrad noise

    def __post_init__(self):
        problems = [text for bad, text in (
            (self.smoothgrad_samples < 1, f"smoothgrad_samples must be >= 1, got {self.smoothgrad_samples}"),
            (not self.smoothgrad_stdev_spread >= 0,
             f"smoothgrad_stdev_spread must be >= 0, got {self.smoothgrad_stdev_spread}"),
            (self.xrai_impl not in XRAI_IMPLS, f"xrai_impl must be one of {XRAI_IMPLS}, got {self.xrai_impl!r}"),
            (self.batch_size < 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.ig_steps < 1, f"ig_steps must be >= 1, got {self.ig_steps}"),
        ) if bad]
        if problems:
            raise ValueError("; ".join(problems))


def channel_magnitude(gradients: np.ndarray) -> np.ndarray:
    """|gradient| reduced by max over the last (channel) axis, float32 (Simonyan et al. 2014, eq. 1)."""
    # saliency's VisualizeImageGrayscale sums |g| over channels instead; for our one-channel input the
    # two agree, and the max keeps the scale of a single channel should a 3-channel input ever come.
    return np.abs(np.asarray(gradients, dtype=np.float32)).max(axis=-1)


def check_images(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """`images` as float32 [N, H, W, 1] in [0, 1] fitting the model's input; ValueError naming what is wrong."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty array [N, H, W, 1], got shape {images.shape}")
    expected = tuple(model.input_shape[1:3])
    if None not in expected and images.shape[1:3] != expected:
        raise ValueError(f"images are {images.shape[1]} x {images.shape[2]} px but the model takes "
                         f"{expected[0]} x {expected[1]} px")
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"image values must lie in [0, 1] (the model's input), got [{low:.4g}, {high:.4g}]")
    return images


def _gradients_for(model: keras.Model, target: str, config: MethodConfig,
                   gradients: ModelGradients | None) -> ModelGradients:
    """The caller's compiled gradients if they fit (same model, target, conv layer), else new ones."""
    if gradients is None:
        return ModelGradients(model, target, config.conv_layer)
    if gradients.model is not model:
        raise ValueError("gradients were built for another model")
    if gradients.target != target:
        raise ValueError(f"gradients explain target {gradients.target!r}, not {target!r}")
    if config.conv_layer is not None and gradients.conv_layer != config.conv_layer:
        raise ValueError(f"gradients read conv layer {gradients.conv_layer!r}, config names {config.conv_layer!r}")
    return gradients


def _vanilla(images: np.ndarray, gradients: ModelGradients, config: MethodConfig) -> np.ndarray:
    if not config.smoothgrad:
        # One compiled call per batch instead of saliency's GradientSaliency.GetMask (one image per call):
        # the same callback and gradient (tests/test_attribution_methods.py checks equality with the library).
        parts = [gradients.input_gradients(tf.convert_to_tensor(images[start:start + config.batch_size]))[0].numpy()
                 for start in range(0, len(images), config.batch_size)]
        return channel_magnitude(np.concatenate(parts))
    method, maps = saliency.GradientSaliency(), []
    for image in images:
        # saliency draws SmoothGrad noise from numpy's global generator: seed it per image (the same noise
        # whatever the image's place in the batch) and restore the caller's state afterwards.
        state = np.random.get_state()
        np.random.seed(config.seed)
        try:
            # magnitude=False: the mean of the noisy gradients, as Smilkov et al. (2017) define SmoothGrad;
            # the library default (mean of squares) would turn the map into |g|^2 rather than |g| at zero noise.
            smoothed = method.GetSmoothedMask(image, gradients.call_model_function,
                                              stdev_spread=config.smoothgrad_stdev_spread,
                                              nsamples=config.smoothgrad_samples, magnitude=False)
        finally:
            np.random.set_state(state)
        maps.append(channel_magnitude(smoothed))
    return np.stack(maps)


def _gradcam(images: np.ndarray, gradients: ModelGradients) -> np.ndarray:
    method = saliency.GradCam()
    maps = [method.GetMask(image, gradients.call_model_function, should_resize=True, three_dims=False)
            for image in images]
    # Bilinear upsampling of a map in [0, 1] stays there up to rounding; the clip makes the contract exact.
    return np.clip(np.stack(maps).astype(np.float32), 0.0, 1.0)


def _xrai(model: keras.Model, images: np.ndarray, target: str, config: MethodConfig,
          gradients: ModelGradients) -> np.ndarray:
    from bnp_cxr.attribution.xrai import xrai_map  # imported here: segmentation deps only when XRAI is asked for

    return np.stack([
        np.asarray(xrai_map(model, image, target=target, impl=config.xrai_impl, batch_size=config.batch_size,
                            steps=config.ig_steps, gradients=gradients).attribution, dtype=np.float32)
        for image in images])


def attribution_maps(model: keras.Model, images: np.ndarray, method: str, *, target: str = "bnpp",
                     config: MethodConfig = MethodConfig(), gradients: ModelGradients | None = None) -> np.ndarray:
    """Maps float32 [N, H, W] of `method` explaining `target` for images float32 [N, H, W, 1] in [0, 1].

    `gradients` (a ModelGradients of this model and target) reuses compiled functions across calls.
    """
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {ALL_METHODS}")
    output_index(target)  # ValueError for an unknown target before any work
    images = check_images(model, images)
    gradients = _gradients_for(model, target, config, gradients)
    if method in ("vanilla", "smoothgrad"):
        return _vanilla(images, gradients, replace(config, smoothgrad=config.smoothgrad or method == "smoothgrad"))
    if method == "gradcam":
        return _gradcam(images, gradients)
    if method != "xrai":
        from bnp_cxr.attribution.library_methods import library_maps

        return library_maps(method, images, gradients, ig_steps=config.ig_steps, batch_size=config.batch_size)
    return _xrai(model, images, target, config, gradients)
