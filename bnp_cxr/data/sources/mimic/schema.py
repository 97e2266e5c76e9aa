"""The published file names and column sets of MIMIC-CXR(-JPG) 2.x and MIMIC-IV 2.x / 3.x that the builder reads.

One place for them: the builder checks every file against these, the tests' mini-MIMIC and bench/mimic.py
write them.
"""

from __future__ import annotations

# MIMIC-CXR-JPG 2.0.0 (also usable beside the DICOM release).
METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
METADATA_REQUIRED = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
# CheXpert labeler output, study level: 1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned.
CHEXPERT_LABELS = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Consolidation": "consolidation",
                   "Edema": "edema", "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
                   "Fracture": "fracture", "Lung Lesion": "lung_lesion", "Lung Opacity": "lung_opacity",
                   "No Finding": "no_finding", "Pleural Effusion": "effusion", "Pleural Other": "pleural_other",
                   "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax", "Support Devices": "support_devices"}
CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
CHEXPERT_REQUIRED = ("subject_id", "study_id", "Edema", "Cardiomegaly", "Pleural Effusion")
# MIMIC-CXR 2.x DICOM release.
RECORD_LIST = "cxr-record-list.csv.gz"
RECORD_LIST_COLUMNS = ("subject_id", "study_id", "dicom_id", "path")

# MIMIC-IV 2.x / 3.x hosp module (2.0 and 2.1 lack order_provider_id; it is not read).
D_LABITEMS = "hosp/d_labitems.csv.gz"
D_LABITEMS_COLUMNS = ("itemid", "label", "fluid", "category")
D_LABITEMS_REQUIRED = ("itemid", "label")
LABEVENTS = "hosp/labevents.csv.gz"
LABEVENTS_COLUMNS = ("labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id",
                     "charttime", "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper",
                     "flag", "priority", "comments")
LABEVENTS_REQUIRED = ("subject_id", "itemid", "charttime", "value", "valuenum", "valueuom")
NTPROBNP_ITEMID = 50963  # 'NTproBNP', Blood, Chemistry, in MIMIC-IV 2.x / 3.x


def image_path(subject_id: str, study_id: str, dicom_id: str, suffix: str) -> str:
    """The published path of an image under the release root: files/pXX/pSUBJECT/sSTUDY/DICOM_ID.suffix."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.{suffix}"
