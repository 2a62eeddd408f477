"""Domain adaptation of the ViT-S/8 by DINO self-distillation on unlabeled ultrasound sweeps (``bonestream adapt``).

DINO: M. Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021. Multi-view pairs
after VET-DINO (Dourson et al., "VET-DINO: Learning Anatomical Understanding Through Multi-View Distillation in
Veterinary Imaging"): the teacher sees one frame, the student a neighbouring frame of the same recording.
"""
