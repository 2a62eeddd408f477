"""The GPU-resident frame path, checked on the CPU: one device per engine (``meta`` stands in for a GPU: any tensor
left on the CPU beside it fails), engines that share nothing and change nothing they were handed, the uint8-in
graph equal to the unfused fp32 path on real frames, the device-side mask and overlay, device tensors in and out
of the predictor, and outputs that never hold up inference or each other."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import cv2
import numpy as np
import pytest
import torch

from calibration.calibrate import CalibrationSettings, calibrate, key_batches
from calibration.clustering import KMeansSettings
from models.encoder import build_encoder
from models.errors import FrameError
from models.preprocess import HOST_RESAMPLING, Geometry
from pipeline.capture.frame import Frame, Source, now_ns
from pipeline.infer.backend import TorchBackend
from pipeline.infer.cache import EngineCache
from pipeline.infer.deployment import Deployment
from pipeline.infer.graph import engine_module, model_input
from pipeline.infer.select import BackendSpec, make_backend
from pipeline.publish.encode import encode_jpeg, encode_jpegs, encode_prediction, encode_predictions, warm_encoder
from pipeline.publish.message import FrameMessage, decode
from pipeline.handoff import SinkWorker, StopClock
from pipeline.run import Pipeline, Result, RunConfig
from pipeline.segment.render import BONE_RGB, build_renderer, overlay_table
from pipeline.segment.segmenter import BoneSegmenter

SIZE = (40, 48)


@pytest.fixture(scope="module")
def deployment(model) -> Deployment:
    centroids = torch.nn.functional.normalize(torch.randn(4, 384, generator=torch.Generator().manual_seed(1)), dim=1).numpy()
    geometry = Geometry.fit((60, 70), roi=(4, 6, 50, 60), input_size=SIZE, resampling="area")
    return Deployment(model, geometry, centroids, (1, 3), "random:0", "test-reference")


def tensors_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def fingerprint(module: torch.nn.Module) -> dict[str, tuple]:
    """Device, dtype, storage and a checksum of every parameter and buffer: what an engine must not change."""
    return {name: (t.device, t.dtype, t.data_ptr(), float(t.double().sum())) for name, t in module.state_dict().items()}


def test_every_builder_puts_model_and_inputs_on_one_device(model, deployment) -> None:
    """On ``meta`` any weight, buffer or input left on the CPU is an error at the first op: every path that builds
    for a device (calibration's encoder, each engine, the input step, the renderer, the predictor) builds there."""
    g = deployment.geometry
    planes = torch.zeros((2, *g.plane_size), dtype=torch.uint8, device="meta")
    encoder = build_encoder(model, g, "meta")
    assert {t.device.type for t in tensors_of(encoder)} == {"meta"} and encoder(planes).keys.device.type == "meta"
    for engine in (engine_module(deployment, "fp32", "fused", "meta"), engine_module(deployment, "bf16", "keys", "meta")):
        assert {t.device.type for t in tensors_of(engine)} == {"meta"}
        assert [o.device.type for o in engine(planes)] == ["meta"] * len(engine(planes))
    assert model_input(deployment, "meta")(planes).device.type == "meta"
    frames = torch.zeros((2, *g.frame_size), dtype=torch.uint8, device="meta")
    renderer = build_renderer(g, "stamp", "meta")
    mask, overlay = renderer(torch.zeros((2, *g.grid), dtype=torch.uint8, device="meta"), frames)
    assert mask.device.type == overlay.device.type == "meta" and overlay.shape == (2, *g.frame_size, 3)
    # calibration: the frames go to the device the encoder is built on
    images = [np.zeros(g.frame_size, np.uint8)] * 3
    outs = list(key_batches(model, g, images, ["a", "b", "c"], batch_size=2, progress=False, device="meta"))
    assert [o.keys.device.type for o in outs] == ["meta", "meta"] and outs[0].attention.device.type == "meta"
    # a backend built and made ready (its warm-up pass) on the device
    backend = TorchBackend(deployment, "meta", "bf16", 2)
    assert backend.staging.input.device.type == "meta"
    assert all(o.device.type == "meta" for o in backend.compute(backend.staging.input))
    assert next(p for p in model.parameters()).device.type == "cpu"  # the loaded model stayed where it was


def test_engines_from_one_deployment_share_no_storage_and_leave_it_untouched(model, deployment, tmp_path) -> None:
    before = fingerprint(model)
    cache = EngineCache(tmp_path)
    built = [make_backend(BackendSpec(name, "cpu", precision, batch), deployment, cache)
             for name, precision, batch in (("torch", "fp32", 1), ("torch", "bf16", 2), ("onnxruntime", "fp32", 1))]
    engines = [engine_module(deployment, "fp32", "fused", "cpu"), engine_module(deployment, "fp32", "fused", "cpu")]
    engines += [b.compute for b in built if isinstance(b.compute, torch.nn.Module)]
    assert len(engines) == 4
    storages = [{t.untyped_storage().data_ptr() for t in tensors_of(e)} for e in engines]
    source = {t.untyped_storage().data_ptr() for t in tensors_of(model)}
    for i, a in enumerate(storages):
        assert not a & source
        for b in storages[i + 1 :]:
            assert not a & b  # nothing shared: one engine's dtype or device can never change another's
    assert fingerprint(model) == before  # no backend moved, cast or changed the model it was handed
    planes = np.random.default_rng(0).integers(0, 256, (2, *deployment.geometry.plane_size), dtype=np.uint8)
    first = built[0](planes)[0]
    built[1](planes)  # running a bf16 engine after building it changes nothing for the fp32 one
    np.testing.assert_array_equal(built[0](planes)[0], first)


def unfused_keys(model, geometry: Geometry, images: list[np.ndarray]) -> torch.Tensor:
    """The former fp32 path, written out: the host resize of the gray ROI, /255, ImageNet normalisation of the gray
    replicated to three channels on the host, then the plain DinoViT."""
    top, left, h, w = geometry.roi
    mean = np.asarray(geometry.mean, np.float32)[:, None, None]
    std = np.asarray(geometry.std, np.float32)[:, None, None]
    batch = []
    for image in images:
        roi = image[top : top + h, left : left + w]
        resized = HOST_RESAMPLING[geometry.resampling](roi, geometry.input_size).astype(np.float32) / 255
        batch.append((resized[None] - mean) / std)
    with torch.inference_mode():
        return model(torch.from_numpy(np.stack(batch)), stride=geometry.stride).keys


def test_uint8_graph_labels_equal_the_unfused_fp32_path_on_real_frames(model, random_identity, ultrabones) -> None:
    paths = sorted((ultrabones / "sweep_frames").glob("*.png"))[::16][:5]
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    geometry = Geometry.fit(images[0].shape, short_side=96)  # the clip's aspect, lanczos as calibrated by default
    settings = CalibrationSettings(kmeans=KMeansSettings(k=6, sample_interval=1))
    ref = calibrate(model, random_identity, geometry, images, [p.stem for p in paths], settings, progress=False)
    labels, fg, _ = ref.labeller()(unfused_keys(model, geometry, images))
    np.testing.assert_array_equal(labels.numpy(), ref.calibration_labels)  # calibration ran the uint8 graph
    seg = BoneSegmenter(ref, TorchBackend(Deployment.from_reference(model, random_identity.label, ref)), random_identity)
    predictions = seg.predict(images)
    np.testing.assert_array_equal(np.stack([p.patch_mask for p in predictions]), fg.numpy())
    assert 0 < fg.float().mean() < 1 or len(ref.foreground) in (0, ref.k)


def test_renderer_mask_and_overlay(deployment) -> None:
    g = deployment.geometry
    renderer = build_renderer(g, "RANDOM", "cpu")
    patches = torch.zeros((1, *g.grid), dtype=torch.uint8)
    patches[0, 2:4, 3:6] = 1
    frames = torch.full((1, *g.frame_size), 100, dtype=torch.uint8)
    mask, overlay = renderer(patches, frames)
    mask, overlay = mask[0].numpy(), overlay[0].numpy()
    rows, cols = np.nonzero(mask)
    top, left, rh, rw = g.roi
    assert set(np.unique(mask)) == {0, 255} and rows.min() >= top and cols.min() >= left
    assert mask[:top].sum() == 0 and mask[:, :left].sum() == 0 and mask[top + rh :].sum() == 0  # zeros outside the ROI
    table = overlay_table()
    inside = overlay[rows.min() + 2, cols.min() + 2]
    np.testing.assert_array_equal(inside, table[256 + 100])  # bone: gray blended with amber
    np.testing.assert_array_equal(overlay[rows.min(), cols.min() + 3], BONE_RGB)  # the outline
    assert tuple(overlay[-1, -1]) == (100, 100, 100)  # background stays gray
    stamp = renderer.stamp.numpy()
    np.testing.assert_array_equal(overlay[: stamp.shape[0], : stamp.shape[1]], stamp)  # the random-weights stamp
    assert (stamp[..., 0] > 200).any()  # red text on it
    plain_mask, = build_renderer(g, None, "cpu")(patches)
    np.testing.assert_array_equal(plain_mask[0].numpy(), mask)


@pytest.fixture(scope="module")
def device_segmenter(model, random_identity) -> BoneSegmenter:
    rng = np.random.default_rng(3)
    images = [cv2.GaussianBlur(rng.integers(0, 255, (60, 70), dtype=np.uint8), (7, 7), 0) for _ in range(3)]
    geometry = Geometry.fit((60, 70), input_size=SIZE, resampling="bilinear-aa")
    ref = calibrate(model, random_identity, geometry, images, ["a", "b", "c"], CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=1)), progress=False)
    return BoneSegmenter(ref, TorchBackend(Deployment.from_reference(model, random_identity.label, ref), batch=2), random_identity)


