#!/usr/bin/python3
"""Servers and clients of the eBPF load-balancer tests (ipvs/tests/ebpf).

server NAME PORT...        TCP on every PORT: send "NAME\n", then echo lines until EOF;
                           UDP on every PORT: answer each datagram with "NAME".
tcp HOST PORT N            N connections; prints JSON {"names": {NAME: count}, "errors": [...],
                           "peers": [getpeername addresses]}.
udp HOST PORT N            N unconnected UDP sockets, one datagram each; prints JSON
                           {"names": {...}, "peers": [recvfrom addresses], "errors": [...]}.
tcp6/udp6 HOST PORT N      the same from a dual-stack AF_INET6 socket to ::ffff:HOST.
refused HOST PORT          one connect with a 5 s timeout; prints JSON {"error": errno name}.
hold HOST PORT OUT GO      connect, write the name read to OUT, wait for file GO to exist, then
                           send a line and append "alive <echo>" or "dead <error>" to OUT.
"""
import errno
import json
import os
import socket
import sys
import threading
import time


def serve_tcp(name, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(name, c), daemon=True).start()


def handle(name, c):
    try:
        c.sendall((name + "\n").encode())
        f = c.makefile("rb")
        for line in f:
            c.sendall(line)
    except OSError:
        pass
    finally:
        c.close()


def serve_udp(name, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        _, peer = s.recvfrom(2048)
        s.sendto(name.encode(), peer)


def server(name, ports):
    for p in ports:
        threading.Thread(target=serve_tcp, args=(name, p), daemon=True).start()
        threading.Thread(target=serve_udp, args=(name, p), daemon=True).start()
    print("serving", name, ports, flush=True)
    while True:
        time.sleep(3600)


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        buf += chunk
    return buf.decode().strip()


def family(host, v6):
    if v6:
        return socket.AF_INET6, "::ffff:" + host
    return socket.AF_INET, host


def tcp(host, port, n, v6=False):
    fam, host = family(host, v6)
    names, errors, peers = {}, [], set()
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
            peers.add(s.getpeername()[0])
            name = read_line(s)
            names[name] = names.get(name, 0) + 1
        except OSError as e:
            errors.append(errno.errorcode.get(e.errno, str(e)))
        finally:
            s.close()
    print(json.dumps({"names": names, "errors": errors, "peers": sorted(peers)}))


def udp(host, port, n, v6=False):
    fam, host = family(host, v6)
    names, errors, peers = {}, [], set()
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(3)
        try:
            s.sendto(b"hello", (host, port))
            data, peer = s.recvfrom(2048)
            peers.add("%s:%d" % peer[:2])
            name = data.decode()
            names[name] = names.get(name, 0) + 1
        except OSError as e:
            errors.append(errno.errorcode.get(e.errno, str(e)))
        finally:
            s.close()
    print(json.dumps({"names": names, "errors": errors, "peers": sorted(peers)}))


def refused(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        print(json.dumps({"error": None}))
    except socket.timeout:
        print(json.dumps({"error": "timeout"}))
    except OSError as e:
        print(json.dumps({"error": errno.errorcode.get(e.errno, str(e))}))


def hold(host, port, out, go):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((host, port))
    name = read_line(s)
    with open(out, "w") as f:
        f.write(name + "\n")
    while not os.path.exists(go):
        time.sleep(0.02)
    try:
        s.sendall(b"ping\n")
        echo = read_line(s)
        result = "alive " + echo if echo else "dead eof"
    except OSError as e:
        result = "dead " + str(e)
    with open(out, "a") as f:
        f.write(result + "\n")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "server":
        server(args[0], [int(p) for p in args[1:]])
    elif mode == "tcp":
        tcp(args[0], int(args[1]), int(args[2]))
    elif mode == "udp":
        udp(args[0], int(args[1]), int(args[2]))
    elif mode == "tcp6":
        tcp(args[0], int(args[1]), int(args[2]), v6=True)
    elif mode == "udp6":
        udp(args[0], int(args[1]), int(args[2]), v6=True)
    elif mode == "refused":
        refused(args[0], int(args[1]))
    elif mode == "hold":
        hold(args[0], int(args[1]), args[2], args[3])
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
