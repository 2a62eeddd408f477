"""Publisher, Subscriber and CURVE over real ZeroMQ sockets on loopback (random ports, no sleep-and-hope)."""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from pipeline.publish.curve import (
    CurveClientConfig,
    CurveError,
    CurveServerConfig,
    add_client_arguments,
    add_server_arguments,
    client_from_args,
    create_keypair,
    load_key,
    server_from_args,
)
from pipeline.publish.publisher import Publisher
from pipeline.publish.subscriber import Subscriber
from pipeline.publish.transport import TransportError, is_loopback
from test_message import make_message

LOCAL = "tcp://127.0.0.1:0"


def collect(sub: Subscriber, n: int, timeout: float = 5.0, per_frame_s: float = 0.0) -> list[int]:
    """Frame ids of up to ``n`` frames, stopping after ``timeout`` s without one."""
    ids = []
    while len(ids) < n and (msg := sub.recv(timeout)) is not None:
        ids.append(msg.frame_id)
        time.sleep(per_frame_s)
    return ids


def test_fifty_frames_arrive_in_order_exactly_once():
    # queues sized for the burst: this checks delivery and order; dropping is checked below
    with Publisher(LOCAL, sndhwm=64) as pub, Subscriber(pub.address, stream_id="us", rcvhwm=64) as sub:
        assert pub.wait_for_subscribers(1, timeout=5)
        for i in range(50):
            assert pub.send(make_message(i))
        received = []
        while len(received) < 50 and (msg := sub.recv(timeout=5)) is not None:
            received.append(msg)
    assert [m.frame_id for m in received] == list(range(50))
    assert pub.sent == 50 and sub.counters() == {"received": 50, "skipped": 0, "missed": 0, "malformed": 0}
    stamps = received[0].timestamps_ns
    assert stamps["captured"] <= stamps["published"] <= received[0].received_ns
    assert received[0].weights == "random:0" and received[0].overlay.shape == (24, 32, 3)


def test_slow_subscriber_neither_stalls_publisher_nor_starves_others():
    frames = [make_message(i, size=(384, 384), overlay="raw") for i in range(200)]  # ~590 KB each: beyond socket buffers
    with Publisher(LOCAL) as pub, Subscriber(pub.address) as slow, Subscriber(pub.address, rcvhwm=1000) as fast:
        assert pub.wait_for_subscribers(2, timeout=5)
        with ThreadPoolExecutor(2) as pool:
            slow_ids = pool.submit(collect, slow, 200, 1.0, 0.05)
            fast_ids = pool.submit(collect, fast, 200, 2.0)
            start = time.monotonic()
            for msg in frames:
                pub.send(msg)
                time.sleep(0.002)  # ~500 fps: the fast reader keeps up
            elapsed = time.monotonic() - start
        # a publisher paced by the slow reader would need >= 10 s (200 x 50 ms); margins hold on a loaded machine
        assert elapsed < 6.0, f"publishing took {elapsed:.1f} s: the slow subscriber (50 ms a frame) held it up"
        fast_ids = fast_ids.result()
        slow_ids = slow_ids.result()
    assert fast_ids == sorted(set(fast_ids)) and len(fast_ids) >= 150  # the fast reader is not starved
    assert len(slow_ids) < len(fast_ids) and slow.missed > 0 and slow_ids == sorted(slow_ids)


def test_latest_keeps_only_the_newest():
    with Publisher(LOCAL, sndhwm=64) as pub, Subscriber(pub.address, rcvhwm=64) as sub:
        assert pub.wait_for_subscribers(1)
        for i in range(20):
            pub.send(make_message(i))
        returned = []
        while not returned or returned[-1] < 19:
            returned.append(sub.latest(timeout=5).frame_id)
    assert returned == sorted(returned) and sub.skipped > 0
    assert sub.received + sub.skipped == 20 and sub.missed == 0 and sub.received == len(returned)


def test_subscriber_resumes_after_publisher_restart():
    first = Publisher(LOCAL)
    address = first.address
    with Subscriber(address) as sub:
        assert first.wait_for_subscribers(1)
        first.send(make_message(0))
        assert sub.recv(timeout=5).frame_id == 0
        first.close()
        # the subscriber must be in recv(): a zmq socket resends its subscriptions only while its owner uses it
        with Publisher(address) as second, ThreadPoolExecutor(1) as pool:
            got = pool.submit(sub.recv, 5)
            assert second.wait_for_subscribers(1, timeout=5), "subscriber did not reconnect"
            second.send(make_message(0))  # a restarted pipeline counts from 0 again
            assert got.result().frame_id == 0
    assert sub.missed == 0


