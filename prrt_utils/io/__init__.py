"""Files in and out: configuration, atomic writes, logging, DICOM/NIfTI loading, image views."""
