"""TFRecords: schema, per-image preparation, the sharded writer and the tf.data reader.

Submodules are imported on demand: ingest worker processes (records.pool) import only `prepare` (no TensorFlow).
"""
