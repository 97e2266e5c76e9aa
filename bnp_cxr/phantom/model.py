"""The generative model: latent severity -> lab values and finding strengths, and the label-noise ceiling.

A study's latent severity s in [0, 1] is s = Phi(z), z = mean + patient effect + study effect (so repeat
studies of a patient have correlated severities). Labs are log-normal given s:
log10 BNPP = a + b*s + e1, log10 BNP = c + d*s + e2, (e1, e2) bivariate normal with correlation rho.
Every image finding has a strength that is a deterministic, monotone function of s (zero below an onset),
so a perfect reader of the image could recover s, and no reader can beat an oracle that knows s: that
oracle's r and AUC are the label-noise ceiling (the paper reached r 0.787, AUC 0.903; Huynh et al. 2022).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from sklearn.metrics import roc_auc_score

from bnp_cxr.phantom.config import CohortConfig


def ramp(s: float, onset: float, gamma: float = 1.0) -> float:
    """0 below `onset`, rising to 1 at s = 1 as ((s - onset) / (1 - onset)) ** gamma."""
    return float(np.clip((s - onset) / (1.0 - onset), 0.0, 1.0) ** gamma)


def finding_strengths(s: float, config: CohortConfig) -> dict[str, float]:
    """Strength of each image finding for severity s: deterministic and monotone non-decreasing in s."""
    cardiomegaly = ramp(s, config.cardiomegaly_onset, 1.3)
    return {
        "lung_opacity": ramp(s, config.opacity_onset, 1.2),
        "kerley_lines": ramp(s, config.kerley_onset),
        "cardiomegaly": cardiomegaly,
        "ctr": config.ctr_normal + (config.ctr_max - config.ctr_normal) * cardiomegaly,
        "effusion": ramp(s, config.effusion_onset, 0.8),
        "p_confounder": config.confounder_p_min + (config.confounder_p_max - config.confounder_p_min) * s,
        "p_ap_view": config.ap_p_min + (config.ap_p_max - config.ap_p_min) * s,
    }


def severity_from_latent(z: np.ndarray) -> np.ndarray:
    """s = Phi(z): the probit map keeps severity in [0, 1]."""
    return special.ndtr(z)


def sample_severities(rng: np.random.Generator, patient_of_study: np.ndarray, n_patients: int,
                      config: CohortConfig) -> np.ndarray:
    """Severity per study from a patient random effect plus a study effect."""
    patient_effect = rng.normal(0.0, config.severity_patient_sd, n_patients)
    study_effect = rng.normal(0.0, config.severity_study_sd, len(patient_of_study))
    return severity_from_latent(config.severity_mean + patient_effect[patient_of_study] + study_effect)


def expected_log10_labs(s: np.ndarray, config: CohortConfig) -> tuple[np.ndarray, np.ndarray]:
    """E[log10 BNPP | s], E[log10 BNP | s] in log10 pg/mL (the oracle's prediction)."""
    s = np.asarray(s, dtype=float)
    return config.bnpp_intercept + config.bnpp_slope * s, config.bnp_intercept + config.bnp_slope * s


def sample_log10_labs(rng: np.random.Generator, s: np.ndarray, config: CohortConfig) -> tuple[np.ndarray, np.ndarray]:
    """True (uncensored) log10 BNPP and log10 BNP given severities, with correlated log-normal noise."""
    mean_bnpp, mean_bnp = expected_log10_labs(s, config)
    standard = rng.standard_normal((2, np.size(s)))
    rho = config.lab_noise_corr
    noise_bnpp = standard[0]
    noise_bnp = rho * standard[0] + math.sqrt(1.0 - rho * rho) * standard[1]
    return mean_bnpp + config.bnpp_noise_sd * noise_bnpp, mean_bnp + config.bnp_noise_sd * noise_bnp


def combined_positive(log10_bnpp: np.ndarray, log10_bnp: np.ndarray, config: CohortConfig) -> np.ndarray:
    """Positive if BNPP > 400 or BNP > 100 pg/mL (Huynh et al. 2022), on true values."""
    return ((log10_bnpp > math.log10(config.bnpp_threshold_pg_ml))
            | (log10_bnp > math.log10(config.bnp_threshold_pg_ml)))


def ceiling_metrics(s: np.ndarray, log10_bnpp: np.ndarray, log10_bnp: np.ndarray, config: CohortConfig) -> dict:
    """Oracle (knows s, predicts E[y | s]) Pearson r on log10 BNPP / BNP and AUC for the combined label."""
    oracle_bnpp, oracle_bnp = expected_log10_labs(s, config)
    positive = combined_positive(log10_bnpp, log10_bnp, config)
    two_classes = 0 < positive.sum() < positive.size  # roc_auc_score raises on one class
    # P(positive | s) is increasing in s, so s itself ranks studies exactly as the oracle's probability does.
    return {
        "n": int(np.size(s)),
        "pearson_r_log10_bnpp": float(np.corrcoef(oracle_bnpp, log10_bnpp)[0, 1]),
        "pearson_r_log10_bnp": float(np.corrcoef(oracle_bnp, log10_bnp)[0, 1]),
        "auc_combined_positive": float(roc_auc_score(positive, s)) if two_classes else math.nan,
        "positive_fraction": float(positive.mean()),
    }


def simulated_ceiling(config: CohortConfig) -> dict:
    """The label-noise ceiling by simulation of config.ceiling_n studies (deterministic for the config)."""
    rng = np.random.default_rng([config.seed, 0xCE111])
    n = config.ceiling_n
    # Patients with one study each: the ceiling concerns the lab noise given s, not the patient structure.
    s = sample_severities(rng, np.arange(n), n, config)
    log10_bnpp, log10_bnp = sample_log10_labs(rng, s, config)
    return ceiling_metrics(s, log10_bnpp, log10_bnp, config)
