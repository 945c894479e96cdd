"""The DIMSE services, one module each, handlers as plain functions bound to pynetdicom events:
store.py (C-STORE into the buffer), query.py (C-FIND from QIDO-RS), retrieve.py with
retrieve_fetch.py (C-MOVE / C-GET from WADO-RS), commitment.py (Storage Commitment).

Handlers speak pynetdicom's public handler protocol, so they serve on plain pynetdicom; the
fast path (front/fastpath) may run the same work its own way. May import: `buffer`, `metrics`,
`dicom_adapter`. Not `front`, `runtime`, `intake`, `cli`.
"""
