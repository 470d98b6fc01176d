"""Downstream workflows on a pretrained astroPT: embedding extraction and its Parquet store, probes,
fine-tuning and similarity search."""
