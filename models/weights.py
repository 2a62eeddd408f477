"""DINO ViT-S/8 weights: resolve, download, verify and load into the official key layout.

Every loader path ends in :func:`normalize_state_dict`, which returns a plain float32 state
dict whose keys and shapes equal the official ``dino_deitsmall8_pretrain.pth`` exactly, so the
model can load it with ``strict=True``. Random weights exist only for tests and latency
benchmarks: they are produced only when asked for by name and carry a loud identity label.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.architecture import DEPTH, EMBED_DIM, HEADS, PATCH
from models.errors import BonestreamError

__all__ = [
    "OFFICIAL_URL", "OFFICIAL_FILENAME", "OFFICIAL_SIZE", "OFFICIAL_SHA256",
    "EMBED_DIM", "DEPTH", "HEADS", "PATCH",
    "WeightsError", "WeightsUnavailable", "WeightsIdentity",
    "official_layout", "random_state_dict", "normalize_state_dict", "file_sha256",
    "load_checkpoint", "default_cache_dir", "download", "resolve_weights",
]

_log = logging.getLogger(__name__)

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"
OFFICIAL_FILENAME = "dino_deitsmall8_pretrain.pth"
OFFICIAL_SIZE = 86_728_949
OFFICIAL_SHA256 = "55c8b267f479b614ec20858947ce361ba804846c193e20be74263a096bb6d75e"

_MLP_DIM = 4 * EMBED_DIM
PRETRAINED_GRID = 224 // PATCH  # 28: the official pos_embed covers a 28 x 28 grid plus CLS
_ENV_WEIGHTS = "BONESTREAM_WEIGHTS"
_ENV_CACHE = "BONESTREAM_CACHE"
_ENV_URL = "BONESTREAM_WEIGHTS_URL"
_WRAPPERS = ("teacher", "student", "state_dict", "model")  # preference order: DINO evaluates the teacher
_PREFIXES = ("module.", "backbone.")
_MAX_PROBLEMS = 3
_CHUNK = 1 << 20
_KINDS = ("official", "file", "random")


class WeightsError(BonestreamError):
    """Weights exist but are unusable; the message names the file and the problem."""


class WeightsUnavailable(WeightsError):
    """Weights cannot be obtained (offline, no cache); the message says how to supply them."""


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class WeightsIdentity:
    """Which weights a model runs, so outputs and reference files can say so unambiguously."""

    kind: str  # "official" | "file" | "random"
    sha256: str | None = None
    seed: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise WeightsError(f"weights identity: unknown kind {self.kind!r}, expected one of {_KINDS}")
        if self.kind == "random":
            if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
                raise WeightsError(f"weights identity: random weights need a seed >= 0, got {self.seed!r}")
        else:
            sha = self.sha256
            if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
                raise WeightsError(
                    f"weights identity: kind {self.kind!r} needs a lowercase sha256 hex, got {sha!r}")
            if (self.kind == "official") != (sha == OFFICIAL_SHA256):
                raise WeightsError(
                    f"weights identity: kind {self.kind!r} inconsistent with sha256 {sha} "
                    f"(official is {OFFICIAL_SHA256})")

    @property
    def label(self) -> str:
        """Short stable identity: the file hash, or the random seed."""
        return f"random:{self.seed}" if self.is_random else f"sha256:{self.sha256}"

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    @property
    def warning(self) -> str | None:
        """Text every output made with random weights must carry, so nobody mistakes it for DINO."""
        if not self.is_random:
            return None
        return (f"RANDOM WEIGHTS (seed {self.seed}): not DINO; "
                "outputs test plumbing only and say nothing about bone")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sha256": self.sha256, "seed": self.seed, "path": self.path,
                "label": self.label, "warning": self.warning}

    @classmethod
    def from_dict(cls, d: Mapping) -> "WeightsIdentity":
        """Inverse of :meth:`to_dict`; derived fields, if present, must agree."""
        if not isinstance(d, Mapping) or "kind" not in d:
            raise WeightsError(f"weights identity: expected a mapping with a 'kind', got {d!r}")
        ident = cls(kind=d["kind"], sha256=d.get("sha256"), seed=d.get("seed"), path=d.get("path"))
        if d.get("label") is not None and d["label"] != ident.label:
            raise WeightsError(f"weights identity: label {d['label']!r} does not match {ident.label!r}")
        return ident


# --------------------------------------------------------------------------- layout


def official_layout() -> dict[str, tuple[int, ...]]:
    """Every key of the official checkpoint mapped to its shape, in the file's order."""
    d, m = EMBED_DIM, _MLP_DIM
    layout: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + PRETRAINED_GRID * PRETRAINED_GRID, d),
        "patch_embed.proj.weight": (d, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (d,),
    }
    for n in range(DEPTH):
        b = f"blocks.{n}."
        layout.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (m, d), b + "mlp.fc1.bias": (m,),
            b + "mlp.fc2.weight": (d, m), b + "mlp.fc2.bias": (d,),
        })
    layout["norm.weight"] = (d,)
    layout["norm.bias"] = (d,)
    return layout


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic DINO-like random weights in the official layout, for tests and benchmarks only.

    Mirrors DINO's init so activations have realistic scale: trunc-normal(std .02, cut at 2 std)
    for cls_token, pos_embed and Linear weights, zero biases, LayerNorm 1/0, and the patch conv
    with PyTorch's default (a Linear of fan_in 3*8*8=192: uniform +-1/sqrt(192), bias included).
    """
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(3 * PATCH * PATCH)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in official_layout().items():
        t = torch.empty(shape, dtype=torch.float32)
        if key.startswith("patch_embed."):
            torch.nn.init.uniform_(t, -bound, bound, generator=gen)
        elif _is_layernorm(key):
            t.fill_(1.0 if key.endswith(".weight") else 0.0)
        elif key.endswith(".bias"):
            t.zero_()
        else:  # cls_token, pos_embed, Linear weights
            _trunc_normal_(t, 0.02, gen)
        sd[key] = t
    return sd


def _is_layernorm(key: str) -> bool:
    parts = key.split(".")
    return len(parts) >= 2 and parts[-2] in ("norm", "norm1", "norm2")


def _trunc_normal_(t: torch.Tensor, std: float, gen: torch.Generator) -> None:
    """Normal(0, std) cut at 2 std by resampling; ~10x faster than nn.init.trunc_normal_'s erfinv."""
    t.normal_(0.0, std, generator=gen)
    while (bad := t.abs() > 2 * std).any():
        t[bad] = torch.empty(int(bad.sum()), dtype=t.dtype).normal_(0.0, std, generator=gen)