def test_predictor_takes_device_tensors_and_returns_them(device_segmenter) -> None:
    seg = device_segmenter
    frames = np.random.default_rng(4).integers(0, 255, (3, 60, 70), dtype=np.uint8)
    host = seg.predict(list(frames), overlay=True)
    on_device = seg.predict(torch.from_numpy(frames), overlay=True, tensors=True)
    for h, d in zip(host, on_device):
        assert isinstance(d.mask, torch.Tensor) and d.mask.device == seg.device and d.overlay.shape == (60, 70, 3)
        np.testing.assert_array_equal(d.mask.numpy(), h.mask)
        np.testing.assert_array_equal(d.overlay.numpy(), h.overlay)
        np.testing.assert_array_equal(d.patch_mask.numpy(), h.patch_mask)
        assert d.foreground_fraction == pytest.approx(h.foreground_fraction) and d.confidence == pytest.approx(h.confidence)
    assert set(host[0].timings_ms) == {"prepare", "host_to_device", "model_labelling", "mask_overlay", "device_to_host"}
    kept = on_device[0].mask.clone()
    seg.predict(list(frames[::-1]), tensors=True)
    assert torch.equal(on_device[0].mask, kept)  # returned tensors are copies: the next call does not overwrite them
    with pytest.raises(FrameError, match="expected B x 60 x 70 uint8"):
        seg.predict(torch.zeros((1, 60, 71), dtype=torch.uint8))


