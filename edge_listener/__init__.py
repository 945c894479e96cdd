"""The edge listener: the DIMSE side of dicom-adapter (pynetdicom), local and cloud runtimes."""
