#!/usr/bin/env python3
"""A task's server for the load-balancing tests: on every TCP port given and on UDP 9999 it
answers with its own address and the peer's ("OWN PEER"). An HTTP GET gets that as the body of
one response; any other line gets it back, once per line, on a connection kept open. Every new
connection's peer is printed (the task's log)."""
import socket
import sys
import threading

# Linux <netinet/in.h>; the socket module does not export it.
IP_PKTINFO = 8


def own(sock):
    return sock.getsockname()[0]


def tcp_conn(conn, peer):
    print(f"tcp from {peer[0]}:{peer[1]}", flush=True)
    f = conn.makefile("rb")
    try:
        first = f.readline()
        if not first:
            return
        body = f"{own(conn)} {peer[0]}\n".encode()
        if first.startswith(b"GET "):
            while f.readline() not in (b"\r\n", b"\n", b""):
                pass
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        line = first
        while line:
            conn.sendall(body)
            line = f.readline()
    except OSError:
        pass
    finally:
        conn.close()


def tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(512)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=tcp_conn, args=(conn, peer), daemon=True).start()


def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind(("0.0.0.0", port))
    while True:
        data, anc, _, peer = s.recvmsg(2048, socket.CMSG_SPACE(12))
        # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr }: addr is where the
        # datagram was sent to (this task's address); the reply leaves from it.
        own_addr = "?"
        for level, kind, payload in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                own_addr = socket.inet_ntoa(payload[8:12])
        s.sendto(f"{own_addr} {peer[0]}".encode(), peer)


if __name__ == "__main__":
    ports = [int(p) for p in sys.argv[1:]] or [80]
    threading.Thread(target=udp, args=(9999,), daemon=True).start()
    for p in ports[1:]:
        threading.Thread(target=tcp, args=(p,), daemon=True).start()
    tcp(ports[0])