def test_subscriber_disconnects_and_reconnects_while_the_publisher_streams():
    with Publisher(LOCAL) as pub:
        with Subscriber(pub.address) as first:
            assert pub.wait_for_subscribers(1)
            pub.send(make_message(0))
            assert first.recv(timeout=5).frame_id == 0
        deadline = time.monotonic() + 5  # the unsubscription reaches the publisher: it stops encoding for nobody
        while pub.send(make_message(1)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pub.subscriptions == 0
        with Subscriber(pub.address) as again:
            assert pub.wait_for_subscribers(1)
            assert pub.send(make_message(2))
            assert again.recv(timeout=5).frame_id == 2 and again.missed == 0


def test_malformed_messages_are_counted_and_survived():
    ctx = zmq.Context()
    raw = ctx.socket(zmq.XPUB)
    try:
        port = raw.bind_to_random_port("tcp://127.0.0.1")
        with Subscriber(f"tcp://127.0.0.1:{port}") as sub:
            assert raw.poll(5000) and raw.recv() == b"\x01bonestream/"
            raw.send_multipart([b"bonestream/us", b"{not json", b""])
            raw.send_multipart([b"bonestream/us", b"{}", b"", b"", b""])
            raw.send_multipart(make_message(5).encode())
            assert sub.recv(timeout=5).frame_id == 5
        assert sub.malformed == 2
    finally:
        raw.close(0)
        ctx.term()


def test_an_oversized_message_costs_a_reconnect_and_is_counted_never_the_subscription():
    ctx = zmq.Context()
    raw = ctx.socket(zmq.XPUB)
    try:
        port = raw.bind_to_random_port("tcp://127.0.0.1")
        with Subscriber(f"tcp://127.0.0.1:{port}", max_bytes=64 * 1024) as sub:
            assert raw.poll(5000) and raw.recv() == b"\x01bonestream/"
            raw.send_multipart(make_message(0).encode())
            assert sub.recv(timeout=5).frame_id == 0
            raw.send_multipart(make_message(1, size=(512, 512)).encode())  # a 256 KiB mask part: over the limit
            deadline, later = time.monotonic() + 20, None
            frame_id = 2
            while later is None and time.monotonic() < deadline:  # the publisher streams on; the subscriber reconnects
                raw.send_multipart(make_message(frame_id).encode())
                frame_id += 1
                later = sub.recv(timeout=0.05)
            assert later is not None and later.frame_id >= 2
            counts = sub.counters()
            assert counts["disconnects"] >= 1 and counts["missed"] == later.frame_id - 1 and counts["malformed"] == 0
    finally:
        raw.close(0)
        ctx.term()


@pytest.mark.parametrize(
    "address, local",
    [("tcp://127.0.0.1:5555", True), ("tcp://127.8.9.10:1", True), ("tcp://[::1]:5555", True), ("tcp://localhost:5555", True),
     ("ipc:///tmp/bonestream", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://192.168.1.5:5555", False),
     ("tcp://eth0:5555", False), ("ws://127.0.0.1:5555", False)],
)
def test_is_loopback(address, local):
    assert is_loopback(address) is local


def test_non_loopback_bind_needs_curve_or_insecure():
    with pytest.raises(TransportError, match=r"tcp://0\.0\.0\.0:0 .*--curve-secret.*--insecure"):
        Publisher("tcp://0.0.0.0:0")
    with Publisher("tcp://0.0.0.0:0", insecure=True) as pub:  # bound, but no traffic leaves this test
        assert pub.address.startswith("tcp://0.0.0.0:")


def test_bind_errors_name_the_address():
    with Publisher(LOCAL) as pub:
        with pytest.raises(TransportError, match=f"cannot bind {pub.address}: Address already in use"):
            Publisher(pub.address)
    with pytest.raises(TransportError, match="tcp://127.0.0.1:notaport"):
        Publisher("tcp://127.0.0.1:notaport")


@pytest.fixture
def keys(tmp_path):
    """A server key pair, an allowed client (its public key in clients/), and a client nobody listed."""
    server = create_keypair(tmp_path / "server", "server")
    alice = create_keypair(tmp_path / "alice", "alice")
    mallory = create_keypair(tmp_path / "mallory", "mallory")
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "alice.key").write_bytes(alice[0].read_bytes())
    return {"server": server, "alice": alice, "mallory": mallory, "clients": tmp_path / "clients"}


def _await_handshake_failures(monitor: zmq.Socket, timeout: float = 5.0) -> None:
    """Until the unlisted client was refused by ZAP and the plain one failed its handshake (seen by the server)."""
    pending = [{zmq.EVENT_HANDSHAKE_FAILED_AUTH}, {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}]
    deadline = time.monotonic() + timeout
    while pending and monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        event = recv_monitor_message(monitor)["event"]
        pending = [kinds for kinds in pending if event not in kinds]
    assert not pending, f"handshake failures not seen: {pending}"


def test_curve_admits_only_listed_clients(keys):
    (server_public, server_secret), server_file = keys["server"], keys["server"][0]
    config = CurveServerConfig(server_secret, (keys["clients"],))
    with Publisher(LOCAL, sndhwm=16, curve=config) as pub:  # monitor socket: closed with the publisher's context
        monitor = pub.socket.get_monitor_socket()
        with (
            Subscriber(pub.address, curve=CurveClientConfig(keys["mallory"][1], server_file)) as mallory,
            Subscriber(pub.address) as plain,
            Subscriber(pub.address, curve=CurveClientConfig(keys["alice"][1], server_public)) as alice,
        ):
            _await_handshake_failures(monitor)
            assert pub.wait_for_subscribers(1, timeout=5) and not pub.wait_for_subscribers(2, timeout=0.2)
            for i in range(3):
                pub.send(make_message(i))
            assert collect(alice, 3) == [0, 1, 2]
            assert mallory.recv(timeout=0.2) is None and plain.recv(timeout=0.01) is None


def test_key_files(keys, tmp_path):
    public, secret = keys["alice"]
    assert (public.name, secret.name) == ("alice.key", "alice.key_secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert zmq.auth.load_certificate(secret)[0] == zmq.auth.load_certificate(public)[0]
    assert public.read_text().count("public-key = ") == 1
    with pytest.raises(CurveError, match="refusing to overwrite"):
        create_keypair(public.parent, "alice")
    os.chmod(secret, 0o644)
    with pytest.raises(CurveError, match="chmod 600"):
        load_key(secret, secret=True)
    with pytest.raises(CurveError, match="holds no secret key"):
        load_key(public, secret=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurveError, match="no client public keys"):
        CurveServerConfig(keys["server"][1], (tmp_path / "empty",)).allowed_keys()


def test_publisher_does_not_encode_without_subscribers():
    with Publisher(LOCAL) as pub:
        assert not pub.send(make_message(0)) and pub.sent == 0
        with Subscriber(pub.address):
            assert pub.wait_for_subscribers(1)
        deadline = time.monotonic() + 5
        while pub.subscriptions and time.monotonic() < deadline:
            pub.send(make_message(1))
        assert pub.subscriptions == 0 and not pub.send(make_message(2))


def test_curve_command_line_flags(keys):
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    add_client_arguments(parser)
    (_, server_secret), (alice_public, alice_secret) = keys["server"], keys["alice"]
    args = parser.parse_args(
        ["--curve-secret", str(server_secret), "--curve-allow", str(alice_public), "--curve-allow", str(keys["clients"]),
         "--curve-client", str(alice_secret), "--curve-server", str(keys["server"][0])]
    )
    assert server_from_args(args) == CurveServerConfig(server_secret, (alice_public, keys["clients"]))
    assert server_from_args(args).allowed_keys() == {load_key(alice_public, secret=False)[0]}
    assert client_from_args(args) == CurveClientConfig(alice_secret, keys["server"][0])
    none = parser.parse_args([])
    assert server_from_args(none) is None and client_from_args(none) is None and not none.insecure
    with pytest.raises(CurveError, match="--curve-allow"):
        server_from_args(parser.parse_args(["--curve-secret", str(server_secret)]))


def test_counters_stay_sane_when_frame_ids_jump():
    from pipeline.publish.subscriber import MAX_STREAMS

    with Publisher(LOCAL, sndhwm=2000) as pub, Subscriber(pub.address, rcvhwm=2000) as sub:
        assert pub.wait_for_subscribers(1)
        for frame_id in (0, 1, 5, 10**12, 3):  # a gap of 3, a jump of 10^12 (new sequence), a restart
            pub.send(make_message(frame_id))
        got = [sub.recv(timeout=5).frame_id for _ in range(5)]
        assert got == [0, 1, 5, 10**12, 3]
        assert sub.missed == 3 and sub.counters()["jumps"] == 2
        for i in range(MAX_STREAMS + 50):  # a flood of new stream ids: remembered ids stay bounded
            pub.send(make_message(0, stream_id=f"s{i}"))
        for _ in range(MAX_STREAMS + 50):
            assert sub.recv(timeout=5) is not None
        assert len(sub._last_ids) == MAX_STREAMS and sub.missed == 3
