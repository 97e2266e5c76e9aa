"""Test-split metrics with patient-bootstrap CIs, evaluation plots and the resolution study."""
