"""Montgomery County TB set (Jaeger et al. 2014, Quant Imaging Med Surg 4(6):475) as a standard bnp-cxr manifest.

138 frontal radiographs (58 with tuberculosis) from the Montgomery County, Maryland, screening programme: a
site other than Shenzhen for testing a Shenzhen-trained model. Read from NLM's release (MontgomerySet:
CXR_png/MCUCXR_<number>_<tb>.png; its per-lung masks are left out) or an index.csv layout, through
bnp_cxr.data.sources.nlm_tb. tb=1 maps to the stand-in labs BNPP 2000 / BNP 500 pg/mL, tb=0 to 100 / 30.
"""

from __future__ import annotations

from bnp_cxr.data.sources.common import Dataset
from bnp_cxr.data.sources.nlm_tb import tb_source

DATASET = Dataset("Montgomery County TB", "stand-in",
                  "Montgomery County TB set (tools/make_manifest.py montgomery): stand-in labs from its tuberculosis "
                  "label (tb -> BNPP 2000 / BNP 500 pg/mL, else 100 / 30), not measured BNP")

write_montgomery_manifest = tb_source(DATASET, "montgomery")
