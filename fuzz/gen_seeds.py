#!/usr/bin/env python3
"""Writes the seed corpus: a few valid handshakes and frame streams.

Run from anywhere: `python3 fuzz/gen_seeds.py`. Files go to fuzz/seeds/<target>/ (checked in);
libFuzzer writes what it finds to fuzz/corpus/<target>/ (ignored by git).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload, fin=True, key=KEY):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if key else 0
    if n < 126:
        head = bytes([b0, mask_bit | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mask_bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mask_bit | 127]) + struct.pack(">Q", n)
    if key:
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def stream(key):
    s = b""
    s += frame(0x1, b"Hello", key=key)
    s += frame(0x1, "κό".encode(), fin=False, key=key)
    s += frame(0x9, b"p1", key=key)
    s += frame(0x0, "σμε".encode()[:3], fin=False, key=key)
    s += frame(0x0, "σμε".encode()[3:], key=key)
    s += frame(0x2, bytes(300), key=key)
    s += frame(0xA, b"", key=key)
    s += frame(0x1, b"", key=key)
    s += frame(0x8, b"\x03\xe8bye", key=key)
    return s


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# Decoder inputs: [pattern, size selector, seed lo, seed hi] + stream.
decoder_seeds = {
    "mixed_masked": bytes([4, 7, 1, 0]) + stream(KEY),
    "mixed_unmasked": bytes([2, 7, 9, 0]) + stream(None),
    "bytewise": bytes([0, 5, 0, 0]) + stream(KEY),
    "len16": bytes([5, 7, 3, 1]) + frame(0x2, bytes(range(256)) * 2),
    "len64_header": bytes([1, 7, 5, 0])
    + bytes([0x82, 0xFF]) + struct.pack(">Q", 70000) + KEY + bytes(64),
    "too_big": bytes([3, 2, 7, 0]) + frame(0x1, b"x" * 11),
    "bad_utf8": bytes([0, 7, 0, 0]) + frame(0x1, b"\xce\xba\xf4\x90\x80\x80hello"),
    "close_codes": bytes([3, 7, 2, 0])
    + frame(0x8, b"\x03\xed")
    + frame(0x8, b"\x0f\xa0reason")
    + frame(0x8, b""),
    "fragments_with_ping": bytes([4, 6, 4, 0])
    + frame(0x1, b"a" * 40, fin=False)
    + frame(0x9, b"ping")
    + frame(0x0, "€".encode()[:1], fin=False)
    + frame(0x0, "€".encode()[1:]),
}
for name, data in decoder_seeds.items():
    write("decoder", name, data)

CHROME = (
    "GET /ws?channel=news&token=abc HTTP/1.1\r\n"
    "Host: push.example.com\r\n"
    "Connection: Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0.0.0 Safari/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://app.example.com\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Cookie: session=3f9a1c2b; theme=dark\r\n"
    "Authorization: Bearer xyz\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "\r\n"
)
handshake_seeds = {
    "chrome": CHROME,
    "chrome_with_frame": CHROME,  # bytes after the head belong to the WebSocket
    "minimal": "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
    "version8": "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
    "post": "POST /x HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    "plain_get": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "http10": "GET / HTTP/1.0\r\n\r\n",
    "partial": "GET /ws HTTP/1.1\r\nHost: push.exa",
}
for name, text in handshake_seeds.items():
    data = text.encode()
    if name == "chrome_with_frame":
        data += frame(0x1, b"Hello")
    write("handshake", name, data)

# Push API inputs (issue 12): chunked bodies and request-target forms. The older push_input
# seeds were written by hand and are kept as they are.
def chunked(target, body, piece, extra=""):
    out = f"POST {target} HTTP/1.1\r\nHost: h\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), piece):
        part = body[i : i + piece]
        out += f"{len(part):x};ext=1\r\n{part}\r\n"
    return out + "0\r\nX-Trailer: 1\r\n\r\n"


PUBLISH = '{"channel":"news","data":{"n":[1,2,3]}}'
push_input_seeds = {
    "chunked_publish": chunked("/api/publish", PUBLISH, 7),
    "chunked_pipelined": chunked("/api/broadcast", '{"data":1}', 3)
    + "GET /api/stats HTTP/1.1\r\n\r\n",
    "chunked_with_length": chunked("/api/publish", PUBLISH, 64, "Content-Length: 5\r\n"),
    "chunked_gzip": chunked("/api/publish", PUBLISH, 64, "Transfer-Encoding: gzip\r\n"),
    "chunked_bad_size": "POST /api/send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "fffffffffffffffff\r\n",
    "chunked_http10": "POST /api/broadcast HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    "a\r\n{\"data\":1}\r\n0\r\n\r\n",
    "absolute_form": "GET http://127.0.0.1:8081/api/presence?channel=news HTTP/1.1\r\n"
    "Host: 127.0.0.1:8081\r\n\r\n"
    + "POST HTTPS://h/api/send HTTP/1.1\r\nContent-Length: 23\r\n\r\n"
    '{"user":"u","data":"x"}',
    "other_targets": "OPTIONS * HTTP/1.1\r\n\r\nCONNECT h:443 HTTP/1.1\r\n\r\n"
    "GET /api/stats#f HTTP/1.1\r\n\r\n",
    "repeated_fields": "GET /api/stats HTTP/1.1\r\nHost: a\r\nHost: a\r\n"
    "Authorization: Bearer k3y\r\n\r\n",
    "origins": "https://App.Example.com:443|https://app.example.com",
}
for name, text in push_input_seeds.items():
    write("push_input", name, text.encode())
