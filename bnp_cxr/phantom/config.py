"""Configuration of the phantom cohort: sizes, seed and every generative parameter, with documented defaults.

All generative parameters live here so that cohort.json records the complete model and an identical
config reproduces identical files (see docs/phantom.md for the model these parameters drive).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# COMPONENT_BITS (the bits of components/*.png) is public here too.
from bnp_cxr.workspace import BNP_THRESHOLD_PG_ML, BNPP_THRESHOLD_PG_ML, COMPONENT_BITS  # noqa: F401


COMPONENT_DESCRIPTIONS: dict[str, str] = {
    "lung_opacity": "diffuse perihilar and basal airspace opacity inside the lungs (coarse: visible at 64 px)",
    "kerley_lines": "Kerley B septal lines, 1-2 cm horizontal lines at the lower lateral lung periphery; zero-mean "
                    "cross profile, resolvable only at >= 512 px",
    "heart": "cardiac silhouette; its width (cardiothoracic ratio) grows with severity",
    "effusion": "pleural effusion: basal fluid with a meniscus blunting the costophrenic angle",
    "confounder": "non-anatomic signal outside the lungs: ECG electrodes and leads, portable-view text marker",
}

# Paper-scale geometry: the default image is 1536 x 1280 px at 0.28 mm, i.e. 430 x 358 mm.
DEFAULT_HEIGHT_PX, DEFAULT_WIDTH_PX, DEFAULT_SPACING_MM = 1536, 1280, 0.28


@dataclass(frozen=True)
class CohortConfig:
    """Everything that determines a phantom cohort; equal configs give byte-identical cohorts."""

    n_patients: int = 300
    n_images: int = 360  # n_images - n_patients patients have a second study
    height_px: int = DEFAULT_HEIGHT_PX  # native size: the finest findings survive only at >= 512 px
    width_px: int = DEFAULT_WIDTH_PX
    pixel_spacing_mm: float = DEFAULT_SPACING_MM
    seed: int = 0
    plant_defects: bool = True

    # Latent severity s = Phi(z), z = patient effect + study effect (probit keeps s in [0, 1]).
    severity_patient_sd: float = 0.85
    severity_study_sd: float = 0.5
    severity_mean: float = 0.0

    # Labs: log10 pg/mL = intercept + slope * s + noise; the noise of the two tests is correlated.
    # Chosen so that ~45 % are positive and the oracle ceiling is r ~0.85, AUC ~0.92 (see cohort.json).
    bnpp_intercept: float = 1.1
    bnpp_slope: float = 2.6
    bnpp_noise_sd: float = 0.46
    bnp_intercept: float = 0.7
    bnp_slope: float = 2.1
    bnp_noise_sd: float = 0.45
    lab_noise_corr: float = 0.75
    bnpp_assay_range_pg_ml: tuple[float, float] = (50.0, 35000.0)
    bnp_assay_range_pg_ml: tuple[float, float] = (10.0, 5000.0)
    bnpp_threshold_pg_ml: float = BNPP_THRESHOLD_PG_ML
    bnp_threshold_pg_ml: float = BNP_THRESHOLD_PG_ML

    # Which tests a study has: both, BNPP only, BNP only (the rest: none).
    p_tests_both: float = 0.35
    p_tests_bnpp_only: float = 0.45
    p_tests_bnp_only: float = 0.16
    lab_offset_sd_hours: float = 5.0  # most labs within +-12 h of the study
    p_lab_outside_window: float = 0.05  # drawn 30-72 h from the study: outside the default 24 h window
    unrelated_labs_per_patient: float = 0.3  # labs on days without a radiograph

    # Findings: strength = ramp((s - onset) / (1 - onset)) ** gamma, monotone in s and 0 below onset.
    opacity_onset: float = 0.25
    kerley_onset: float = 0.45
    effusion_onset: float = 0.6
    cardiomegaly_onset: float = 0.15
    ctr_normal: float = 0.42  # cardiothoracic ratio at s <= onset
    ctr_max: float = 0.60  # at s = 1
    ctr_patient_sd: float = 0.012  # anatomical variation of the normal heart
    kerley_sigma_mm: float = 0.75  # 4th-derivative-of-Gaussian profile; bright core ~1.1 mm wide
    confounder_p_min: float = 0.1  # P(ECG electrodes) at s = 0 ...
    confounder_p_max: float = 0.85  # ... rising linearly to s = 1
    ap_p_min: float = 0.15  # P(AP portable view) at s = 0, rising linearly ...
    ap_p_max: float = 0.65

    # Acquisition: quantum noise (relative sd at mid grey) and fixed detector texture.
    quantum_noise: float = 0.016
    detector_texture: float = 0.004

    start_date: str = "2018-01-01"
    span_days: int = 1460
    ceiling_n: int = 200_000  # simulated studies for the label-noise ceiling

    @classmethod
    def small(cls, **overrides) -> "CohortConfig":
        """A cohort for tests: 24 images of 256 x 224 px (same physical size), built in seconds."""
        params = dict(n_patients=20, n_images=24, height_px=256, width_px=224,
                      pixel_spacing_mm=DEFAULT_SPACING_MM * DEFAULT_HEIGHT_PX / 256, ceiling_n=20_000)
        params.update(overrides)
        return cls(**params)

    def __post_init__(self) -> None:
        if self.n_patients < 1 or self.n_images < self.n_patients or self.n_images > 2 * self.n_patients:
            raise ValueError(f"need 1 <= n_patients <= n_images <= 2 * n_patients, got "
                             f"{self.n_patients} patients, {self.n_images} images")
        if min(self.height_px, self.width_px) < 64:
            raise ValueError(f"images must be at least 64 px, got {self.height_px}x{self.width_px}")
        if self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel_spacing_mm must be > 0, got {self.pixel_spacing_mm}")
        if self.p_tests_both + self.p_tests_bnpp_only + self.p_tests_bnp_only > 1:
            raise ValueError("test availability probabilities sum to more than 1")

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "CohortConfig":
        """Inverse of to_dict; unknown keys raise (a cohort from another version is not silently reused)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"unknown CohortConfig field(s) {sorted(unknown)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})
