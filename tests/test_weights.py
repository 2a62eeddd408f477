"""Tests for models.weights: real files, a real local HTTP server, no mocks of torch or urllib."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest
import torch

from models import weights as W
from models.weights import WeightsError, WeightsIdentity, WeightsUnavailable


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sd1() -> dict[str, torch.Tensor]:
    return W.random_state_dict(1)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def ckpt_a(sd1, ckpt_dir) -> Path:
    """Official plain layout."""
    p = ckpt_dir / "a.pth"
    torch.save(sd1, p)
    return p


@pytest.fixture(scope="module")
def ckpt_b(sd1, ckpt_dir) -> Path:
    """Same tensors as a training checkpoint (teacher wrapper, prefixes, head): a different file hash."""
    p = ckpt_dir / "b.pth"
    teacher = {f"module.backbone.{k}": v for k, v in sd1.items()}
    teacher["module.head.last_layer.weight"] = torch.zeros(4, 3)
    torch.save({"teacher": teacher, "epoch": 3}, p)
    return p


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("BONESTREAM_WEIGHTS", raising=False)
    monkeypatch.setenv("BONESTREAM_CACHE", str(tmp_path / "cache"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (size checks) are expected here


@pytest.fixture
def http_files(tmp_path):
    """(base_url, served_dir, payload) for a ThreadingHTTPServer on 127.0.0.1 serving tmp files."""
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(300_000)
    (served / "w.pth").write_bytes(payload)
    server = _QuietServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, payload
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official -> Hugging Face ViTModel layout (as facebook/dino-vits8 stores it), with a pooler."""
    d = W.EMBED_DIM
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
        "pooler.dense.weight": torch.zeros(d, d),
        "pooler.dense.bias": torch.zeros(d),
    }
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for n in range(W.DEPTH):
        for leaf in ("weight", "bias"):
            for off, hf_name in names.items():
                hf[f"encoder.layer.{n}.{hf_name}.{leaf}"] = sd[f"blocks.{n}.{off}.{leaf}"]
            q, k, v = sd[f"blocks.{n}.attn.qkv.{leaf}"].chunk(3, 0)
            for part, t in (("query", q), ("key", k), ("value", v)):
                hf[f"encoder.layer.{n}.attention.attention.{part}.{leaf}"] = t.clone()
    return hf


