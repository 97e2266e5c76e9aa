"""Render one study: anatomy + findings + confounders -> display image, lung mask, component bitmask, truth.

Smooth anatomy is composed on a working grid of at most ~768 px (cheap) and upsampled; the structures
that must stay sharp (Kerley lines, electrodes, leads, text) and the noise are added at native size.
Density is in display convention: air 0, aerated lung ~0.2, soft tissue ~0.5, bone up to ~0.9, metal > 1.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from bnp_cxr.phantom import anatomy as anat
from bnp_cxr.phantom import devices, findings, skeleton
from bnp_cxr.phantom.config import COMPONENT_BITS, CohortConfig
from bnp_cxr.phantom.model import finding_strengths

WORK_MAX_PX = 768


@dataclass(frozen=True)
class StudySpec:
    """What one image shows: drawn at cohort level so truth is known before rendering."""

    index: int
    patient_seed: int  # anatomy: the same for every study of a patient
    image_seed: int  # positioning, exposure, findings' placement, noise
    severity: float
    view: str  # PA or AP (the header may later claim otherwise: a planted defect)
    electrodes: bool
    detector_id: int  # fixed-pattern texture shared by images from the same detector


@dataclass
class Rendered:
    """A rendered study at native size."""

    display: np.ndarray  # float32, display convention, before windowing to stored values
    lung_mask: np.ndarray  # uint8 0/255
    components: np.ndarray  # uint8 bitmask (COMPONENT_BITS)
    truth: dict = field(default_factory=dict)


def _resize(image: np.ndarray, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), max(sigma_px, 0.3))


def render_study(spec: StudySpec, config: CohortConfig) -> Rendered:
    """Render a study deterministically from its spec and the cohort config."""
    height, width = config.height_px, config.width_px
    pixel_mm = config.pixel_spacing_mm
    strengths = finding_strengths(spec.severity, config)
    # Separate streams, so e.g. drawing a finding does not change the exposure or noise of the image;
    # bones and vessels come from the patient's seed and are the same in each of their studies.
    patient_rng = np.random.default_rng(spec.patient_seed)
    body_rng = np.random.default_rng([spec.patient_seed, 1])
    position_rng, opacity_rng, kerley_rng, device_rng, acquisition_rng = (
        np.random.default_rng([spec.image_seed, stream]) for stream in range(5))
    ctr = strengths["ctr"] + patient_rng.normal(0.0, config.ctr_patient_sd)
    a = anat.sample_anatomy(patient_rng, ctr, spec.view == "AP", height / width)
    # Positioning differs between visits of the same patient.
    a = _reposition(a, position_rng)

    ys, xs = anat.grid(height, width)
    lungs = {side: anat.lung_mask(ys, xs, a, side) for side in anat.SIDES}
    lung = lungs[-1] | lungs[1]
    heart = anat.heart_mask(ys, xs, a)
    fluid = findings.effusion_mask(ys, xs, a, lungs, findings.effusion_heights(strengths["effusion"]))
    opacity_native = findings.opacity_shape(ys, xs, a) * lung if strengths["lung_opacity"] > 0 else None

    scale = min(1.0, WORK_MAX_PX / max(height, width))
    work = (max(1, round(height * scale)), max(1, round(width * scale)))
    work_mm = pixel_mm / scale
    density = _compose_work(a, lung, heart, fluid, strengths, body_rng, opacity_rng, work, work_mm)
    density = _resize(density, (height, width), cv2.INTER_LINEAR)

    kerley, kerley_core, lines = findings.kerley_lines(
        lungs, fluid, a, strengths["kerley_lines"], kerley_rng, pixel_mm, config.kerley_sigma_mm,
        amplitude=a.lung_air * (0.12 + 0.18 * strengths["kerley_lines"]))
    density += kerley
    layer, devices_truth = devices.confounders(lung, a, device_rng, pixel_mm, spec.electrodes, spec.view == "AP")
    density += layer

    display = _acquire(density, acquisition_rng, spec.detector_id, config)
    components = np.zeros((height, width), np.uint8)
    if opacity_native is not None:
        components[opacity_native > 0.35] |= COMPONENT_BITS["lung_opacity"]
    components[kerley_core] |= COMPONENT_BITS["kerley_lines"]
    components[heart] |= COMPONENT_BITS["heart"]
    components[fluid] |= COMPONENT_BITS["effusion"]
    components[layer > 0.02] |= COMPONENT_BITS["confounder"]
    truth = {
        "strengths": strengths,
        "ctr_measured": findings.measured_ctr(heart, lung),
        "kerley_line_count": len(lines),
        "confounder_items": devices_truth,
    }
    return Rendered(display=display, lung_mask=lung.astype(np.uint8) * 255, components=components, truth=truth)


def _reposition(a: anat.Anatomy, rng: np.random.Generator) -> anat.Anatomy:
    """Per-study positioning: the same patient never lies exactly the same way twice."""
    dy = rng.normal(0.0, 0.008)
    return replace(a, cx=a.cx + rng.normal(0.0, 0.01), spine_shift=a.spine_shift + rng.normal(0.0, 0.003),
                   y_apex=a.y_apex + dy, y_dome_right=a.y_dome_right + dy, y_dome_left=a.y_dome_left + dy,
                   heart_top=a.heart_top + dy, shoulder_y=a.shoulder_y + dy)


def _compose_work(a: anat.Anatomy, lung: np.ndarray, heart: np.ndarray, fluid: np.ndarray, strengths: dict,
                  rng: np.random.Generator, opacity_rng: np.random.Generator, work: tuple[int, int],
                  work_mm: float) -> np.ndarray:
    """Smooth anatomy and coarse findings on the working grid."""
    ys, xs = anat.grid(*work)
    lung_w = _resize(lung.astype(np.float32), work, cv2.INTER_AREA)
    lung_soft = _blur(lung_w, 1.5 / work_mm)
    depth = _blur(lung_w, 30.0 / work_mm)
    depth /= max(float(depth.max()), 1e-6)
    dx = xs[None, :] - a.cx
    body_hw = anat.body_half_width(ys, a)[:, None]
    chord = np.sqrt(np.clip(1.0 - (dx / body_hw) ** 2, 0.0, 1.0))
    density = 0.30 * chord + 0.16 * chord ** 4  # soft tissue: thicker through the centre of the trunk
    density += _arms(ys, xs, a)
    air = a.lung_air * lung_soft * (0.5 + 0.5 * depth)  # what aerated lung removes from soft tissue
    below = np.minimum(*(anat.dome_curve(xs, a, side) for side in anat.SIDES))
    abdomen = np.clip((ys[:, None] - below[None, :]) / 0.02, 0.0, 1.0) * (1.0 - lung_w)
    heart_w = _blur(_resize(heart.astype(np.float32), work, cv2.INTER_AREA), 1.5 / work_mm)
    density += 0.035 * heart_w * (1.0 - abdomen)  # the heart's base hides behind the diaphragm
    density += skeleton.spine(ys, xs, a, rng) * (1.0 - 0.4 * np.maximum(abdomen, heart_w))
    density += skeleton.clavicles(ys, xs, a, rng) + _trachea(ys, xs, a)
    # Processed radiographs show ribs mainly against aerated lung.
    density += (0.35 + 0.65 * lung_soft) * skeleton.ribs(ys, xs, a, rng)
    density += 0.09 * lung_soft * skeleton.vessel_tree(ys, xs, a, rng, work_mm)
    # Parenchymal texture: faint band-passed noise, so lungs are not flat between the vessels.
    texture = rng.standard_normal(work).astype(np.float32)
    texture = _blur(texture, 1.2 / work_mm) - _blur(texture, 4.0 / work_mm)
    density += (0.007 / max(float(texture.std()), 1e-6)) * texture * lung_soft
    density += _hila(ys, xs, a) + _abdomen(ys, xs, a, abdomen)
    # Oedema and effusion replace air by fluid: the filled fraction of the air, capped below 1.
    filled = np.zeros(work, np.float32)
    if strengths["lung_opacity"] > 0:
        shape = findings.opacity_shape(ys, xs, a)
        patchy = findings.mottle(work, opacity_rng, 8.0 / work_mm)
        filled += 0.7 * strengths["lung_opacity"] * shape * (0.6 + 0.8 * patchy)
    if fluid.any():
        filled += _blur(_resize(fluid.astype(np.float32), work, cv2.INTER_AREA), 3.0 / work_mm)
    density -= air * (1.0 - np.clip(filled, 0.0, 0.92))
    return density.astype(np.float32)


def _arms(ys: np.ndarray, xs: np.ndarray, a: anat.Anatomy) -> np.ndarray:
    """Upper arms hanging beside the trunk, with the humerus, cut by the image edge in large patients."""
    arm_centre = a.body_half_width + 0.085
    u = (np.abs(xs - a.cx) - arm_centre) / 0.075
    top = a.shoulder_y + 0.09
    rows = np.sqrt(np.clip((ys - top) / 0.08, 0.0, 1.0)) * np.clip((0.8 - ys) / 0.2, 0.0, 1.0)
    tissue = 0.2 * np.clip(1.0 - u ** 2, 0.0, 1.0)
    return (rows[:, None] * tissue[None, :]).astype(np.float32)


def _trachea(ys: np.ndarray, xs: np.ndarray, a: anat.Anatomy) -> np.ndarray:
    """The air column of the trachea down to the carina, darker than the surrounding mediastinum."""
    carina = a.heart_top - 0.05
    rows = np.clip((carina - ys) / 0.03, 0.0, 1.0) * np.clip(ys / 0.05, 0.0, 1.0)
    cols = np.sqrt(np.clip(1.0 - ((xs - a.cx - 0.4 * a.spine_shift) / 0.02) ** 2, 0.0, 1.0))
    return (-0.09 * rows[:, None] * cols[None, :]).astype(np.float32)


def _hila(ys: np.ndarray, xs: np.ndarray, a: anat.Anatomy) -> np.ndarray:
    """Hilar vessel bundles beside the heart's upper border."""
    out = np.zeros((ys.size, xs.size), np.float32)
    y_hilum = a.heart_top - 0.015
    for side in anat.SIDES:
        x_hilum = a.cx + side * (float(anat.medial_edge(np.array([y_hilum]), a, side)[0]) + 0.012)
        out += 0.07 * np.exp(-0.5 * (((ys - y_hilum) / 0.045) ** 2))[:, None] \
            * np.exp(-0.5 * (((xs - x_hilum) / 0.02) ** 2))[None, :]
    return out


