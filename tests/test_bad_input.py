"""Bad input through the CLI: one clear error naming the file, frame or field, exit code 2, no traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from pipeline.capture.phantom import PhantomConfig, write_phantom
from pipeline.cli import main

SMALL = ["--input-size", "32x40", "--k", "2", "--sample-interval", "1", "--weights", "random:0", "--no-progress"]


@pytest.fixture(scope="module")
def phantom_ref(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, 3, PhantomConfig(n_frames=3))
    ref = root / "ref.json"
    assert main(["calibrate", str(root / "images"), "--out", str(ref), *SMALL]) == 0
    return root / "images", ref


def fails(capsys, args: list[str], *needles: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    for needle in needles:
        assert needle in err, err
    return err


def segment(src: Path, ref: Path, out: Path) -> list[str]:
    return ["segment", str(src), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--no-progress"]


def _mp4(path: Path, frames: int = 8) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((256, 320), (20 * i) % 256, np.uint8), format="gray")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.mp4", b"", "empty.mp4"),
        ("garbage.mp4", b"this is not a video" * 100, "garbage.mp4"),
        ("noise.avi", bytes(range(256)) * 64, "noise.avi"),
    ],
)
def test_unreadable_videos(capsys, phantom_ref, tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    _, ref = phantom_ref
    (tmp_path / name).write_bytes(content)
    fails(capsys, segment(tmp_path / name, ref, tmp_path / "out"), needle)
    assert not (tmp_path / "out" / "summary.json").exists()  # nothing that looks complete


def test_truncated_video(capsys, phantom_ref, tmp_path: Path) -> None:
    _, ref = phantom_ref
    data = _mp4(tmp_path / "full.mp4", 30).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    fails(capsys, segment(tmp_path / "cut.mp4", ref, tmp_path / "out"), "cut.mp4")
    assert not (tmp_path / "out" / "summary.json").exists()
    assert not list((tmp_path / "out").glob("*.mp4*"))  # no complete-looking overlay video of half the frames


def test_frames_of_another_size(capsys, phantom_ref, tmp_path: Path) -> None:
    _, ref = phantom_ref
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((100, 120), np.uint8))
    fails(capsys, segment(tmp_path / "small.png", ref, tmp_path / "out"), "120x100", "recalibrate")


def test_folder_of_mixed_sizes(capsys, tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 80), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((70, 80), np.uint8))
    fails(capsys, ["calibrate", str(tmp_path), "--out", str(tmp_path / "r.json"), *SMALL], "b.png")
    assert not (tmp_path / "r.json").exists()


def test_image_that_is_not_an_image(capsys, phantom_ref, tmp_path: Path) -> None:
    _, ref = phantom_ref
    (tmp_path / "fake.png").write_text("hello")
    fails(capsys, segment(tmp_path / "fake.png", ref, tmp_path / "out"), "fake.png", "not a readable image")


def test_dicom_without_pixel_data(capsys, phantom_ref, tmp_path: Path) -> None:
    _, ref = phantom_ref
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    fails(capsys, ["run", str(path), "--reference", str(ref), "--weights", "random:0", "--no-publish", "--report", str(tmp_path / "r"), "--no-progress"], "cine.dcm", "PixelData")


@pytest.mark.parametrize("damage", ["truncate", "edit", "version", "not-json"])
def test_damaged_reference(capsys, phantom_ref, tmp_path: Path, damage: str) -> None:
    images, ref = phantom_ref
    bad = tmp_path / "bad.json"
    text = ref.read_text()
    doc = json.loads(text)
    if damage == "truncate":
        bad.write_text(text[: len(text) // 3])
    elif damage == "edit":
        doc["payload"]["foreground"] = [1]
        bad.write_text(json.dumps(doc))
    elif damage == "version":
        doc["version"] = 2
        bad.write_text(json.dumps(doc))
    else:
        bad.write_bytes(b"\x89PNG\r\n")
    fails(capsys, segment(images, bad, tmp_path / "out"), "bad.json")


def test_reference_for_other_weights(capsys, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    args = segment(images, ref, tmp_path / "out")
    args[args.index("random:0")] = "random:9"
    fails(capsys, args, "random:0", "random:9")


def _run(images: Path, ref: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["run", str(images), "--reference", str(ref), "--weights", "random:0", "--report", str(tmp_path / "r"), "--no-progress", *extra]


def test_invalid_zmq_address(capsys, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    fails(capsys, _run(images, ref, tmp_path, "--publish", "tcp://127.0.0.1:notaport"), "tcp://127.0.0.1:notaport")


def test_port_in_use(capsys, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        fails(capsys, _run(images, ref, tmp_path, "--publish", address), address)


def test_non_loopback_needs_encryption_or_insecure(capsys, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    fails(capsys, _run(images, ref, tmp_path, "--publish", "tcp://0.0.0.0:0"), "0.0.0.0", "--insecure")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "x.mp4", "--reference", "r.json", "--fps", "0"], "--fps: 0 is out of range: must be >= 0.01 and <= 1000"),
        (["calibrate", "x.png", "--out", "r.json", "--input-size", "100000x100000"], "--input-size: 100000 is out of range"),
        (["calibrate", "x.png", "--out", "r.json", "--input-size", "0x0"], "--input-size: 0 is out of range"),
        (["run", "x.mp4", "--reference", "r.json", "--pace", "-3"], "--pace: '-3': realtime, max or frames per second"),
        (["run", "x.mp4", "--reference", "r.json", "--queue-size", "0"], "--queue-size: 0 is out of range: must be >= 1"),
        (["run", "x.mp4", "--reference", "r.json", "--batch-size", "two"], "--batch-size: 'two' is not an integer"),
        (["run", "x.mp4", "--reference", "r.json", "--wait-timeout", "nan"], "--wait-timeout: nan is out of range"),
        (["calibrate", "x.mp4", "--out", "r.json", "--votes", "1.5"], "--votes: 1.5 is out of range: must be > 0 and <= 1"),
        (["calibrate", "x.mp4", "--out", "r.json", "--count", "0"], "--count: 0 is out of range"),
        (["segment", "x.mp4", "--reference", "r.json", "--out", "o", "--batch-size", "-1"], "--batch-size: -1 is out of range"),
        (["record", "tcp://127.0.0.1:5555", "--out", "o", "--fps", "inf"], "--fps: inf is out of range"),
        (["bench", "--frames", "0"], "--frames: 0 is out of range"),
        (["run", "x.mp4", "--reference", "r.json", "--batch-size", "9" * 400], "--batch-size: " + "9" * 400 + " is out of range"),
    ],
)
def test_numbers_are_checked_at_parse_time(capsys, args: list[str], needle: str) -> None:
    """Before any file is opened or model loaded: the sources and references named here do not even exist."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err and "Traceback" not in err, err