def test_host_resampling_refuses_device_tensors(deployment, random_identity, model) -> None:
    images = [np.random.default_rng(i).integers(0, 255, (60, 70), dtype=np.uint8) for i in range(2)]
    ref = calibrate(model, random_identity, deployment.geometry, images, ["a", "b"], CalibrationSettings(kmeans=KMeansSettings(k=2, sample_interval=1)), progress=False)
    seg = BoneSegmenter(ref, TorchBackend(Deployment.from_reference(model, random_identity.label, ref)), random_identity)
    with pytest.raises(FrameError, match="resamples on the host"):
        seg.predict(torch.zeros((1, 60, 70), dtype=torch.uint8))


def test_an_encoded_overlay_is_sent_as_is(device_segmenter) -> None:
    prediction = device_segmenter.predict([np.full((60, 70), 80, np.uint8)], overlay=True, tensors=True)[0]
    jpeg = encode_prediction(prediction, jpeg=True, raw_overlay=False)
    assert isinstance(prediction.mask, np.ndarray) and prediction.overlay is None and jpeg[:2] == b"\xff\xd8"
    msg = FrameMessage("s", 0, prediction.mask, None, {"captured": 1, "inferred": 2, "labelled": 3}, (0, 0, 60, 70), (60, 70),
                       "r", "random:0", True, 0.0, 0.0, overlay_jpeg=jpeg)
    parts = msg.stamped().encode()
    assert parts[3] is jpeg  # encoded once upstream, never again per sender
    assert decode([bytes(p) for p in parts]).overlay.shape == (60, 70, 3)


