#!/usr/bin/env python3
"""Idle push connections: N raw-socket clients, each its own user (?user=pN), subscribed to
channel `news` (plus its `$user`); prints the server's RSS growth per connection."""
import os, socket, sys, time, struct

host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")

def masked_text(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    head = bytes([0x81, 0x80 | len(payload)]) + key
    return head + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

sub = masked_text(b'{"op":"subscribe","channel":"news"}')
time.sleep(0.5)
before = rss(pid)
socks = []
t0 = time.time()
for i in range(n):
    s = socket.create_connection((host, port))
    req = (f"GET /ws?user=p{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    s.sendall(req + sub)
    got = b""
    while got.count(b'"subscribed"') < 2:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f"connection {i} closed: {got!r}")
        got += chunk
    socks.append(s)
opened = time.time() - t0
time.sleep(2)
after = rss(pid)
print(f"push_idle n={n} bytes_per_conn={(after - before) / n:.1f} open_s={opened:.1f}")
for s in socks:
    s.close()
