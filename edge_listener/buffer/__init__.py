"""Where received instances wait until they are uploaded: the reception file a C-STORE streams
into (reception.py), the buffer it is put into (buffering.py: spool or GCS + Pub/Sub), the
disk's high-water mark, and the local runtime's dispatcher and export queue over the spool.

May import: `edge_listener.metrics` and `dicom_adapter`.
"""
