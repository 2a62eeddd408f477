"""Capture sources on real files: DICOM written with pydicom, videos with PyAV, devices as cv2.VideoCapture on files."""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    JPEGBaseline8Bit,
    MPEG4HP41,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from pipeline.capture.dicom import DicomSource
from pipeline.capture.frame import SourceError, to_uint8
from pipeline.capture.images import ImageSource
from pipeline.capture.live import LiveConfig, LiveReplay, LiveSource, Mailbox
from pipeline.capture.open import open_source, open_sources, sample_frames
from pipeline.capture.pacing import PacedSource, paced
from pipeline.capture.synthetic import PhantomSource
from pipeline.capture.video import VideoSource

H, W = 64, 80


def smooth_frames(n: int, channels: int = 0, seed: int = 0) -> np.ndarray:
    """n smooth uint8 frames (JPEG keeps them close), gray or with ``channels`` colour channels."""
    rng = np.random.default_rng(seed)
    shape = (H // 8, W // 8, channels) if channels else (H // 8, W // 8)
    coarse = [rng.uniform(30, 220, shape).astype(np.float32) for _ in range(n)]
    return np.clip([cv2.resize(c, (W, H), interpolation=cv2.INTER_CUBIC) for c in coarse], 0, 255).astype(np.uint8)


def dicom_dataset(syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    return ds


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8, **elements) -> Path:
    ds = dicom_dataset()
    ds.set_pixel_data(pixels, photometric, bits)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg_dicom(path: Path, frames: np.ndarray, syntax: str = JPEGBaseline8Bit, **elements) -> Path:
    """Frames JPEG-encoded by OpenCV and encapsulated (pylibjpeg decodes but does not encode JPEG)."""
    colour = frames.ndim == 4
    ds = dicom_dataset(syntax)
    encoded = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR) if colour else f)[1].tobytes() for f in frames]
    ds.PixelData = encapsulate(encoded, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.Rows, ds.Columns, ds.NumberOfFrames = H, W, len(frames)
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"  # what lossy JPEG colour is stored as
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_video(
    path: Path, n: int, size: tuple[int, int] = (H, W), *, codec: str = "mpeg4", fps: int = 25, pix_fmt: str = "yuv420p"
) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = pix_fmt
        for i in range(n):
            rgb = np.full((*size, 3), (i * 20) % 256, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


# ---------------------------------------------------------------- DICOM


def test_dicom_uncompressed_cine(tmp_path):
    frames = smooth_frames(12)
    source = open_source(write_dicom(tmp_path / "cine.dcm", frames, FrameTime=50))
    assert isinstance(source, DicomSource) and not source.live
    assert (source.fps, source.count) == (20.0, 12)
    got = list(source)
    assert [f.id for f in got] == list(range(12))
    assert [f.source_ts for f in got] == pytest.approx([i * 0.05 for i in range(12)])
    assert all(f.image.dtype == np.uint8 and np.array_equal(f.image, o) for f, o in zip(got, frames))
    assert got[3].name == "cine_000003"


def test_dicom_jpeg_baseline_gray_and_colour(tmp_path):
    gray, rgb = smooth_frames(4), smooth_frames(3, channels=3, seed=1)
    got = list(DicomSource(write_jpeg_dicom(tmp_path / "gray.dcm", gray, CineRate=30)))
    assert [f.image.shape for f in got] == [(H, W)] * 4
    assert max(mean_error(f.image, o) for f, o in zip(got, gray)) < 3
    source = DicomSource(write_jpeg_dicom(tmp_path / "colour.dcm", rgb))
    assert source.photometric == "YBR_FULL_422" and source.fps == 20.0  # no timing in the file: the fallback
    got = list(source)
    assert [f.image.shape for f in got] == [(H, W, 3)] * 3  # iter_pixels converted YCbCr to RGB
    assert max(mean_error(f.image, o) for f, o in zip(got, rgb)) < 4


def test_dicom_photometrics(tmp_path):
    gray, rgb = smooth_frames(2), smooth_frames(2, channels=3)
    mono1 = list(DicomSource(write_dicom(tmp_path / "m1.dcm", gray, "MONOCHROME1")))
    assert all(np.array_equal(f.image, 255 - o) for f, o in zip(mono1, gray))
    plain = list(DicomSource(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")))
    assert all(np.array_equal(f.image, o) for f, o in zip(plain, rgb))
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    full = list(DicomSource(write_dicom(tmp_path / "ybr_full.dcm", ybr, "YBR_FULL")))
    assert all(mean_error(f.image, o) < 1 for f, o in zip(full, rgb))
    sub = list(DicomSource(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL_422")))  # chroma subsampled 2:1
    assert all(f.image.shape == (H, W, 3) and mean_error(f.image, o) < 6 for f, o in zip(sub, rgb))


def test_dicom_palette_colour(tmp_path):
    index = smooth_frames(2)
    lut = np.arange(256)
    tables = {"Red": lut, "Green": 255 - lut, "Blue": lut // 2}
    elements = {}
    for colour, table in tables.items():
        elements[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        elements[f"{colour}PaletteColorLookupTableData"] = (table * 257).astype("<u2").tobytes()  # 16-bit entries
    got = list(DicomSource(write_dicom(tmp_path / "pal.dcm", index, "PALETTE COLOR", **elements)))
    expected = np.stack([tables[c][index[1]] for c in ("Red", "Green", "Blue")], axis=-1)
    assert got[1].image.dtype == np.uint8 and np.abs(got[1].image.astype(int) - expected).max() <= 1


def test_dicom_16_bit_scaled_once_with_warning(tmp_path, caplog):
    deep = (smooth_frames(3).astype(np.uint16) * 16)  # 12-bit values
    with caplog.at_level(logging.WARNING, logger="pipeline.capture.frame"):
        got = list(DicomSource(write_dicom(tmp_path / "deep.dcm", deep, bits=12)))
    assert all(f.image.dtype == np.uint8 and mean_error(f.image, o // 16) <= 1 for f, o in zip(got, deep))
    assert len([r for r in caplog.records if "12-bit" in r.message]) == 1  # once per file, not per frame
    windowed = list(DicomSource(write_dicom(tmp_path / "win.dcm", deep, bits=12, WindowCenter=2048, WindowWidth=1024)))
    assert windowed[0].image[deep[0] <= 1535].max() == 0 and windowed[0].image[deep[0] >= 2560].min() == 255


def test_dicom_single_frame_and_frame_time_vector(tmp_path):
    single = DicomSource(write_dicom(tmp_path / "one.dcm", smooth_frames(1)[0]))
    assert single.count == 1 and [f.source_ts for f in single] == [0.0]
    vector = DicomSource(write_dicom(tmp_path / "vec.dcm", smooth_frames(3), FrameTimeVector=[0, 20, 200]))
    assert [f.source_ts for f in vector] == pytest.approx([0.0, 0.02, 0.22])
    assert vector.fps == pytest.approx(2 / 0.22)
    # a vector that is not a time line (overflowing, backwards, longer than a day) is ignored, and so is an absurd rate
    for bad in ([0, 1e308, 1e308], [0, 20, -50], [0, 100, 3_600_000 * 25]):
        frames = list(DicomSource(write_dicom(tmp_path / "bad.dcm", smooth_frames(3), FrameTimeVector=bad), fps=10))
        assert [f.source_ts for f in frames] == pytest.approx([0.0, 0.1, 0.2])
    fast = DicomSource(write_dicom(tmp_path / "fast.dcm", smooth_frames(3), FrameTime=1e-9), fps=10)
    assert fast.fps == 10


def test_dicom_errors_name_file_and_field(tmp_path):
    (tmp_path / "notes.dcm").write_text("not dicom at all")
    with pytest.raises(SourceError, match=r"notes\.dcm: not a DICOM file"):
        open_source(tmp_path / "notes.dcm")
    ds = dicom_dataset()
    ds.PatientName = "Anon"
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(SourceError, match=r"nopix\.dcm: no PixelData"):
        DicomSource(tmp_path / "nopix.dcm")
    if not get_decoder(HTJ2K).is_available:  # pylibjpeg-openjpeg is not a dependency
        with pytest.raises(SourceError, match=r"htj2k\.dcm: transfer syntax High-Throughput JPEG 2000.*openjpeg"):
            DicomSource(write_jpeg_dicom(tmp_path / "htj2k.dcm", smooth_frames(1), syntax=HTJ2K))
    with pytest.raises(SourceError, match=r"mpeg\.dcm: transfer syntax MPEG-4 AVC.*no pydicom decoder"):
        DicomSource(write_jpeg_dicom(tmp_path / "mpeg.dcm", smooth_frames(1), syntax=MPEG4HP41))


def test_dicom_corrupt_frame_is_named(tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", smooth_frames(6))
    path.write_bytes(path.read_bytes()[: -H * W * 2 - 10])  # last 2 frames and a bit gone
    source = DicomSource(path)
    with pytest.raises(SourceError, match=r"cut\.dcm: corrupt pixel data at frame 3"):
        list(source)


def test_dicom_found_by_preamble_without_suffix(tmp_path):
    path = write_dicom(tmp_path / "exam.dcm", smooth_frames(2))
    path.rename(tmp_path / "EXAM0001")
    assert isinstance(open_source(tmp_path / "EXAM0001"), DicomSource)


# ---------------------------------------------------------------- video


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_video_containers_decode(tmp_path, suffix):
    source = open_source(write_video(tmp_path / f"clip{suffix}", 10))
    assert isinstance(source, VideoSource) and source.fps == 25
    got = list(source)
    assert len(got) == 10 and got[0].image.shape == (H, W)
    assert [f.source_ts for f in got] == pytest.approx([i / 25 for i in range(10)])


def test_video_size_or_format_change_mid_stream(tmp_path):
    # MPEG program streams concatenate byte-wise; the decoder follows the new sequence header.
    first = write_video(tmp_path / "a.mpg", 5, codec="mpeg2video").read_bytes()
    for name, second in (("size", dict(size=(96, 128))), ("format", dict(pix_fmt="yuv422p"))):
        tail = write_video(tmp_path / f"{name}2.mpg", 5, codec="mpeg2video", **second).read_bytes()
        (tmp_path / f"{name}.mpg").write_bytes(first + tail)
        with pytest.raises(SourceError, match=rf"{name}\.mpg: frame \d+ is .*but the stream began 80x64 yuv420p"):
            list(VideoSource(tmp_path / f"{name}.mpg"))


def test_video_bad_files(tmp_path):
    mp4 = write_video(tmp_path / "good.mp4", 30).read_bytes()
    mkv = write_video(tmp_path / "good.mkv", 30).read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    (tmp_path / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])
    avi = write_video(tmp_path / "codec.avi", 3).read_bytes()
    (tmp_path / "codec.avi").write_bytes(avi.replace(b"FMP4", b"ZZZZ"))  # a FourCC no decoder knows
    with av.open(str(tmp_path / "audio.mkv"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    for name in ("empty.mp4", "garbage.mp4", "cut.mp4", "codec.avi", "audio.mkv", "missing.mp4"):
        with pytest.raises(SourceError, match=rf"{name}: "):
            list(VideoSource(tmp_path / name))
    with pytest.raises(SourceError, match=r"cut\.mkv: ended at frame \d+ of 30 \(truncated"):
        list(VideoSource(tmp_path / "cut.mkv"))


# ---------------------------------------------------------------- images


def write_palette_png(path: Path, index: np.ndarray, palette: np.ndarray) -> Path:
    """A colour-type-3 PNG, written by hand (OpenCV writes no palette PNGs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.tobytes() for row in index)
    header = struct.pack(">IIBBBBB", index.shape[1], index.shape[0], 8, 3, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    body += chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def test_images_palette_and_16_bit_png(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [10, 20, 30]])
    index = np.array([[0, 1], [2, 3]], np.uint8)
    write_palette_png(tmp_path / "pal.png", index, palette)
    (frame,) = ImageSource([tmp_path / "pal.png"])
    assert np.array_equal(frame.image, palette[index])  # RGB, in palette order
    deep = np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    (frame,) = ImageSource([tmp_path / "deep.png"])
    assert frame.image.dtype == np.uint8 and frame.image.tolist() == [[0, 255], [100, 200]]


def test_images_of_mixed_sizes_fail_naming_file_and_sizes(tmp_path):
    for name, shape in (("a", (H, W)), ("b", (H, W)), ("c", (W, H))):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.zeros(shape, np.uint8))
    frames = iter(ImageSource([tmp_path]))
    assert next(frames).id == 0 and next(frames).id == 1
    with pytest.raises(SourceError, match=r"c\.png: 64x80 pixels, but .*a\.png is 80x64"):
        next(frames)


def test_to_uint8_scales_bits_and_window():
    assert to_uint8(np.array([0, 2048, 4095], np.uint16), "t", bits=12).tolist() == [0, 128, 255]
    assert to_uint8(np.array([-32768, 32767], np.int16), "t").tolist() == [0, 255]
    assert to_uint8(np.array([0, 100, 200], np.uint16), "t", window=(100.5, 101)).tolist() == [0, 128, 255]


# ---------------------------------------------------------------- live


def file_capture(path: Path, fail_first: int = 0):
    """A device factory over a real video file: its first ``fail_first`` opens fail, the file's end is the
    device vanishing (the next open reopens it)."""
    opens = itertools.count()

    def open_capture() -> cv2.VideoCapture:
        return cv2.VideoCapture(str(path) if next(opens) >= fail_first else str(path.with_name("absent.mp4")))

    return open_capture


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("live") / "device.mp4", 20)


def test_live_slow_consumer_drops_and_ids_increase(clip):
    config = LiveConfig(backoff_s=0.01, backoff_max_s=0.05)
    with LiveSource("usb-grabber", open_capture=file_capture(clip), config=config) as source:
        assert source.live and source.count is None
        got = []
        for frame in source:
            got.append(frame)
            time.sleep(0.02)  # slower than a file "device" delivers
            if len(got) == 8:
                break
        assert got[0].image.shape == (H, W, 3)
        ids = [f.id for f in got]
        assert ids == sorted(set(ids)) and source.dropped > 0
        assert source.dropped >= ids[-1] - len(ids) + 1  # every id the consumer never saw was counted
        assert source.reconnects >= 1 and len(source.gaps) == source.reconnects  # the 20-frame file ended
        assert all(start <= end for start, end in source.gaps)


def test_live_reconnects_after_failed_opens_and_closes_promptly(clip):
    config = LiveConfig(backoff_s=0.02, backoff_max_s=0.05)
    source = LiveSource("usb-grabber", open_capture=file_capture(clip, fail_first=2), config=config)
    started = time.monotonic()
    first = next(iter(source))
    assert first.id == 0 and source.reconnects >= 1
    (gap_start, gap_end) = source.gaps[0]
    assert started <= gap_start < gap_end and gap_end - gap_start >= 0.02 + 0.04 - 0.01  # two backoff waits
    t0 = time.monotonic()
    source.close()
    assert time.monotonic() - t0 < 1.0 and not source._thread.is_alive()


def test_live_gives_up_naming_the_device(tmp_path):
    never = file_capture(tmp_path / "absent.mp4", fail_first=10**6)
    source = LiveSource("/dev/video7", open_capture=never, config=LiveConfig(backoff_s=0.02, max_reconnect_s=0.15))
    with pytest.raises(SourceError, match=r"/dev/video7: no frames for"):
        next(iter(source))


def test_live_phantom_drops_for_a_slow_consumer():
    source = open_source("phantom:12", fps=50.0, live=True)
    assert isinstance(source, LiveReplay) and isinstance(source.source, PhantomSource) and source.live
    ids = []
    for frame in source:
        ids.append(frame.id)
        time.sleep(0.05)  # 20 fps consumer of a 50 fps stream
    assert ids == sorted(set(ids)) and ids[-1] == 11 and len(ids) < 12
    assert source.dropped == 12 - len(ids)  # ids are phantom indices, so truth(id) still applies


def test_mailbox_keeps_newest_and_hands_over_errors():
    box: Mailbox[int] = Mailbox()
    for i in range(3):
        box.put(i)
    assert box.take() == 2 and box.dropped == 2
    box.put(3)
    box.finish(RuntimeError("device lost"))
    assert box.take() == 3
    with pytest.raises(RuntimeError, match="device lost"):
        box.take()


def test_open_source_dispatch_for_devices(tmp_path):
    assert isinstance(open_source("0"), LiveSource)  # opened only when iterated
    with pytest.raises(SourceError, match=r"/dev/video99: no such capture device"):
        open_source("/dev/video99")
    with pytest.raises(SourceError, match="always live"):
        open_source("0", live=False)
    if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        with pytest.raises(SourceError, match="no GStreamer backend"):
            open_source("videotestsrc ! appsink")
    dcm = write_dicom(tmp_path / "x.dcm", smooth_frames(2))
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.zeros((H, W), np.uint8))
    sources = open_sources([tmp_path / "a.png", tmp_path / "b.png", dcm, "phantom:2"])
    assert [type(s) for s in sources] == [ImageSource, DicomSource, PhantomSource] and sources[0].count == 2


def test_sample_frames_from_a_live_source_takes_the_next_frames():
    frames = sample_frames([open_source("phantom:40", fps=200.0, live=True)], 3)
    assert len(frames) == 3 and [f.id for f in frames] == sorted({f.id for f in frames})


# ---------------------------------------------------------------- pacing


def timed(source) -> tuple[list, float]:
    t0 = time.monotonic()
    frames = list(source)
    return frames, time.monotonic() - t0


def test_pacing_realtime_fixed_and_max(tmp_path):
    dcm = write_dicom(tmp_path / "twenty.dcm", smooth_frames(10), FrameTime=50)  # 20 fps, 9 intervals: 0.45 s
    frames, realtime = timed(PacedSource(DicomSource(dcm), "realtime"))
    # pacing only ever waits: lower bounds are exact, upper bounds are generous for a loaded 2-core machine
    assert 0.44 <= realtime <= 5.0 and [f.id for f in frames] == list(range(10))
    release = [f.capture_ns for f in frames]
    assert all((b - a) / 1e9 >= 0.045 for a, b in zip(release, release[1:]))  # stamped after each sleep
    _, fixed = timed(PacedSource(DicomSource(dcm), 100.0))
    assert 0.089 <= fixed <= 5.0
    _, fastest = timed(PacedSource(DicomSource(dcm), "max"))
    assert fastest < realtime / 2
    source = DicomSource(dcm)
    assert paced(source, "max") is source


def test_pacing_realtime_honours_timestamp_gaps(tmp_path):
    dcm = write_dicom(tmp_path / "gap.dcm", smooth_frames(3), FrameTimeVector=[0, 20, 200])
    _, took = timed(PacedSource(DicomSource(dcm), "realtime"))
    assert 0.2 <= took <= 0.5


def test_pacing_loop_continues_ids_and_timestamps():
    looped = PacedSource(open_source("phantom:4", fps=100.0), "max", loop=True)
    assert looped.count is None
    frames = list(itertools.islice(looped, 10))
    assert [f.id for f in frames] == list(range(10))
    assert [f.source_ts for f in frames] == pytest.approx([i / 100 for i in range(10)])
    assert len({f.name for f in frames}) == 10 and frames[5].name == "phantom_00001_loop1"


def test_pacing_close_wakes_a_sleeping_replay(tmp_path):
    dcm = write_dicom(tmp_path / "slow.dcm", smooth_frames(3), FrameTime=5000)
    source = PacedSource(DicomSource(dcm), "realtime")
    frames = iter(source)
    next(frames)
    threading.Timer(0.05, source.close).start()
    t0 = time.monotonic()
    assert list(frames) == [] and time.monotonic() - t0 < 1.0


def test_pacing_refuses_bad_pace_and_live_sources():
    with pytest.raises(ValueError, match="pace must be"):
        PacedSource(open_source("phantom:2"), "slow")
    with pytest.raises(SourceError, match="pacing is for replay"):
        PacedSource(open_source("phantom:2", live=True), "realtime")


def test_video_whose_audio_outlasts_it_is_read_to_its_end(tmp_path):
    """The container's duration is the audio's (3 s): the 1 s of video is complete, not a truncated file."""
    path = tmp_path / "with_audio.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        for i in range(10):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        for k in range(8000 * 3 // 1024):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 8000, k * 1024
            for packet in audio.encode(samples):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    frames = list(VideoSource(path))
    assert [f.id for f in frames] == list(range(10)) and frames[0].image.shape == (48, 64)


def test_dicom_headers_are_checked_against_the_pixel_data(tmp_path):
    """A lying header is one line naming the file and the field, at open: nothing is sized by a claimed count."""
    cases = {
        "billion.dcm": ({"NumberOfFrames": 10**9}, r"NumberOfFrames \(0028,0008\) says 1000000000 frames .* holds 3"),
        "wide.dcm": ({"Columns": 60000}, r"Columns \(0028,0011\) 60000 is out of range"),
        "samples.dcm": ({"SamplesPerPixel": 3}, r"SamplesPerPixel \(0028,0002\) 3 is out of range \(1\.\.1\)"),
        "bits.dcm": ({"BitsAllocated": 12}, r"BitsAllocated \(0028,0100\) 12 is not 8, 16 or 32"),
        "rows.dcm": ({"Rows": "many"}, r"Rows \(0028,0010\) 'many' is not an integer"),
    }
    for name, (elements, message) in cases.items():
        path = write_dicom(tmp_path / name, smooth_frames(3))
        ds = pydicom.dcmread(path)
        for keyword, value in elements.items():
            if isinstance(value, str):
                ds[keyword].VR, ds[keyword].value = "LO", value  # a text where a number belongs
            else:
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
        with pytest.raises(SourceError, match=rf"{name}: {message}"):
            DicomSource(path)


def test_dicom_garbage_window_is_ignored_and_deflate_is_read(tmp_path):
    path = write_dicom(tmp_path / "window.dcm", smooth_frames(2), WindowCenter="1e999", WindowWidth="nan")
    assert [f.image.shape for f in DicomSource(path)] == [(H, W)] * 2
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", smooth_frames(3)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    frames = list(DicomSource(tmp_path / "deflated.dcm"))
    assert [f.id for f in frames] == [0, 1, 2]
    np.testing.assert_array_equal(frames[1].image, smooth_frames(3)[1])


def test_output_names_are_distinct_and_never_paths(tmp_path):
    from pipeline.capture.frame import distinct_names
    from pipeline.capture.open import open_sources

    assert distinct_names([Path("/tmp/x/a.png"), Path("/tmp/x/a.jpg")]) == ["a", "a_2"]  # same folder: numbered, no root
    assert distinct_names([Path("/s1/IM_0001"), Path("/s2/IM_0001")]) == ["s1_IM_0001", "s2_IM_0001"]
    assert distinct_names([Path("x/a.png"), Path("x/a.jpg"), Path("x_a_2.png")]) == ["a", "a_2", "x_a_2"]
    assert distinct_names([Path("a.png"), Path("a.png"), Path("a_2.png")]) == ["a", "a_3", "a_2"]
    for folder in ("left", "right"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "frame.png"), np.zeros((8, 8), np.uint8))
    sources = open_sources([tmp_path / "left", "phantom:2", tmp_path / "right"])  # image groups split by another source
    names = [f.name for s in sources for f in s]
    assert len(names) == len(set(names)) and "left_frame" in names and "right_frame" in names


def test_single_frame_dicom_with_number_of_frames_zero_is_read(tmp_path):
    path = write_dicom(tmp_path / "zero.dcm", smooth_frames(1))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 0
    ds.save_as(path, enforce_file_format=True)
    assert [f.id for f in DicomSource(path)] == [0]


def test_live_loop_replays_past_the_end():
    """``run --live --loop``: a replay played as a device starts over at its end (ids keep increasing)."""
    source = open_source("phantom:4", fps=100.0, live=True, loop=True)
    ids: list[int] = []
    try:
        for frame in source:
            ids.append(frame.id)
            if len(ids) >= 6:
                break
    finally:
        source.close()
    assert len(ids) == 6 and max(ids) >= 4 and ids == sorted(ids)
