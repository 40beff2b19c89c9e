"""Data plane: synthetic data set, ingest, scene split, quality checks, expectations, captions."""
