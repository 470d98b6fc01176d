"""Studies that train many models the same way and compare them.

- `scaling_sweep`: the scaling-law sweep (a ladder of model sizes, one budget), its driver;
- `scaling_laws`: size parsing, parameter counts and the saturating power-law fit;
- `scaling_report`: what the sweep writes (scaling.json, scaling.md, the figures);
- `normalisation_study`: one pretraining per input normalisation, each linear-probed;
- `common`: what both studies use (finished runs, the probe galaxies, the headline probe score).
"""
