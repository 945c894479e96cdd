"""The edge: the `dicom-adapter` command and the DIMSE listener behind it.

Its packages are the stages of the pipeline (docs/architecture.md), and imports run one way,
from the top of this list down (tests/test_architecture.py checks it):

- `cli`       the command line: flags and environment variables into settings;
- `runtime`   the processes of a run (local, cloud edge, listener and upload children, health);
- `intake`    `dicom-adapter import` and the drop folder: files into the buffer;
- `front`     the DIMSE front: the pynetdicom AE, admission, and pynetdicom's guarded fast path;
- `services`  one DIMSE service per module: C-STORE, C-FIND, C-MOVE/C-GET, Storage Commitment;
- `buffer`    where received instances wait: reception files, the spool or GCS, the local
              dispatcher and export queue;
- `metrics`   the pipeline's counters (Prometheus), incremented by the stages above;
- and below all of them the shared package `dicom_adapter` (functions/), which never imports
  the edge.
"""