def _abdomen(ys: np.ndarray, xs: np.ndarray, a: anat.Anatomy, abdomen: np.ndarray) -> np.ndarray:
    """Denser liver under the right dome and the gastric air bubble under the left one."""
    lateral = np.abs(xs - a.cx) / a.thorax_half_width
    out = 0.04 * abdomen * ((xs < a.cx) * skeleton.smoothstep(1.05, 0.85, lateral))[None, :]
    bubble_y, bubble_x = a.y_dome_left + 0.035, a.cx + 0.55 * a.thorax_half_width
    bubble = ((ys[:, None] - bubble_y) / 0.022) ** 2 + ((xs[None, :] - bubble_x) / 0.05) ** 2
    out -= 0.12 * np.clip(1.0 - bubble, 0.0, 1.0) ** 0.5 * (ys[:, None] > bubble_y - 0.006)
    return out.astype(np.float32)


def _acquire(density: np.ndarray, rng: np.random.Generator, detector_id: int, config: CohortConfig) -> np.ndarray:
    """Exposure curve, quantum noise (larger where fewer photons arrive) and fixed detector texture."""
    gamma = rng.uniform(0.85, 1.15)
    display = np.clip(density, 0.0, None) ** gamma
    noise = rng.standard_normal(display.shape, dtype=np.float32)
    display += config.quantum_noise * (0.4 + display) * noise
    display += config.detector_texture * _detector_texture(detector_id, *display.shape)
    return display.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _detector_texture(detector_id: int, height: int, width: int) -> np.ndarray:
    """Fixed pattern of one detector (column gain + grain): the same in every image, so drawn once per process."""
    texture_rng = np.random.default_rng([detector_id, 0xDE7])
    column_gain = _blur(texture_rng.standard_normal((1, width)).astype(np.float32), 1.5)
    grain = _blur(texture_rng.standard_normal((height, width)).astype(np.float32), 0.8)
    texture = column_gain + 0.7 * grain
    texture.flags.writeable = False  # shared between calls
    return texture
