#!/usr/bin/env python3
"""An HTTP/3 client for the tests that is not the router's own stack (aioquic).

Reads a JSON job on stdin and prints a JSON report on stdout:

  job:    {"host": "127.0.0.1", "port": 4433, "sni": "a.test", "ca": "ca.pem",
           "zero_rtt": false, "requests": [
             {"method": "GET", "path": "/", "authority": "a.test",
              "headers": [["x-k", "v"]], "chunks": ["part1", "part2"],
              "fields": null or [[name, value], ...]: the whole field section}]}
  report: {"early_data_accepted": bool, "retried": bool, "closed": code,
           "goaways": [GOAWAY identifiers received],
           "refused": null or why the connection was refused, "responses": [
             {"status": 200, "headers": [["k", "v"]], "body": "...",
              "reset": null or error code}]}

With "wait_close", the client then waits (without sending anything but
acknowledgements and keep-alive PINGs) for the server to close the connection,
and reports the close's error code as "closed".
With "zero_rtt", a first connection collects a session ticket and the
requests go on a second connection in 0-RTT early data (sent before the
handshake completes).
"""

import asyncio
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived, StreamReset

TIMEOUT = 20


class Recording(H3Connection):
    """aioquic's HTTP/3 connection, also reading the server's control stream
    for the GOAWAY identifiers it sends (aioquic discards their payload)."""

    def __init__(self, quic):
        super().__init__(quic)
        self.goaways = []
        self._uni = {}

    def handle_event(self, event):
        # Server-initiated unidirectional streams have ids 3 mod 4.
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 3:
            self._uni[event.stream_id] = self._uni.get(event.stream_id, b"") + event.data
            self._read_control(event.stream_id)
        return super().handle_event(event)

    def _read_control(self, stream_id):
        buf = Buffer(data=self._uni[stream_id])
        try:
            if buf.pull_uint_var() != 0:  # not the control stream
                self._uni[stream_id] = b""
                return
            frames = []
            while not buf.eof():
                frame_type = buf.pull_uint_var()
                payload = buf.pull_bytes(buf.pull_uint_var())
                frames.append((frame_type, payload))
        except BufferReadError:
            return  # a frame not whole yet: read again with more data
        goaways = [Buffer(data=p).pull_uint_var() for t, p in frames if t == FrameType.GOAWAY]
        self.goaways = goaways


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = Recording(self._quic)
        self.streams = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self._end(event.stream_id, reset=event.error_code)
            return
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                r = self.streams[ev.stream_id]["response"]
                if r["status"] is None:
                    for k, v in ev.headers:
                        if k == b":status":
                            r["status"] = int(v)
                        else:
                            r["headers"].append([k.decode(), v.decode()])
                else:
                    r["trailers"] = [[k.decode(), v.decode()] for k, v in ev.headers]
                if ev.stream_ended:
                    self._end(ev.stream_id)
            elif isinstance(ev, DataReceived):
                self.streams[ev.stream_id]["body"] += ev.data
                if ev.stream_ended:
                    self._end(ev.stream_id)

    def _end(self, stream_id, reset=None):
        s = self.streams.get(stream_id)
        if s is None or s["done"].done():
            return
        s["response"]["reset"] = reset
        s["done"].set_result(None)

    def start(self, req):
        stream_id = self._quic.get_next_available_stream_id()
        chunks = [c.encode() for c in req.get("chunks", [])]
        if req.get("fields") is not None:
            # The field section exactly as given: order, repeats and all.
            headers = [(k.encode(), v.encode()) for k, v in req["fields"]]
        else:
            headers = [
                (b":method", req.get("method", "GET").encode()),
                (b":scheme", b"https"),
                (b":authority", req["authority"].encode()),
                (b":path", req.get("path", "/").encode()),
            ] + [(k.encode(), v.encode()) for k, v in req.get("headers", [])]
        response = {"status": None, "headers": [], "reset": None}
        self.streams[stream_id] = {
            "response": response,
            "body": b"",
            "done": asyncio.get_running_loop().create_future(),
        }
        # Sent with the others at the caller's transmit: in 0-RTT, every head
        # goes in the first flight, not paced behind the handshake.
        self.h3.send_headers(stream_id, headers, end_stream=not chunks)
        return stream_id, chunks

    async def send_chunks(self, stream_id, chunks):
        for i, chunk in enumerate(chunks):
            # Each piece in its own flight: a streamed upload, not one frame.
            await asyncio.sleep(0)
            self.h3.send_data(stream_id, chunk, end_stream=i == len(chunks) - 1)
            self.transmit()

    async def finish(self, stream_id):
        s = self.streams[stream_id]
        await asyncio.wait_for(s["done"], TIMEOUT)
        r = s["response"]
        r["body"] = s["body"].decode("utf-8", "replace")
        return r


def configuration(job, ticket=None):
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    c.load_verify_locations(job["ca"])
    c.server_name = job["sni"]
    if ticket is not None:
        c.session_ticket = ticket
    return c


async def run(job):
    tickets = []
    ticket = None
    if job.get("zero_rtt"):
        got = asyncio.Event()

        def keep(t):
            tickets.append(t)
            got.set()

        async with connect(
            job["host"],
            job["port"],
            configuration=configuration(job),
            create_protocol=Client,
            session_ticket_handler=keep,
        ) as warm:
            sid, _ = warm.start({"authority": job["sni"], "path": "/"})
            warm.transmit()
            await warm.finish(sid)
            try:
                await asyncio.wait_for(got.wait(), TIMEOUT)
            except asyncio.TimeoutError:
                raise SystemExit("no session ticket from the server")
        ticket = tickets[-1]
    try:
        report = await session(job, ticket)
    except ConnectionError as e:
        # Refused or closed before any request: said, not raised.
        return {"refused": str(e) or type(e).__name__, "responses": []}
    return report


async def session(job, ticket):
    async with connect(
        job["host"],
        job["port"],
        configuration=configuration(job, ticket),
        create_protocol=Client,
        wait_connected=ticket is None,
    ) as client:
        started = [client.start(r) for r in job["requests"]]
        client.transmit()
        for sid, chunks in started:
            await client.send_chunks(sid, chunks)
        responses = [await client.finish(sid) for sid, _ in started]
        accepted = bool(getattr(client._quic.tls, "early_data_accepted", False))
        # aioquic counts the Retry packets it answered.
        retried = getattr(client._quic, "_retry_count", 0) > 0
        closed = None
        if job.get("wait_close"):
            # PINGs keep QUIC's own idle timer from firing: only the server's
            # HTTP idle rule can close this connection.
            async def ping():
                while True:
                    await client.ping()
                    await asyncio.sleep(0.2)
            pinging = asyncio.ensure_future(ping())
            await asyncio.wait_for(client.wait_closed(), TIMEOUT)
            pinging.cancel()
            event = getattr(client._quic, "_close_event", None)
            closed = event.error_code if event is not None else -1
    return {
        "early_data_accepted": accepted,
        "retried": retried,
        "closed": closed,
        "goaways": client.h3.goaways,
        "responses": responses,
    }


def main():
    job = json.load(sys.stdin)
    report = asyncio.run(run(job))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
