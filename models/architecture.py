"""ViT-S/8 as DINO trained it: sizes, blocks, facets and the input normalisation its weights expect.

Plain constants with no imports, so the command line can offer them (``--heads``, ``--blocks``, ``--facets``)
without loading torch; the modules that build and read the model import them from here.
"""

EMBED_DIM, DEPTH, HEADS, PATCH = 384, 12, 6, 8
BLOCKS = tuple(range(1, DEPTH + 1))  # numbered from 1, as the study numbers them
FACETS = ("key", "query", "value", "token")  # token: the block's output
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # applied in the graph (models.encoder), folded into the patch embedding
IMAGENET_STD = (0.229, 0.224, 0.225)
