"""The DIMSE front: the pynetdicom AE that peers associate with (server.py), who may associate
and how many (admission.py, shared_admission.py), and `fastpath/`, the one place where
pynetdicom's internals are replaced, behind a version guard.

May import: `services`, `buffer`, `dicom_adapter`. Not `runtime`, `intake`, `cli`.
"""
