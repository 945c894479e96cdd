"""Bringing archives in: `dicom-adapter import` and the watched drop folder of `local`.

Read in this order: sources.py (what is read: files, folders, ZIP members, DICOMDIR media),
staging.py (copy and check one file), intake.py (de-duplicate by the ledger, then sink.py puts it
into the buffer), run.py (many files in parallel, summary and report), watch.py (the drop folder).
"""
