"""The study's experiments (reference-set sizes, cross-domain pairs, additive noise) run on this product's own
calibration and labelling, scored with pipeline/evaluate.py."""