class Frames(Source):
    name = "frames"

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[Frame]:
        rng = np.random.default_rng(5)
        for i in range(self.n):
            yield Frame(i, rng.integers(0, 255, (60, 70), dtype=np.uint8), f"f{i}", i / 20, now_ns())


class Sink:
    def __init__(self, name: str, delay_s: float, lossless: bool, overlay: str | None = "jpeg") -> None:
        self.name, self.delay_s, self.lossless, self.overlay = name, delay_s, lossless, overlay
        self.ids: list[int] = []
        self.jpegs: list[bytes | None] = []

    def write(self, result: Result) -> None:
        time.sleep(self.delay_s)
        self.ids.append(result.frame.id)
        self.jpegs.append(result.overlay_jpeg)

    def close(self) -> None:
        pass


def test_a_slow_output_delays_neither_inference_nor_the_others(device_segmenter) -> None:
    fast, slow = Sink("fast", 0.0, lossless=True), Sink("slow", 0.05, lossless=False)
    summary = Pipeline(Frames(30), device_segmenter, [fast, slow], RunConfig(output_queue=2)).run()
    assert fast.ids == list(range(30)) and summary.read == summary.processed == 30  # replay: the lossless output got all
    assert summary.outputs["slow"]["dropped"] > 0 and summary.outputs["fast"]["dropped"] == 0  # the lossy one dropped, counted
    assert sorted(slow.ids + summary.dropped_ids["output:slow"]) == list(range(30))  # every frame accounted for by id
    assert summary.published == 30 - summary.outputs["slow"]["dropped"]
    assert all(j is not None and j[:2] == b"\xff\xd8" for j in fast.jpegs)


class Stuck(Sink):
    """Takes ``delay_s`` per write and remembers whether it was closed under a write."""

    def __init__(self, delay_s: float) -> None:
        super().__init__("stuck", delay_s, lossless=True, overlay=None)
        self.writing = False
        self.closed_while_writing = False

    def write(self, result: Result) -> None:
        self.writing = True
        super().write(result)
        self.writing = False

    def close(self) -> None:
        self.closed_while_writing = self.writing


def test_a_dead_lossless_output_costs_one_timeout_and_every_frame_is_accounted_for(device_segmenter) -> None:
    stuck = Stuck(1.0)
    started = time.monotonic()
    summary = Pipeline(Frames(20), device_segmenter, [stuck], RunConfig(output_queue=1, output_timeout=0.3, close_timeout=0.5)).run()
    assert time.monotonic() - started < 10  # one 0.3 s wait, then its frames are dropped without waiting
    counts = summary.outputs["stuck"]
    assert summary.processed == 20 and counts["written"] + counts["dropped"] + counts["failed"] == 20
    assert sorted(stuck.ids + summary.dropped_ids["output:stuck"] + [int(e.split()[2].rstrip(":")) for e in summary.output_errors if e.startswith("stuck frame")]) == list(range(20))
    assert any("left open" in e for e in summary.output_errors) and not stuck.closed_while_writing
    assert summary.published == counts["written"]


def test_a_second_stop_aborts_without_waiting_for_outputs(device_segmenter) -> None:
    stuck = Stuck(0.5)
    pipeline = Pipeline(Frames(30), device_segmenter, [stuck], RunConfig(output_queue=2, output_timeout=60, close_timeout=60))
    stops = []

    def on_frame(result: Result) -> None:
        pipeline.stop()
        stops.append(result.frame.id)
        pipeline.stop()  # the second signal

    pipeline.on_result = on_frame
    started = time.monotonic()
    summary = pipeline.run()
    assert time.monotonic() - started < 15 and summary.interrupted  # neither 60 s timeout was waited for
    lost = [i for ids in summary.dropped_ids.values() for i in ids] + [int(e.split()[2].rstrip(":")) for e in summary.output_errors if e.startswith("stuck frame")]
    assert sorted(stuck.ids + lost) == sorted(set(stuck.ids + lost)) and len(stuck.ids + lost) == summary.read - len(summary.failed)


