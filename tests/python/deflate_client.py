#!/usr/bin/env python3
"""A real client with permessage-deflate (RFC 7692): Python `websockets` with its default
compression, against a running edgepush. Driven by tests/deflate_python.rs.

    deflate_client.py --ws ws://127.0.0.1:PORT --api http://127.0.0.1:API_PORT

1. /echo: the 101 must agree to permessage-deflate; a 2 KiB JSON text message (sent
   compressed, as websockets does by default) comes back equal, and compressed (RSV1).
2. /ws?user=...: the same agreement; subscribe to a channel, publish a 1 KiB JSON message
   through POST /api/publish?wait=delivered, receive it whole (and compressed).

Prints one `ok` line per check; exits 1 with a reason on the first failure, 2 when the
`websockets` module is missing (the Rust test tells skip from failure by that).
"""

import argparse
import asyncio
import json
import sys
import urllib.request

try:
    from websockets.asyncio.client import connect
except ImportError:  # pragma: no cover - the module or its new API is missing
    print("deflate_client.py: cannot import websockets.asyncio.client", file=sys.stderr)
    sys.exit(2)

TIMEOUT = 10


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr)
    sys.exit(1)


def agreed(ws, where):
    """The response's Sec-WebSocket-Extensions must be permessage-deflate, with both
    no_context_takeover parameters (the server requires them, RFC 7692 §7.1.1)."""
    answer = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    params = [p.strip() for p in answer.split(";")]
    if params[0] != "permessage-deflate":
        fail(f"{where}: extensions answer {answer!r}, expected permessage-deflate")
    for p in ("server_no_context_takeover", "client_no_context_takeover"):
        if p not in params:
            fail(f"{where}: extensions answer {answer!r} lacks {p}")
    names = [type(e).__name__ for e in ws.protocol.extensions]
    if names != ["PerMessageDeflate"]:
        fail(f"{where}: websockets is using extensions {names}")
    print(f"ok - {where}: negotiated {answer}")


def watch_rsv1(ws):
    """Records RSV1 of every data frame the extension decodes (a compressed frame)."""
    seen = []
    ext = ws.protocol.extensions[0]
    decode = ext.decode

    def counting(frame, *args, **kwargs):
        seen.append(frame.rsv1)
        return decode(frame, *args, **kwargs)

    ext.decode = counting
    return seen


def record_json(size):
    """A JSON object of about `size` bytes: records, as a push would carry."""
    items, i = [], 0
    while len(json.dumps({"items": items})) < size - 60:
        items.append({"id": 1000 + i, "user": f"user-{i % 17}", "price": f"{i * 7 % 300}.50",
                      "tags": ["red", "sale"] if i % 2 else ["blue", "new"]})
        i += 1
    return {"kind": "python-deflate", "items": items}


async def echo(base):
    async with connect(f"{base}/echo", open_timeout=TIMEOUT) as ws:
        agreed(ws, "/echo")
        seen = watch_rsv1(ws)
        text = json.dumps(record_json(2048))
        if not 1900 <= len(text.encode()) <= 2100:
            fail(f"the echo message is {len(text)} bytes, expected about 2 KiB")
        await ws.send(text)
        back = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if back != text:
            fail(f"/echo answered {len(back)} different bytes for {len(text)}")
        if seen != [True]:
            fail(f"/echo reply frames had RSV1 {seen}, expected one compressed frame")
        print(f"ok - /echo: {len(text)}-byte JSON echoed, compressed both ways")


async def push(base, api):
    channel = "py-deflate"
    async with connect(f"{base}/ws?user=python-deflate", open_timeout=TIMEOUT) as ws:
        agreed(ws, "/ws")
        seen = watch_rsv1(ws)
        await ws.send(json.dumps({"op": "subscribe", "channel": channel}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if msg.get("op") == "error":
                fail(f"subscribe answered {msg}")
            if msg.get("op") == "subscribed" and msg.get("channel") == channel:
                break
        data = record_json(1024)
        body = json.dumps({"channel": channel, "data": data}).encode()
        req = urllib.request.Request(f"{api}/api/publish?wait=delivered", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            answer = json.loads(resp.read())
        if answer.get("delivered") != 1:
            fail(f"publish answered {answer}, expected delivered 1")
        before = len(seen)
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if msg.get("op") == "message" and msg.get("channel") == channel:
                break
        if msg.get("data") != data or msg.get("seq") != answer.get("seq"):
            fail(f"received {msg!r:.200}, expected the published data with seq {answer.get('seq')}")
        if not seen[before:] or not seen[-1]:
            fail(f"the published message arrived without RSV1 (frames {seen[before:]})")
        size = len(json.dumps(data))
        print(f"ok - /ws: published {size}-byte JSON received whole, compressed")


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ws", required=True, help="ws://host:port of the public listener")
    parser.add_argument("--api", required=True, help="http://host:port of the push API")
    args = parser.parse_args()
    await echo(args.ws)
    await push(args.ws, args.api)


if __name__ == "__main__":
    asyncio.run(main())
