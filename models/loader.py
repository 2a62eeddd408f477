"""One call from a weights spec to a ready model, so every command resolves weights the same way."""

from __future__ import annotations

from models.vit import DinoViT
from models.weights import WeightsIdentity, resolve_weights


def load_model(spec: str | None = None, *, allow_download: bool = True, progress: bool = True) -> tuple[DinoViT, WeightsIdentity]:
    """DinoViT in eval mode and the identity of its weights (``random[:SEED]`` only when asked for)."""
    state_dict, identity = resolve_weights(spec, allow_download=allow_download, progress=progress)
    return DinoViT.from_state_dict(state_dict), identity
