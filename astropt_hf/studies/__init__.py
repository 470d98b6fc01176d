"""Studies that train many models: the scaling-law sweep and the input-normalisation study."""