def _assert_equal_sd(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == torch.float32
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- layout and random


def test_layout_has_official_shapes():
    layout = W.official_layout()
    assert len(layout) == 4 + 12 * W.DEPTH + 2
    assert layout["pos_embed"] == (1, 785, 384)
    assert layout["blocks.11.attn.qkv.weight"] == (1152, 384)
    assert layout["patch_embed.proj.weight"] == (384, 3, 8, 8)
    assert sum(torch.Size(s).numel() for s in layout.values()) == 21_670_272


def test_random_state_dict_layout_and_determinism(sd1):
    layout = W.official_layout()
    assert list(sd1) == list(layout)
    assert all(tuple(v.shape) == layout[k] and v.dtype == torch.float32 for k, v in sd1.items())
    _assert_equal_sd(W.random_state_dict(1), sd1)
    other = W.random_state_dict(2)
    assert not torch.equal(other["blocks.0.attn.qkv.weight"], sd1["blocks.0.attn.qkv.weight"])
    # DINO-like init
    assert torch.all(sd1["blocks.3.norm1.weight"] == 1) and torch.all(sd1["norm.bias"] == 0)
    assert torch.all(sd1["blocks.3.mlp.fc1.bias"] == 0)
    w = sd1["blocks.3.mlp.fc1.weight"]
    assert 0.015 < w.std().item() < 0.02 and w.abs().max().item() <= 0.04
    assert sd1["patch_embed.proj.weight"].abs().max().item() <= 1 / 192 ** 0.5


# --------------------------------------------------------------------------- normalize


def test_normalize_accepts_official_prefixes_and_wrappers(sd1):
    _assert_equal_sd(W.normalize_state_dict(sd1), sd1)
    for prefix in ("module.", "backbone.", "module.backbone."):
        _assert_equal_sd(W.normalize_state_dict({prefix + k: v for k, v in sd1.items()}), sd1)
    head = {"head.mlp.0.weight": torch.zeros(2, 2), "head.last_layer.weight_g": torch.zeros(1)}
    student = {k: torch.zeros_like(v) for k, v in sd1.items()}
    wrapped = {"student": student, "teacher": {**sd1, **head}, "epoch": 100}
    _assert_equal_sd(W.normalize_state_dict(wrapped), sd1)  # teacher preferred
    _assert_equal_sd(W.normalize_state_dict({"student": sd1}), sd1)
    _assert_equal_sd(W.normalize_state_dict({"state_dict": {"module." + k: v for k, v in sd1.items()}}), sd1)
    _assert_equal_sd(W.normalize_state_dict({"model": sd1}), sd1)


def test_normalize_converts_half_to_float32(sd1):
    out = W.normalize_state_dict({k: v.half() for k, v in sd1.items()})
    assert all(v.dtype == torch.float32 for v in out.values())


def test_normalize_hugging_face_roundtrip(sd1):
    hf = _to_hf(sd1)
    _assert_equal_sd(W.normalize_state_dict(hf), sd1)
    _assert_equal_sd(W.normalize_state_dict({"vit." + k: v for k, v in hf.items()}), sd1)


def test_normalize_hugging_face_qkv_order():
    hf = _to_hf(W.random_state_dict(3))
    d = W.EMBED_DIM
    for i, part in enumerate(("query", "key", "value")):
        hf[f"encoder.layer.5.attention.attention.{part}.weight"] = torch.full((d, d), float(i + 1))
        hf[f"encoder.layer.5.attention.attention.{part}.bias"] = torch.full((d,), float(i + 1))
    out = W.normalize_state_dict(hf)
    qkv_w, qkv_b = out["blocks.5.attn.qkv.weight"], out["blocks.5.attn.qkv.bias"]
    for i in range(3):
        assert torch.all(qkv_w[i * d:(i + 1) * d] == i + 1)
        assert torch.all(qkv_b[i * d:(i + 1) * d] == i + 1)


def test_normalize_rejects_missing_key(sd1):
    bad = dict(sd1)
    del bad["blocks.11.attn.qkv.weight"]
    with pytest.raises(WeightsError, match=r"my\.pth.*missing: blocks\.11\.attn\.qkv\.weight"):
        W.normalize_state_dict(bad, source="my.pth")


def test_normalize_rejects_wrong_shape(sd1):
    bad = {**sd1, "pos_embed": torch.zeros(1, 197, 384)}
    with pytest.raises(WeightsError) as e:
        W.normalize_state_dict(bad, source="vits16.pth")
    msg = str(e.value)
    assert "vits16.pth" in msg and "shape of pos_embed is (1, 197, 384), expected (1, 785, 384)" in msg


def test_normalize_rejects_unexpected_key_and_non_tensor(sd1):
    with pytest.raises(WeightsError, match=r"unexpected: blocks\.12\.norm1\.weight"):
        W.normalize_state_dict({**sd1, "blocks.12.norm1.weight": torch.ones(384)})
    with pytest.raises(WeightsError, match=r"non-tensor.*norm\.bias"):
        W.normalize_state_dict({**sd1, "norm.bias": [0.0] * 384})
    with pytest.raises(WeightsError, match="expected a state dict"):
        W.normalize_state_dict(torch.zeros(3))  # type: ignore[arg-type]


def test_normalize_lists_only_first_problems():
    expected = r"missing: cls_token, pos_embed, patch_embed\.proj\.weight \(\+\d+ more\)"
    with pytest.raises(WeightsError, match=expected):
        W.normalize_state_dict({}, source="empty")


# --------------------------------------------------------------------------- identity


def test_identity_labels_and_roundtrip():
    r = WeightsIdentity(kind="random", seed=7)
    assert r.label == "random:7" and r.is_random and "RANDOM WEIGHTS (seed 7)" in r.warning
    f = WeightsIdentity(kind="file", sha256="ab" * 32, path="/x.pth")
    o = WeightsIdentity(kind="official", sha256=W.OFFICIAL_SHA256)
    assert f.label == "sha256:" + "ab" * 32 and f.warning is None and not f.is_random
    for ident in (r, f, o):
        d = ident.to_dict()
        assert d["label"] == ident.label and d["warning"] == ident.warning
        assert WeightsIdentity.from_dict(d) == ident
    with pytest.raises(WeightsError):
        WeightsIdentity(kind="official", sha256="ab" * 32)
    with pytest.raises(WeightsError):
        WeightsIdentity.from_dict({**f.to_dict(), "label": "random:0"})


# --------------------------------------------------------------------------- load_checkpoint


def test_load_checkpoint_file_identity(ckpt_a, ckpt_b, sd1):
    sd, ident = W.load_checkpoint(ckpt_a)
    _assert_equal_sd(sd, sd1)
    assert ident.kind == "file" and ident.path == str(ckpt_a.resolve())
    assert ident.sha256 == hashlib.sha256(ckpt_a.read_bytes()).hexdigest() == W.file_sha256(ckpt_a)
    sd_b, ident_b = W.load_checkpoint(str(ckpt_b))
    _assert_equal_sd(sd_b, sd1)
    assert ident_b.sha256 != ident.sha256


def test_load_checkpoint_bad_files(tmp_path, ckpt_a):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(ckpt_a.read_bytes()[: 1_000_000])
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    missing = tmp_path / "nope.pth"
    for p in (empty, truncated, text, missing, tmp_path):
        with pytest.raises(WeightsError) as e:
            W.load_checkpoint(p)
        assert str(p) in str(e.value)
        assert type(e.value) is WeightsError


class _Evil:
    pass


def test_load_checkpoint_refuses_arbitrary_pickles(tmp_path, sd1):
    p = tmp_path / "pickled.pth"
    torch.save({"obj": _Evil(), **sd1}, p)
    with pytest.raises(WeightsError, match="weights_only") as e:
        W.load_checkpoint(p)
    assert str(p) in str(e.value) and e.value.__cause__ is not None


def test_load_checkpoint_wrong_model(tmp_path):
    p = tmp_path / "tiny.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 192)}, p)
    with pytest.raises(WeightsError, match=r"tiny\.pth.*shape of cls_token"):
        W.load_checkpoint(p)


# --------------------------------------------------------------------------- download


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_success(http_files, tmp_path):
    base, _, payload = http_files
    dest = tmp_path / "dl" / "sub" / "w.pth"
    got = W.download(f"{base}/w.pth", dest, expected_size=len(payload),
                     expected_sha256=hashlib.sha256(payload).hexdigest(), progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert _leftovers(dest.parent) == ["w.pth"]


def test_download_without_expectations(http_files, tmp_path):
    base, _, payload = http_files
    dest = tmp_path / "w.pth"
    W.download(f"{base}/w.pth", dest, expected_size=None, expected_sha256=None, progress=False)
    assert dest.read_bytes() == payload


@pytest.mark.parametrize("wrong", ["size", "sha"])
def test_download_mismatch_leaves_nothing(http_files, tmp_path, wrong):
    base, _, payload = http_files
    dest = tmp_path / "dl" / "w.pth"
    size = len(payload) + (1 if wrong == "size" else 0)
    sha = "0" * 64 if wrong == "sha" else hashlib.sha256(payload).hexdigest()
    with pytest.raises(WeightsError) as e:
        W.download(f"{base}/w.pth", dest, expected_size=size, expected_sha256=sha, progress=False)
    assert not isinstance(e.value, WeightsUnavailable)
    assert "expected" in str(e.value) and (str(size) if wrong == "size" else "0" * 64) in str(e.value)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_smaller_expected_size_stops(http_files, tmp_path):
    base, _, payload = http_files
    dest = tmp_path / "w.pth"
    with pytest.raises(WeightsError, match=str(len(payload) - 1)):
        W.download(f"{base}/w.pth", dest, expected_size=len(payload) - 1, expected_sha256=None,
                   progress=False)
    assert _leftovers(tmp_path) == ["served"]


def test_download_closed_port_is_unavailable(tmp_path):
    dest = tmp_path / "cache" / W.OFFICIAL_FILENAME
    url = f"http://127.0.0.1:{_closed_port()}/w.pth"
    with pytest.raises(WeightsUnavailable) as e:
        W.download(url, dest, expected_size=10, expected_sha256=None, timeout=5, progress=False)
    msg = str(e.value)
    assert str(dest) in msg and url in msg and "--weights" in msg and "BONESTREAM_WEIGHTS" in msg
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_http_404_is_unavailable(http_files, tmp_path):
    base, _, _ = http_files
    dest = tmp_path / "w.pth"
    with pytest.raises(WeightsUnavailable, match="404"):
        W.download(f"{base}/missing.pth", dest, expected_size=None, expected_sha256=None, progress=False)
    assert not dest.exists()


# --------------------------------------------------------------------------- resolve_weights


def test_default_cache_dir(monkeypatch, tmp_path):
    assert W.default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("BONESTREAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.default_cache_dir() == tmp_path / "xdg" / "bonestream"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert W.default_cache_dir() == Path.home() / ".cache" / "bonestream"


def test_resolve_explicit_path_beats_env(monkeypatch, ckpt_a):
    monkeypatch.setenv("BONESTREAM_WEIGHTS", "random:3")
    _, ident = W.resolve_weights(str(ckpt_a), allow_download=False)
    assert ident.kind == "file" and ident.path == str(ckpt_a.resolve())


def test_resolve_env_beats_cache(monkeypatch, tmp_path, ckpt_a, ckpt_b):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(ckpt_a, cache / W.OFFICIAL_FILENAME)
    monkeypatch.setenv("BONESTREAM_WEIGHTS", str(ckpt_b))
    _, ident = W.resolve_weights(allow_download=False)
    assert ident.sha256 == W.file_sha256(ckpt_b)
    monkeypatch.setenv("BONESTREAM_WEIGHTS", "random:4")
    _, ident = W.resolve_weights("official", allow_download=False)
    assert ident.label == "random:4"


def test_resolve_env_bad_path_names_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("BONESTREAM_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsError, match=r"gone\.pth.*BONESTREAM_WEIGHTS"):
        W.resolve_weights(allow_download=False)


def test_resolve_uses_cache(tmp_path, ckpt_b, sd1):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(ckpt_b, cache / W.OFFICIAL_FILENAME)
    with pytest.warns(UserWarning, match="differs from the official"):
        sd, ident = W.resolve_weights(allow_download=False)
    _assert_equal_sd(sd, sd1)
    assert ident.kind == "file" and ident.sha256 == W.file_sha256(ckpt_b)


def test_resolve_no_cache_no_download(tmp_path):
    with pytest.raises(WeightsUnavailable) as e:
        W.resolve_weights(allow_download=False)
    assert str(tmp_path / "cache" / W.OFFICIAL_FILENAME) in str(e.value)
    assert "--weights" in str(e.value)


def test_resolve_download_failure_is_unavailable(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/{W.OFFICIAL_FILENAME}"
    with pytest.raises(WeightsUnavailable) as e:
        W.resolve_weights(url=url, progress=False)
    dest = tmp_path / "cache" / W.OFFICIAL_FILENAME
    assert str(dest) in str(e.value) and not dest.exists()


def test_resolve_download_refuses_unofficial_bytes(http_files, tmp_path):
    base, _, _ = http_files
    with pytest.raises(WeightsError, match="expected 86728949"):
        W.resolve_weights(url=f"{base}/w.pth", progress=False)
    assert not (tmp_path / "cache" / W.OFFICIAL_FILENAME).exists()


def test_resolve_random(sd1):
    sd, ident = W.resolve_weights("random:1", allow_download=False)
    _assert_equal_sd(sd, sd1)
    assert ident.seed == 1 and ident.kind == "random"
    _, ident = W.resolve_weights("random:7")
    assert ident.seed == 7 and ident.label == "random:7" and "RANDOM WEIGHTS" in ident.warning
    _, ident = W.resolve_weights("random")
    assert ident.seed == 0
    for bad in ("random:x", "random:", "random:-1"):
        with pytest.raises(WeightsError, match="seed"):
            W.resolve_weights(bad)
