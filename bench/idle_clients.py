#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT (optionally TLS), sends one GET on
each, reads its whole response, then holds them open and silent until stdin
closes or says "close". Prints "open N" once every connection is idle."""
import asyncio
import ssl
import sys


async def one(host, port, tls, held, failures):
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname="localhost" if tls else None)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        held.append(writer)
    except Exception as e:  # counted, reported once
        failures.append(repr(e))


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tls = None
    if len(sys.argv) > 4 and sys.argv[4] == "tls":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    held, failures = [], []
    batch = 200
    for i in range(0, n, batch):
        await asyncio.gather(*(one(host, port, tls, held, failures) for _ in range(min(batch, n - i))))
    print(f"open {len(held)} failed {len(failures)} {failures[:1]}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for w in held:
        w.close()
    print("closed", flush=True)


asyncio.run(main())
