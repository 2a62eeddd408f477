"""Wire format: round trips, every validation failure as MessageError, and a fuzz test that nothing else escapes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.publish.message import SCHEMA_VERSION, FrameMessage, MessageError, decode, decode_header


def make_message(frame_id: int = 0, *, stream_id: str = "us", size: tuple[int, int] = (24, 32), overlay: str | None = "jpeg") -> FrameMessage:
    """A valid message with a recognisable mask and a smooth overlay (JPEG keeps it close)."""
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    mask[h // 2 :, : w // 2] = 255
    gradient = np.linspace(0, 255, w, dtype=np.uint8)
    rgb = np.stack([np.tile(gradient, (h, 1))] * 3, axis=-1)
    now = time.monotonic_ns()
    return FrameMessage(
        stream_id=stream_id,
        frame_id=frame_id,
        mask=mask,
        overlay=None if overlay is None else rgb,
        overlay_encoding=overlay or "jpeg",
        timestamps_ns={"captured": now, "inferred": now + 1, "labelled": now + 2, "published": now + 3},
        roi=(0, 0, h, w),
        frame_size=(h, w),
        reference_id="ref123",
        weights="random:0",
        random_weights=True,
        foreground_fraction=0.25,
        confidence=0.5,
        source_ts=frame_id / 30,
        published_unix_ns=time.time_ns(),
        dropped={"capture": 1},
    )


def with_header(parts: list[bytes], **changes) -> list[bytes]:
    header = json.loads(parts[1])
    header.update(changes)
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


@pytest.mark.parametrize("overlay", ["raw", "jpeg", None])
def test_round_trip(overlay):
    msg = make_message(7, overlay=overlay)
    out = decode(msg.encode())
    assert out.header() == msg.header()
    assert np.array_equal(out.mask, msg.mask)
    if overlay is None:
        assert out.overlay is None
    elif overlay == "raw":
        assert np.array_equal(out.overlay, msg.overlay)
    else:
        assert out.overlay.shape == msg.overlay.shape
        assert np.abs(out.overlay.astype(int) - msg.overlay).mean() < 3


def test_roi_resolution_mask():
    msg = make_message()
    msg.frame_size, msg.roi, msg.mask_resolution = (40, 50), (5, 6, 24, 32), "roi"
    assert decode(msg.encode()).roi == (5, 6, 24, 32)


def test_encode_rejects_bad_producer_data():
    msg = make_message()
    msg.mask = msg.mask.astype(np.float32)
    with pytest.raises(MessageError, match="dtype"):
        msg.encode()


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda p: p[:2], "3 or 4 parts"),
        (lambda p: p + [b"x"], "3 or 4 parts"),
        (lambda p: [b"other/us"] + p[1:], "topic"),
        (lambda p: [b"bonestream/them"] + p[1:], "does not match stream_id"),
        (lambda p: [p[0], b"{not json", *p[2:]], "JSON"),
        (lambda p: [p[0], b"\xff\xfe", *p[2:]], "JSON"),
        (lambda p: [p[0], b"[1, 2]", *p[2:]], "JSON object"),
        (lambda p: [p[0], p[1].replace(b"0.25", b"NaN"), *p[2:]], "JSON"),
        (lambda p: with_header(p, schema=SCHEMA_VERSION + 1), "schema"),
        (lambda p: with_header(p, frame_id="3"), "frame_id must be int"),
        (lambda p: with_header(p, frame_id=True), "frame_id must be int"),
        (lambda p: with_header(p, stream_id="../x"), "stream_id"),
        (lambda p: with_header(p, foreground_fraction=1.5), "foreground_fraction"),
        (lambda p: with_header(p, random_weights=1), "random_weights"),
        (lambda p: with_header(p, roi=[20, 0, 24, 32]), "roi"),
        (lambda p: with_header(p, timestamps_ns={"captured": 1}), "inferred is missing"),
        (lambda p: with_header(p, mask={"shape": [24, 32], "dtype": "uint16", "resolution": "frame"}), "dtype"),
        (lambda p: with_header(p, mask={"shape": [24, -32], "dtype": "uint8", "resolution": "frame"}), "outside"),
        (lambda p: with_header(p, mask={"shape": [24, 32, 1], "dtype": "uint8", "resolution": "frame"}), "2 entries"),
        (lambda p: with_header(p, mask={"shape": [9000, 32], "dtype": "uint8", "resolution": "frame"}), "outside"),
        (lambda p: with_header(p, overlay=None), "null exactly when"),
        (lambda p: [*p[:2], p[2][:-1], p[3]], "mask has"),
        (lambda p: [*p[:3], p[3][:-10]], "complete JPEG"),
        (lambda p: [*p[:3], p[3][: p[3].index(b"\xff\xda")] + b"\xff\xd9"], "decode"),  # no image data
    ],
)
def test_rejects(mutate, reason):
    with pytest.raises(MessageError, match=reason):
        decode(mutate(make_message().encode()))


@pytest.mark.parametrize("field", ["stream_id", "timestamps_ns", "mask", "overlay", "roi", "weights", "confidence"])
def test_rejects_missing_field(field):
    parts = make_message().encode()
    header = json.loads(parts[1])
    del header[field]
    with pytest.raises(MessageError, match=f"{field} is missing"):
        decode([parts[0], json.dumps(header).encode(), *parts[2:]])


def test_rejects_oversize_before_parsing():
    parts = make_message(overlay="raw").encode()
    with pytest.raises(MessageError, match="exceeds"):
        decode_header(parts, max_bytes=sum(map(len, parts)) - 1)


def test_rejects_raw_overlay_of_wrong_length():
    parts = make_message(overlay="raw").encode()
    with pytest.raises(MessageError, match="overlay has"):
        decode([*parts[:3], parts[3] + b"\0"])


def test_rejects_jpeg_declaring_a_huge_image():
    parts = make_message().encode()
    jpeg = bytearray(parts[3])
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (8000).to_bytes(2, "big") * 2  # frame header claims 8000x8000
    with pytest.raises(MessageError, match="complete JPEG"):
        decode([*parts[:3], bytes(jpeg)])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
VALID = {kind: make_message(3, overlay=kind, size=(8, 8)).encode() for kind in ("jpeg", "raw", None)}


def _expect_only_message_errors(parts: list[bytes]) -> None:
    try:
        decode(parts, max_bytes=4096)
    except MessageError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_fuzz_random_parts(parts):
    _expect_only_message_errors(parts)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(list(VALID)),
    part=st.integers(0, 3),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    key=st.sampled_from(sorted(json.loads(VALID["jpeg"][1]))),
    value=JSON_VALUES,
    mode=st.sampled_from(["bytes", "field", "drop"]),
)
def test_fuzz_mutated_messages(kind, part, cut, flips, key, value, mode):
    parts = list(VALID[kind])
    if mode == "bytes":
        part %= len(parts)
        data = bytearray(parts[part][: max(0, len(parts[part]) - cut)])
        for pos, byte in flips:
            if data:
                data[pos % len(data)] = byte
        parts[part] = bytes(data)
    else:
        header = json.loads(parts[1])
        if mode == "field":
            header[key] = value
        else:
            del header[key]
        parts[1] = json.dumps(header).encode()
    _expect_only_message_errors(parts)


def test_an_overlay_that_lies_about_its_size_is_rejected_and_the_subscriber_goes_on():
    from pipeline.publish.publisher import Publisher
    from pipeline.publish.subscriber import Subscriber

    liar = make_message(0, size=(24, 32), overlay="raw")
    liar.overlay = np.zeros((10, 10, 3), np.uint8)  # bytes agree with its own header, not with the frame
    with pytest.raises(MessageError, match="overlay shape"):
        liar.encode()
    parts = make_message(0, size=(24, 32), overlay="raw").encode()
    header = json.loads(parts[1])
    header["overlay"]["shape"] = [10, 10, 3]
    lying = [parts[0], json.dumps(header).encode(), parts[2], bytes(300)]
    with pytest.raises(MessageError, match="overlay shape"):
        decode(lying)
    with Publisher("tcp://127.0.0.1:*", sndhwm=10) as pub, Subscriber(pub.socket.getsockopt_string(zmq.LAST_ENDPOINT), rcvhwm=10) as sub:
        assert pub.wait_for_subscribers(1)
        pub.socket.send_multipart(lying)
        pub.send(make_message(1))
        assert sub.recv(timeout=5).frame_id == 1 and sub.malformed == 1 and sub.missed == 0  # counted once, as malformed


def test_an_roi_mask_with_a_frame_size_overlay_is_valid():
    msg = make_message(0, size=(24, 32), overlay="raw")
    msg.frame_size, msg.roi, msg.mask_resolution = (40, 50), (2, 3, 24, 32), "roi"
    msg.overlay = np.zeros((40, 50, 3), np.uint8)  # the whole frame drawn, the mask of the ROI only
    assert decode(msg.encode()).overlay.shape == (40, 50, 3)
