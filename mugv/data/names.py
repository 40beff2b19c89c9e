"""File names of the curated data set that ingest and qc write and later stages read (kept free of imports)."""

CLIPS = "clips"  # one mp4 per clip
CLIPS_TABLE = "clips.parquet"
CLIP_SCORES_TABLE = "clip_scores.parquet"  # qc's scores, computed by ingest as it writes each clip
QUARANTINE_TABLE = "quarantine.parquet"
QC_TABLE = "qc.parquet"
