"""astroPT as a HuggingFace Transformers model."""
