"""Names of the attribution stage that command lines offer as choices; importing them loads no Keras."""

METHODS = ("vanilla", "gradcam", "xrai")  # the default set of runs, in-lung tables and panels
# Every saliency.core method that applies (the scorecard's set): SmoothGrad and bnp_cxr.attribution.library_methods.
ALL_METHODS = METHODS + ("smoothgrad", "ig", "blur_ig", "guided_ig", "occlusion")
XRAI_IMPLS = ("fast", "reference")
TARGETS = {"bnp": 0, "bnpp": 1}  # model output column of each lab
AGGREGATE = "in_lung.csv"  # an attribution folder's in-lung table over all images
