"""The phantom cohort: synthetic chest radiographs (real DICOM) with lung masks, labs and known truth.

A latent severity per study drives both the labs (log-normal BNP / NT-proBNP) and image findings at
several scales (opacity, Kerley lines, heart size, effusion) plus confounders outside the lungs; see
docs/phantom.md.
"""

from bnp_cxr.phantom.cohort import generate_cohort
from bnp_cxr.phantom.config import COMPONENT_BITS, CohortConfig
from bnp_cxr.phantom.contact import write_contact_sheet

__all__ = ["COMPONENT_BITS", "CohortConfig", "generate_cohort", "write_contact_sheet"]
