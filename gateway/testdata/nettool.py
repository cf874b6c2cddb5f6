#!/usr/bin/python3
"""Test peers for the gateway's namespace tests (run with ip netns exec).

  nettool.py udp-echo HOST PORT           answer each datagram with "ADDR:PORT" of its sender
  nettool.py tcp-serve HOST PORT NBYTES   send NBYTES of seeded pseudo-random data to each client
  nettool.py udp-client HOST PORT N       send N datagrams, print "replies R mapped ADDR:PORT"
  nettool.py tcp-get HOST PORT NBYTES     download, print "ok NBYTES" if the data is intact
  nettool.py hairpin HOST PORT            two sockets learn their mappings from the echo server,
                                          then talk through the NAT's external endpoints
"""
import hashlib, random, socket, sys, threading

def data(n):
    return random.Random(7).randbytes(n)

def udp_echo(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    print("ready", flush=True)
    while True:
        b, a = s.recvfrom(2048)
        s.sendto(("%s:%d" % a).encode(), a)

def tcp_serve(host, port, n):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((host, port))
    l.listen(16)
    d = data(n)
    print("ready", flush=True)
    while True:
        c, _ = l.accept()
        def send(c):
            try:
                c.sendall(d)
            finally:
                c.close()
        threading.Thread(target=send, args=(c,), daemon=True).start()

def udp_client(host, port, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    got, mapped = 0, "-"
    for i in range(n):
        s.sendto(b"x" * 32, (host, port))
        try:
            b, _ = s.recvfrom(2048)
            got += 1
            mapped = b.decode()
        except socket.timeout:
            pass
    print("replies %d mapped %s" % (got, mapped))

def tcp_get(host, port, n):
    c = socket.create_connection((host, port), timeout=10)
    h, total = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
        total += len(b)
    ok = total == n and h.digest() == hashlib.sha256(data(n)).digest()
    print("%s %d" % ("ok" if ok else "corrupt", total))

def hairpin(host, port):
    def sock(local):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((local, 0))
        s.settimeout(1)
        s.sendto(b"who", (host, port))
        a, p = s.recvfrom(2048)[0].decode().split(":")
        return s, (a, int(p))
    a, ea = sock("10.0.0.2")
    b, eb = sock("10.0.0.3")
    b.sendto(b"open", ea)  # opens B's filter towards A's external endpoint
    for _ in range(3):
        a.sendto(b"hello", eb)
        try:
            msg, src = b.recvfrom(2048)
            print("hairpin ok from %s:%d (a external %s:%d)" % (src[0], src[1], ea[0], ea[1]))
            return
        except socket.timeout:
            pass
    print("hairpin none")

if __name__ == "__main__":
    m, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"udp-echo": lambda: udp_echo(host, port),
     "tcp-serve": lambda: tcp_serve(host, port, int(sys.argv[4])),
     "udp-client": lambda: udp_client(host, port, int(sys.argv[4])),
     "tcp-get": lambda: tcp_get(host, port, int(sys.argv[4])),
     "hairpin": lambda: hairpin(host, port)}[m]()
