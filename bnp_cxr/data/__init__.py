"""Reading the inputs: radiographs (DICOM / PNG / JPEG), manifests, labs, pseudonymous IDs, public datasets."""
