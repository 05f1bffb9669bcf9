#!/usr/bin/env python3
"""The load-balancing tests' client, run inside a task's namespace and cgroup.

  client.py http HOST PORT N        N HTTP GETs, one connection each
  client.py udp HOST PORT N         N datagrams from one unconnected socket
  client.py hold HOST PORT K        keeps connections to K distinct backends open, then obeys
                                    stdin: "check" (a line on each), "new N" (N new
                                    connections), "loop" (a connection every 20 ms until
                                    "stop": [ms since the loop's start, backend or FAIL],
                                    and the start as Unix time in ms), "quit"
Each prints one JSON object per result line."""
import json
import select
import socket
import sys
import time


def http_get(host, port):
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise OSError(f"bad answer {head[:40]!r}")
    return body.decode().split()[0]


def line_conn(host, port):
    s = socket.create_connection((host, port), timeout=2)
    f = s.makefile("rb")
    s.sendall(b"hello\n")
    words = f.readline().decode().split()
    if not words:
        # Accepted, then closed without a word: a backend going away (a stopping task).
        s.close()
        raise OSError("closed without an answer")
    return s, f, words[0]


def ask(s, f):
    s.sendall(b"again\n")
    reply = f.readline().decode().split()
    if not reply:
        raise OSError("closed")
    return reply[0]


def http(host, port, n):
    ok, fail, backends, errors = 0, 0, {}, {}
    for _ in range(n):
        try:
            b = http_get(host, port)
            ok += 1
            backends[b] = backends.get(b, 0) + 1
        except OSError as e:
            fail += 1
            errors[str(e)] = errors.get(str(e), 0) + 1
    print(json.dumps({"ok": ok, "fail": fail, "backends": backends, "errors": errors}))


def udp(host, port, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    ok, fail, bad_source, backends = 0, 0, [], {}
    for i in range(n):
        try:
            s.sendto(f"ping{i}".encode(), (host, port))
            data, src = s.recvfrom(2048)
            if src != (host, port):
                bad_source.append(f"{src[0]}:{src[1]}")
            words = data.decode().split()
            # The reply's source address as the backend's socket saw it: its own address.
            backends[words[0]] = backends.get(words[0], 0) + 1
            ok += 1
        except OSError:
            fail += 1
    print(json.dumps({"ok": ok, "fail": fail, "bad_source": bad_source, "backends": backends}))


def hold(host, port, k):
    held = {}
    for _ in range(300):
        if len(held) >= k:
            break
        try:
            s, f, b = line_conn(host, port)
        except OSError:
            continue
        if b in held:
            s.close()
        else:
            held[b] = (s, f)
    print(json.dumps({"ready": sorted(held)}), flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "check":
            out = {}
            for b, (s, f) in held.items():
                try:
                    out[b] = ask(s, f) == b
                except OSError:
                    out[b] = False
            print(json.dumps({"check": out}), flush=True)
        elif cmd[0] == "new":
            backends, fail = {}, 0
            for _ in range(int(cmd[1])):
                try:
                    s, f, b = line_conn(host, port)
                    s.close()
                    backends[b] = backends.get(b, 0) + 1
                except OSError:
                    fail += 1
            print(json.dumps({"new": backends, "fail": fail}), flush=True)
        elif cmd[0] == "loop":
            start = time.monotonic()
            # Wall-clock start, so the test can place its own actions on the loop's time line.
            start_wall_ms = time.time() * 1000
            events = []
            while True:
                r, _, _ = select.select([sys.stdin], [], [], 0.02)
                if r:
                    sys.stdin.readline()
                    break
                t = round((time.monotonic() - start) * 1000)
                try:
                    s, f, b = line_conn(host, port)
                    s.close()
                    events.append([t, b])
                except OSError as e:
                    events.append([t, "FAIL " + str(e)])
            print(json.dumps({"loop": events, "start_ms": start_wall_ms}), flush=True)
        elif cmd[0] == "quit":
            break


if __name__ == "__main__":
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    {"http": http, "udp": udp, "hold": hold}[mode](host, port, n)
