"""Lung masks: a Keras U-Net trained on image + mask folders, used to measure in-lung attention."""

from bnp_cxr.lungs.unet import *  # noqa: F401,F403
from bnp_cxr.lungs.unet import _augment, _dataset  # noqa: F401
