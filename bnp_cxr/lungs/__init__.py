"""Lung masks: a Keras U-Net trained on image + mask folders, used to measure in-lung attention.

unet (model, loss, Dice), data (mask folders, manifests, pairs in the records' geometry, splits),
train (training, saving / loading with a JSON sidecar), predict (masks, largest components).
"""

from bnp_cxr.lungs.data import (MANIFEST_MASK_COLUMN, LungDataError, load_pairs, prepare_pair, read_mask_folder,
                                split_indices)
from bnp_cxr.lungs.predict import keep_largest_components, predict_lung_masks
from bnp_cxr.lungs.train import LungTrainResult, load_lung_model, save_lung_model, sidecar_path, train_lung_model
from bnp_cxr.lungs.unet import bce_soft_dice_loss, build_unet, dice, dice_metric, dice_per_image

__all__ = ["MANIFEST_MASK_COLUMN", "LungDataError", "LungTrainResult", "bce_soft_dice_loss", "build_unet", "dice",
           "dice_metric", "dice_per_image", "keep_largest_components", "load_lung_model", "load_pairs",
           "predict_lung_masks", "prepare_pair", "read_mask_folder", "save_lung_model", "sidecar_path",
           "split_indices", "train_lung_model"]
