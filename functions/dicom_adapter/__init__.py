"""dicom-adapter's shared package: the code the edge listener and the Cloud Functions share."""