def test_predictor_edge_cases(device_segmenter, deployment) -> None:
    assert device_segmenter.predict([]) == []
    with pytest.raises(ValueError, match="fused engine"):
        BoneSegmenter(device_segmenter.reference, TorchBackend(deployment, outputs="keys"), device_segmenter.weights)
    pred = device_segmenter.predict(torch.zeros((1, 60, 70), dtype=torch.uint8), overlay=True, tensors=True)[0]
    pred.mask.zero_()  # ordinary tensors, not inference-mode ones: callers may write to them
    pred.patch_mask[0, 0] = True  # the bool patch mask too (it was made in inference mode)
    pred.overlay[..., 0] = 0
    assert deployment.key("onnx", outputs="fused", batch=1, precision="fp32", device="cpu").artifact.endswith("-v3")


def test_jpegs_encode_in_one_call(device_segmenter) -> None:
    images = [np.full((60, 70, 3), v, np.uint8) for v in (10, 200)]
    for image, jpeg in zip(images, encode_jpegs(images)):
        assert np.abs(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int) - image).max() <= 2
    warm_encoder(device_segmenter.device, (60, 70))  # nothing to create off CUDA
    frames = [np.full((60, 70), v, np.uint8) for v in (40, 160)]
    together = device_segmenter.predict(frames, overlay=True, tensors=True)
    alone = [device_segmenter.predict([f], overlay=True, tensors=True)[0] for f in frames]
    assert encode_predictions(together, jpeg=True, raw_overlay=False) == [encode_prediction(p, jpeg=True, raw_overlay=False) for p in alone]
    assert all(isinstance(p.mask, np.ndarray) and p.overlay is None for p in together)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_nvjpeg_reads_images_made_on_other_threads_streams() -> None:
    """Overlays written on two threads' own streams right before encoding decode to what was written (torchvision's
    shared encoder orders its work after its creation stream only)."""
    warm_encoder(torch.device("cuda"), (480, 640))
    errors: list[int] = []

    def probe(value: int) -> None:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(20):
                image = torch.empty((480, 640, 3), dtype=torch.uint8, device="cuda")
                torch.cuda._sleep(1_000_000)  # the write lands late on this stream
                image.fill_(value)
                ready = torch.cuda.Event()
                ready.record()
                decoded = cv2.imdecode(np.frombuffer(encode_jpeg(image, ready=ready), np.uint8), cv2.IMREAD_GRAYSCALE)
                errors.append(int(np.abs(decoded.astype(int) - value).max()))

    threads = [threading.Thread(target=probe, args=(v,)) for v in (30, 220)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 40 and max(errors) <= 3


class SlowSink:
    """Takes ``delay_s`` per write; remembers what it wrote and whether it was closed, and closed under a write."""

    name = "slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.ids: list[int] = []
        self.writing = self.closed = self.closed_while_writing = False

    def write(self, item: int) -> None:
        self.writing = True
        time.sleep(self.delay_s)
        self.ids.append(item)
        self.writing = False

    def close(self) -> None:
        self.closed, self.closed_while_writing = True, self.writing


def test_a_stop_drops_an_outputs_backlog_by_id_and_closes_it_after_the_frame_under_way() -> None:
    """A recorder behind by many frames when a signal comes: the stop takes about the grace, not its backlog; the
    frame it is writing finishes and the output is closed (a recording stays playable); the rest are dropped by id."""
    clock = StopClock(grace=0.5)
    sink = SlowSink(0.2)
    worker = SinkWorker(sink, capacity=64, lossless=True, frame_id=int, clock=clock)
    for i in range(40):  # 8 s of writing
        worker.submit(i)
    clock.stop()
    started = time.monotonic()
    errors = worker.close(timeout=60)
    assert time.monotonic() - started < 5  # the 0.5 s grace and the frame under way; generous for a loaded machine
    assert sink.closed and not sink.closed_while_writing
    assert sorted(sink.ids + list(worker.dropped)) == list(range(40)) and worker.written == len(sink.ids) and not worker.failed
    assert any("queued frames dropped" in e for e in errors)