# --------------------------------------------------------------------------- normalisation


_HF_RENAMES = {  # Hugging Face ViTModel suffix inside encoder.layer.N -> official suffix inside blocks.N
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def _unwrap(obj: Any) -> Any:
    """Descend through training-checkpoint wrappers, preferring the teacher like DINO's eval."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            return obj
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _is_hf(keys: list[str]) -> bool:
    return any(k.removeprefix("vit.").startswith(("embeddings.", "encoder.layer.")) for k in keys)


def _from_hf(sd: dict[str, Any]) -> dict[str, Any]:
    """Rename Hugging Face ViTModel keys to the official ones and stack q, k, v into qkv."""
    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    for key, val in sd.items():
        k = key.removeprefix("vit.")
        if k.startswith(("pooler.", "classifier.")):
            continue
        if k in _HF_TOP:
            out[_HF_TOP[k]] = val
            continue
        parts = k.split(".")
        if k.startswith("encoder.layer.") and len(parts) >= 5 and parts[2].isdigit():
            n, rest, leaf = int(parts[2]), ".".join(parts[3:-1]), parts[-1]
            if rest in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
                qkv.setdefault((n, leaf), {})[parts[-2]] = (key, val)
                continue
            if rest in _HF_RENAMES:
                out[f"blocks.{n}.{_HF_RENAMES[rest]}.{leaf}"] = val
                continue
        out[key] = val  # unknown: surfaces as "unexpected" under its original name
    for (n, leaf), trio in qkv.items():
        tensors = [trio[p][1] for p in ("query", "key", "value") if p in trio]
        if len(tensors) == 3 and all(isinstance(t, torch.Tensor) for t in tensors):
            out[f"blocks.{n}.attn.qkv.{leaf}"] = torch.cat(tensors, 0)  # official order: q, k, v
        else:  # incomplete triple: qkv is reported missing, the pieces unexpected
            out.update(dict(trio.values()))
    return out


def _few(keys: list[str]) -> str:
    """First few names, so a wrong model gives a readable message rather than 150 lines."""
    more = f" (+{len(keys) - _MAX_PROBLEMS} more)" if len(keys) > _MAX_PROBLEMS else ""
    return ", ".join(keys[:_MAX_PROBLEMS]) + more


def _shape(t: torch.Tensor | tuple[int, ...]) -> str:
    dims = tuple(t.shape) if isinstance(t, torch.Tensor) else t
    return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"


def normalize_state_dict(sd: Mapping[str, Any], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Bring any accepted DINO ViT-S/8 layout to the official one and check it strictly.

    Accepts the official dict, teacher/student/state_dict/model wrappers, ``module.``/``backbone.``
    prefixes, and the Hugging Face ``facebook/dino-vits8`` layout; drops training-only ``head.*``.
    Anything else is a WeightsError naming ``source``: a silently partial load would produce
    plausible-looking but meaningless features.
    """
    obj = _unwrap(sd)
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{source}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    flat: dict[str, Any] = {}
    for key, val in obj.items():
        if not isinstance(key, str):
            raise WeightsError(f"{source}: state dict key {key!r} is not a string")
        k = _strip_prefixes(key)
        if not k.startswith("head."):
            flat[k] = val
    if _is_hf(list(flat)):
        flat = _from_hf(flat)

    bad = [k for k, v in flat.items() if not isinstance(v, torch.Tensor)]
    if bad:
        listed = ", ".join(f"{k} ({type(flat[k]).__name__})" for k in bad[:_MAX_PROBLEMS])
        raise WeightsError(f"{source}: non-tensor values in state dict: {listed}")

    layout = official_layout()
    missing = [k for k in layout if k not in flat]
    unexpected = [k for k in flat if k not in layout]
    shapes = [f"shape of {k} is {_shape(flat[k])}, expected {_shape(s)}"
              for k, s in layout.items() if k in flat and tuple(flat[k].shape) != s]
    if missing or unexpected or shapes:
        problems = [f"missing: {_few(missing)}"] if missing else []
        problems += [f"unexpected: {_few(unexpected)}"] if unexpected else []
        problems += shapes[:_MAX_PROBLEMS] + ([f"(+{len(shapes) - _MAX_PROBLEMS} more shape mismatches)"]
                                              if len(shapes) > _MAX_PROBLEMS else [])
        pos = flat.get("pos_embed")
        if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[1] == 197:
            problems.append("pos_embed with 197 tokens suggests a /16 model; bonestream needs ViT-S/8")
        raise WeightsError(f"{source}: not a DINO ViT-S/8 state dict in the official layout: "
                           + "; ".join(problems))
    return {k: flat[k].detach().to(device="cpu", dtype=torch.float32) for k in layout}


# --------------------------------------------------------------------------- files


def file_sha256(path: Path) -> str:
    """Streamed sha256 of a file, so an 87 MB checkpoint is never held twice in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsIdentity]:
    """Load a local checkpoint safely (``weights_only=True``: no arbitrary code from pickles)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"{p}: weights file not found")
    if p.is_dir():
        raise WeightsError(f"{p}: is a directory, expected a checkpoint file ({OFFICIAL_FILENAME})")
    try:
        empty = p.stat().st_size == 0
        sha = file_sha256(p)
    except OSError as e:
        raise WeightsError(f"{p}: cannot read weights file ({_first_line(e)})") from e
    if empty:
        raise WeightsError(f"{p}: weights file is empty (interrupted download? delete it and retry)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, UnpicklingError, OSError, KeyError, EOFError, ... on bad files
        raise WeightsError(
            f"{p}: not a readable PyTorch checkpoint: corrupt, truncated, or not a plain tensor state dict "
            f"({_first_line(e)}); loading uses weights_only=True, so save model.state_dict(), not objects"
        ) from e
    sd = normalize_state_dict(obj, source=str(p))
    kind = "official" if sha == OFFICIAL_SHA256 else "file"
    return sd, WeightsIdentity(kind=kind, sha256=sha, path=str(p.resolve()))


def default_cache_dir() -> Path:
    """Where the official file is cached, per user (XDG), overridable for shared or read-only homes.

    $BONESTREAM_CACHE, else $XDG_CACHE_HOME/bonestream, else ~/.cache/bonestream.
    """
    if os.environ.get(_ENV_CACHE):
        return Path(os.environ[_ENV_CACHE]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "bonestream"
    return Path.home() / ".cache" / "bonestream"


def _how_to_supply(dest: Path, url: str) -> str:
    return (f"download {url} by other means and put it at {dest}, "
            f"or pass --weights PATH / set {_ENV_WEIGHTS}=PATH")


def download(url: str, dest: Path, *, expected_size: int | None, expected_sha256: str | None,
             timeout: float = 15.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying size and sha256 before it appears.

    The bytes go to a temp file beside ``dest`` and are renamed into place only once verified,
    so an interrupted or wrong download never leaves a file that a later run would trust.
    """
    dest = Path(dest).expanduser()
    tmp: Path | None = None
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            tmp = Path(name)
            req = urllib.request.Request(url, headers={"User-Agent": "bonestream-weights"})
            h = hashlib.sha256()
            got = 0
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
                if expected_size is not None and length is not None and length != expected_size:
                    raise WeightsError(f"{url}: server reports size {length} bytes, "
                                       f"expected {expected_size}; nothing saved at {dest}")
                with tqdm(total=length or expected_size, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=dest.name, disable=not progress, leave=False) as bar:
                    while chunk := resp.read(_CHUNK):
                        got += len(chunk)
                        if expected_size is not None and got > expected_size:
                            raise WeightsError(f"{url}: size exceeds expected {expected_size} bytes; "
                                               f"nothing saved at {dest}")
                        h.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if length is not None and got != length:
                raise WeightsUnavailable(f"{url}: transfer cut short ({got} of {length} bytes); "
                                         + _how_to_supply(dest, url))
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts are OSErrors
            reason = e.reason if isinstance(e, urllib.error.URLError) and not isinstance(
                e, urllib.error.HTTPError) else e
            raise WeightsUnavailable(f"cannot download {url} ({_first_line(reason)}); "
                                     + _how_to_supply(dest, url)) from e
        if expected_size is not None and got != expected_size:
            raise WeightsError(f"{url}: downloaded {got} bytes, expected {expected_size}; "
                               f"nothing saved at {dest}")
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256.lower():
            raise WeightsError(f"{url}: sha256 mismatch: got {digest}, expected {expected_sha256}; "
                               f"nothing saved at {dest}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        tmp = None
        return dest
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- resolution


def _parse_random(spec: str) -> int | None:
    """Seed for a ``random`` / ``random:SEED`` spec, None if the spec is not a random one."""
    if spec == "random":
        return 0
    if not spec.startswith("random:"):
        return None
    text = spec[len("random:"):]
    if not text.isdecimal():
        raise WeightsError(f"weights spec {spec!r}: seed must be a non-negative integer, as in 'random:7'")
    return int(text)


def random_label(spec: str) -> str | None:
    """The label of a ``random[:SEED]`` spec, known without building anything (None for other specs), so a
    mismatch with a reference is refused before any model is made."""
    seed = _parse_random(spec.strip())
    return None if seed is None else f"random:{seed}"


def _resolve_spec(spec: str) -> tuple[dict[str, torch.Tensor], WeightsIdentity]:
    seed = _parse_random(spec)
    if seed is None:
        return load_checkpoint(spec)
    ident = WeightsIdentity(kind="random", seed=seed)
    _notice(ident.warning)
    return random_state_dict(seed), ident


@functools.cache
def _notice(text: str) -> None:
    """Log ``text`` once per process: a command loads its model more than once (calibrate, then segment), and a
    notice repeated becomes noise. Outputs carry their own stamps; without logging set up this is one stderr line."""
    _log.warning(text)


def resolve_weights(spec: str | None = None, *, allow_download: bool = True, url: str | None = None,
                    progress: bool = True) -> tuple[dict[str, torch.Tensor], WeightsIdentity]:
    """Weights for the model, from an explicit spec, $BONESTREAM_WEIGHTS, the cache, or a download.

    ``spec`` is a checkpoint path, ``random``/``random:SEED``, or None/``official``. Never falls
    back to random weights: if nothing usable is found, WeightsUnavailable says how to supply it.
    ``url`` (default $BONESTREAM_WEIGHTS_URL, for an institutional mirror, else the official URL) only
    changes where the official file is fetched from; size and sha256 stay official.
    """
    url = url or os.environ.get(_ENV_URL) or OFFICIAL_URL
    spec = spec.strip() if spec is not None else None
    if spec and spec != "official":
        return _resolve_spec(spec)

    env = os.environ.get(_ENV_WEIGHTS, "").strip()
    if env and env != "official":
        try:
            return _resolve_spec(env)
        except WeightsError as e:
            raise type(e)(f"{e} (from {_ENV_WEIGHTS})") from e

    cached = default_cache_dir() / OFFICIAL_FILENAME
    if not cached.exists():
        if not allow_download:
            raise WeightsUnavailable(f"no DINO ViT-S/8 weights: {cached} does not exist and downloading is "
                                     "disabled; " + _how_to_supply(cached, url)
                                     + " (or 'random' for plumbing tests only)")
        _log.info("downloading DINO ViT-S/8 weights from %s to %s", url, cached)
        download(url, cached, expected_size=OFFICIAL_SIZE, expected_sha256=OFFICIAL_SHA256, progress=progress)
    sd, ident = load_checkpoint(cached)
    if ident.kind != "official":
        warnings.warn(f"{cached}: sha256 {ident.sha256} differs from the official {OFFICIAL_SHA256}; "
                      f"using it as {ident.label}", stacklevel=2)
    return sd, ident
