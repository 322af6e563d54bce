"""Data in: ingest (bundled or user file), validation, time-aware split."""
