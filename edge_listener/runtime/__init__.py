"""The processes of a run and how they are put together: `local` (one machine: listener
processes over a spool, an upload process), `cloud` (the GKE edge: GCS + Pub/Sub), the child
processes, health endpoint, CPU count, and `assembly` (the DIMSE services built from settings).

May import: `intake`, `front`, `services`, `buffer`, `metrics`, `dicom_adapter`. Not `cli`.
"""
