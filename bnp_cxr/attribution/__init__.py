"""Attribution maps for the BNP / BNPP regressors: vanilla gradients, Grad-CAM and XRAI (PAIR `saliency`)."""
