"""The study's feature analyses: facet PCA images, CLS attention maps, descriptor scatter against truth."""
