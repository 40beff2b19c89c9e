"""File names in the latent data set folder: written by the encode stage, read by training (kept free of torch)."""

INDEX = "latents.parquet"
STATS = "latent_stats.json"
TEXT_NULL = "text_null.safetensors"
SHARDS = "shards"
ENCODE_REPORT = "encode_report.json"  # counts per bucket, unassigned and failed clips (no timings)
BUCKET_FILL = "bucket_fill.csv"