def test_a_source_that_never_fits_the_reference_is_refused_before_the_model_loads(capsys, caplog, phantom_ref, tmp_path: Path) -> None:
    _, ref = phantom_ref
    folder = tmp_path / "other"
    folder.mkdir()
    for i in range(40):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), np.full((50, 60), 90, np.uint8))  # not the calibrated size
    report = tmp_path / "report"
    caplog.clear()
    err = fails(capsys, ["run", str(folder), "--reference", str(ref), "--weights", "random:0", "--no-publish", "--report", str(report), "--no-progress"],
                f"{folder}: frames are 60x50", "does not fit inside them")
    assert not (report / "run_summary.json").exists()  # no run started: not 40 failures
    assert not [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]  # no model was made
    assert err.count("error") == 1


def test_output_paths_are_checked_before_the_model_loads(capsys, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    recording = tmp_path / "rec"
    recording.mkdir()
    (recording / "index.jsonl").write_text("")
    run = ["run", str(images), "--reference", str(ref), "--weights", "random:0", "--no-publish", "--no-progress"]
    fails(capsys, [*run, "--record", str(recording)], "--record", "already holds a recording")
    fails(capsys, [*run, "--masks", str(a_file)], "--masks", "is not a folder")
    fails(capsys, [*run, "--report", str(a_file / "sub")], "--report", "is not writable")
    fails(capsys, ["calibrate", str(images), "--out", str(tmp_path), *SMALL], "--out", "is a folder")
    fails(capsys, ["segment", str(images), "--reference", str(ref), "--out", str(a_file), "--weights", "random:0"], "--out", "is not a folder")
    fails(capsys, ["record", "tcp://127.0.0.1:9", "--out", str(recording), "--max-frames", "1"], "--out", "already holds a recording")
    fails(capsys, ["view", "tcp://127.0.0.1:9", "--headless-snapshot", str(tmp_path)], "--headless-snapshot", "is a folder")


def test_sources_that_share_a_name_get_distinct_outputs(capsys, tmp_path: Path) -> None:
    """A typical DICOM export: IM_0001 in several series folders; and image folders with the same file names."""
    from test_sources import write_dicom

    rng = np.random.default_rng(0)
    frames = lambda: cv2.GaussianBlur(rng.integers(0, 255, (2, 48, 64), dtype=np.uint8).transpose(1, 2, 0), (5, 5), 0).transpose(2, 0, 1)
    dicoms = [write_dicom(_mkdir(tmp_path / series) / "IM_0001.dcm", frames()) for series in ("series1", "series2")]
    for folder in ("left", "right"):
        cv2.imwrite(str(_mkdir(tmp_path / folder) / "frame.png"), frames()[0])
    ref = tmp_path / "ref.json"
    assert main(["calibrate", *map(str, dicoms), "--out", str(ref), "--roi", "full", *SMALL]) == 0
    out = tmp_path / "seg"
    assert main(["segment", *map(str, dicoms), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--no-progress"]) == 0
    masks = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert masks == ["series1_IM_0001_000000.png", "series1_IM_0001_000001.png", "series2_IM_0001_000000.png", "series2_IM_0001_000001.png"]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["series1_IM_0001_overlay.mp4", "series2_IM_0001_overlay.mp4"]
    images = tmp_path / "images-seg"
    assert main(["segment", str(tmp_path / "left"), str(tmp_path / "right"), "--reference", str(ref), "--out", str(images), "--weights", "random:0", "--no-progress"]) == 0
    assert sorted(p.name for p in (images / "masks").glob("*.png")) == ["left_frame.png", "right_frame.png"]
    # an image named like a DICOM's frame does not take that frame's mask
    cv2.imwrite(str(tmp_path / "series1_IM_0001_000001.png"), frames()[0])
    mixed = tmp_path / "mixed-seg"
    argv = ["segment", *map(str, dicoms), str(tmp_path / "series1_IM_0001_000001.png"), "--reference", str(ref), "--out", str(mixed)]
    assert main([*argv, "--weights", "random:0", "--no-progress"]) == 0
    assert len(list((mixed / "masks").glob("*.png"))) == 5


def test_a_rerun_never_mixes_old_and_new_results(capsys, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    out = tmp_path / "seg"
    assert main(["segment", str(images), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--no-progress"]) == 0
    assert (out / "summary.json").exists()
    fails(capsys, ["segment", str(images), "--reference", str(ref), "--out", str(out), "--weights", "random:0"], "holds a previous run's results", "--overwrite")
    fails(capsys, ["segment", str(tmp_path / "missing.mp4"), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--overwrite"], "missing.mp4")
    assert (out / "summary.json").exists()  # the source was refused before anything was touched
    odd = _mkdir(tmp_path / "odd")
    cv2.imwrite(str(odd / "x.png"), np.zeros((10, 12), np.uint8))  # opens, but its frames do not fit the reference
    fails(capsys, ["segment", str(odd), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--no-progress", "--overwrite"], "does not fit inside them")
    assert (out / "summary.json").exists()  # refused before the model loads: nothing was touched
    shutil.copy(sorted(images.glob("*.png"))[0], odd / "a.png")  # fits; x.png after it fails half way
    fails(capsys, ["segment", str(odd), "--reference", str(ref), "--out", str(out), "--weights", "random:0", "--no-progress", "--overwrite"], "must share a size")
    assert not (out / "summary.json").exists() and [m.stem for m in (out / "masks").glob("*.png")] == ["a"]  # no old result passes for new


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_lossless_consumer_that_never_comes_does_not_freeze_the_run(capsys, caplog, phantom_ref, tmp_path: Path) -> None:
    images, ref = phantom_ref
    with socket.socket() as probe:  # a free loopback port nobody will connect to
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = tmp_path / "report"
    code = main(["run", "phantom:20", "--reference", str(ref), "--weights", "random:0", "--no-publish", "--lossless", f"tcp://127.0.0.1:{port}",
                 "--wait-timeout", "1", "--report", str(report), "--no-progress"])
    summary = json.loads((report / "run_summary.json").read_text())
    lossless = summary["outputs"]["lossless"]
    assert code == 1  # a wait per frame would take >= 20 s (20 frames x 1 s)
    assert summary["read"] == summary["processed"] == 20 and lossless["written"] == 0
    assert lossless["dropped"] + lossless["failed"] == 20  # every frame it did not take is reported, by id
    assert len(summary["dropped_ids"].get("output:lossless", [])) == lossless["dropped"]
    warnings = [r for r in caplog.records if r.name == "pipeline.handoff" and r.levelno >= logging.WARNING]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]  # one wait, then no waiting and no line per frame


@pytest.mark.parametrize("wait", [["--lossless", "{address}", "--wait-timeout", "600"], ["--pace", "0.005"]], ids=["lossless", "pace"])
def test_a_signal_stops_a_run_within_seconds(phantom_ref, tmp_path: Path, wait: list[str]) -> None:
    """Neither a lossless consumer that never comes (600 s timeout) nor a pace of one frame per 200 s holds a run
    after SIGINT."""
    import signal
    import subprocess
    import sys

    images, ref = phantom_ref
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    argv = ["run", "phantom:20", "--reference", str(ref), "--weights", "random:0", "--no-publish", "--report", str(tmp_path / "r"), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv, *[a.format(address=address) for a in wait]],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the engine is built: the run is under way
        if line.startswith("backend:"):
            break
    time.sleep(2)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert time.monotonic() - signalled < 45  # generous for a loaded machine; the waits themselves are 600 s and 200 s
    summary = json.loads((tmp_path / "r" / "run_summary.json").read_text())
    stages = summary.get("dropped_ids") or {}  # what the grace left before an output is dropped there, by id
    assert summary["interrupted"] and summary["read"] == summary["processed"] + len(stages.get("infer", [])) + len(stages.get("encode", []))


def test_a_signal_ends_a_run_within_the_stop_grace_whatever_an_output_waits_for(phantom_ref, tmp_path: Path) -> None:
    """A lossless consumer that never comes, with the default 30 s --wait-timeout: SIGINT ends the run within a few
    seconds in all (not the 30 s wait, nor a grace per output and per frame), and every frame the output did not
    take is reported by id."""
    import signal
    import subprocess
    import sys

    images, ref = phantom_ref
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    argv = ["run", "phantom:400", "--reference", str(ref), "--weights", "random:0", "--no-publish", "--pace", "20",
            "--lossless", address, "--report", str(tmp_path / "r"), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # the engine is built and the output bound: frame 0 waits for a consumer
        if line.startswith("lossless PUSH"):
            break
    time.sleep(3)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - signalled
    assert took < 15, f"{took:.1f} s after SIGINT\n{out}"  # STOP_GRACE_S (2 s) and the report; generous for a loaded machine
    summary = json.loads((tmp_path / "r" / "run_summary.json").read_text())
    lossless = summary["outputs"]["lossless"]
    assert summary["interrupted"] and lossless["written"] == 0
    assert lossless["dropped"] + lossless["failed"] == summary["processed"]
    assert "lossless frame 0:" in out  # named by id


def _cap_address_space() -> None:
    """A command under test that does try to outgrow the machine fails here (MemoryError) instead of the kernel
    killing whatever else runs on it."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, 12 * 2**30))


@pytest.mark.parametrize("command", [
    ["pipeline.cli", "adapt", "{images}", "--out", "{tmp}/a.pth", "--init", "random:0", "--batch-size", "4096", "--no-progress"],
    ["pipeline.cli", "run", "phantom:3", "--reference", "{ref}", "--weights", "random:0", "--no-publish", "--batch-size", "1000000",
     "--report", "{tmp}/r", "--no-progress"],
    ["pipeline.cli", "run", "phantom:3", "{images}", "--reference", "{ref}", "--weights", "random:0", "--no-publish", "--queue-size", "100000000",
     "--report", "{tmp}/r", "--no-progress"],
    ["pipeline.cli", "bench", "--batch-sizes", "1,1000000", "--out", "{tmp}/b"],
    ["benchmarks.multistream", "--streams", "1,1000000", "--out", "{tmp}/m"],
    ["pipeline.cli", "archive", "{images}", "--reference", "{ref}", "--out", "{tmp}/arch", "--workers", "4096", "--no-progress"],
], ids=["adapt-batch", "run-batch", "run-streams-queue-size", "bench-batches", "multistream-streams", "archive-workers"])
def test_a_command_that_would_outgrow_the_machine_is_refused_before_the_work(phantom_ref, tmp_path: Path, command: list[str]) -> None:
    """Batches, queues, streams and workers no machine holds: one line naming the estimate and a setting that fits, exit 2,
    before any model loads (pipeline/memory.py)."""
    import subprocess
    import sys

    if "archive" in command:
        pytest.importorskip("ray")
    images, ref = phantom_ref
    argv = [a.format(images=images, ref=ref, tmp=tmp_path) for a in command]
    # the host's memory rule (commands that default to a GPU would size against it, and CUDA cannot start under the cap)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300, preexec_fn=_cap_address_space, env=env)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "needs about" in err or "each loads its own model" in err or "may hold about" in err, err
    assert " fits" in err and "weights:" not in proc.stdout, err  # a setting that fits; the model was never loaded


def test_the_adapt_estimate_covers_the_run_the_kernel_killed() -> None:
    """adapt's defaults (batch 32, 2 x 224 + 6 x 96 crops, 65536 prototypes) reached 23.4 GB RSS on a 24 GB machine
    before the kernel killed them: the estimate is at least that, and the tiny run the tests use fits in 2 GB."""
    from pipeline.memory import GB, AdaptSize

    assert AdaptSize(32, 224, 96, 6, 65536).bytes(cuda=False) > 23.4 * GB
    assert AdaptSize(2, 32, 16, 1, 64).bytes(cuda=False) < 2 * GB
