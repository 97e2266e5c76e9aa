"""Shenzhen TB set (Jaeger et al. 2014, Quant Imaging Med Surg 4(6):475) as a standard bnp-cxr manifest.

Read from the layout in ../shared/data/lungs/shenzhen (index.csv, images/, masks/: manual lung masks,
Stirenko et al. 2018) or from NLM's release (ChinaSet_AllFiles: CXR_png/CHNCXR_<number>_<tb>.png); both through
bnp_cxr.data.sources.nlm_tb. tb=1 maps to the stand-in labs BNPP 2000 / BNP 500 pg/mL, tb=0 to 100 / 30.
"""

from __future__ import annotations

from bnp_cxr.data.sources.common import Dataset
from bnp_cxr.data.sources.nlm_tb import tb_source

DATASET = Dataset("Shenzhen TB", "stand-in",
                  "Shenzhen TB set (tools/make_manifest.py shenzhen): stand-in labs from its tuberculosis label "
                  "(tb -> BNPP 2000 / BNP 500 pg/mL, else 100 / 30), not measured BNP")

write_shenzhen_manifest = tb_source(DATASET, "shenzhen")
