#!/usr/bin/env python3
"""Connection pressure: fresh clients served while slow ones hold connections.

Starts `georouter run` under `ulimit -n 1024` with one nginx-less origin (a
tiny asyncio HTTP server here), opens SLOW connections that never finish their
head and BODIES requests whose bodies trickle, then sends PROBES fresh GETs
one at a time, each on a new connection with a 5 s limit, and prints the share
served. Loopback only; bounded in count and time.

Usage: bench/slowloris.py [BINARY] (SLOW=2000 BODIES=300 PROBES=200)
"""

import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/georouter"
SLOW = int(os.environ.get("SLOW", 2000))
BODIES = int(os.environ.get("BODIES", 300))
PROBES = int(os.environ.get("PROBES", 200))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def origin(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except Exception:
        writer.close()


async def hold_slow(port, held):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
        await w.drain()
        held.append(w)
    except OSError:
        pass


async def trickle_body(port, held, stop):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        await w.drain()
        held.append(w)
        while not stop.is_set():
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(1)
    except OSError:
        pass


async def probe(port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(64), 5)
        w.close()
        return data.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        return False


async def main():
    # Connections the router closes under pressure end their tasks noisily.
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    origin_server = await asyncio.start_server(origin, "127.0.0.1", 0)
    origin_port = origin_server.sockets[0].getsockname()[1]
    port, admin = free_port(), free_port()
    tmp = tempfile.mkdtemp()
    policy = os.path.join(tmp, "policy.toml")
    with open(policy, "w") as f:
        f.write(
            f'[server]\naccess_log = false\nheader_read_timeout = "60s"\nidle_timeout = "60s"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[admin]\naddress = "127.0.0.1:{admin}"\n'
            f'[health]\nenabled = false\n[[regions]]\nname = "o"\n'
            f'endpoints = [{{ url = "http://127.0.0.1:{origin_port}" }}]\n'
        )

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    router = subprocess.Popen(
        [BIN, "run", "-c", policy], preexec_fn=limit, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", admin), 0.1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        held, stop = [], asyncio.Event()
        await asyncio.gather(*(hold_slow(port, held) for _ in range(SLOW)))
        bodies = [asyncio.create_task(trickle_body(port, held, stop)) for _ in range(BODIES)]
        await asyncio.sleep(1)
        served = 0
        started = time.monotonic()
        for _ in range(PROBES):
            served += await probe(port)
        took = time.monotonic() - started
        print(
            f"{served}/{PROBES} fresh probes served ({100 * served / PROBES:.1f} %) "
            f"with {SLOW} slowloris and {BODIES} slow-body connections attempted, "
            f"ulimit -n 1024; {took:.1f} s"
        )
        stop.set()
        for t in bodies:
            t.cancel()
        for w in held:
            w.close()
    finally:
        router.terminate()
        router.wait()
        origin_server.close()


asyncio.run(main())
