#!/usr/bin/env python3
"""A small HTTP/3 client over aioquic, for edge's tests (Debian's curl has no
HTTP/3). One request; prints one JSON line on stdout:

  {"status": 200, "headers": {...}, "body": "...", "body_len": N, "body_sha256": "..."}

or, when the connection is refused (in the handshake or before an answer):

  {"error": "..."}   (exit status 2)
"""
import argparse
import asyncio
import hashlib
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.status = None
        self.headers = {}
        self.body = bytearray()
        self.done = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            if not self.done.done():
                self.done.set_exception(
                    ConnectionError(f"connection closed: code {event.error_code:#x} {event.reason_phrase}")
                )
            return
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                for k, v in ev.headers:
                    k, v = k.decode(), v.decode()
                    if k == ":status":
                        self.status = int(v)
                    else:
                        self.headers[k] = v
                if ev.stream_ended and not self.done.done():
                    self.done.set_result(None)
            elif isinstance(ev, DataReceived):
                self.body.extend(ev.data)
                if ev.stream_ended and not self.done.done():
                    self.done.set_result(None)

    async def request(self, method, authority, path, headers, body):
        sid = self._quic.get_next_available_stream_id()
        hdrs = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        for h in headers:
            k, _, v = h.partition(":")
            hdrs.append((k.strip().lower().encode(), v.strip().encode()))
        if body:
            hdrs.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(sid, hdrs, end_stream=not body)
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        await self.done


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True, help="server name (SNI) and :authority")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--authority", help=":authority, if not --host")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--path", default="/")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--data-size", type=int, default=0, help="send a body of N bytes")
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()

    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=a.host)
    cfg.verify_mode = ssl.CERT_REQUIRED
    cfg.load_verify_locations(a.ca)
    if a.cert:
        cfg.load_cert_chain(a.cert, a.key)
    body = bytes((i * 7) % 251 for i in range(a.data_size)) if a.data_size else b""
    try:
        async with connect(a.address, a.port, configuration=cfg, create_protocol=Client, wait_connected=True) as c:
            await asyncio.wait_for(
                c.request(a.method, a.authority or a.host, a.path, a.header, body), timeout=a.timeout
            )
            data = bytes(c.body)
            out = {
                "status": c.status,
                "headers": c.headers,
                "body": data[:4096].decode("utf-8", "replace"),
                "body_len": len(data),
                "body_sha256": hashlib.sha256(data).hexdigest(),
            }
            print(json.dumps(out))
            return 0
    except Exception as e:  # every failure is a refusal to the test
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 2


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
