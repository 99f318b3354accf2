# 500 connections each sending 400 kB of an unfinished header; the node's RSS after.
# Build first: cargo build --release --features "service cli" --example node
# Usage: python3 benches/service/bighead.py target/release/examples/node
import os, socket, subprocess, sys, time
binary = sys.argv[1]; port = 19000 + os.getpid() % 1000
node = subprocess.Popen([binary, "--ephemeral", "--tcp", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL); time.sleep(1)
def rss():
    for l in open(f"/proc/{node.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
print("start rss", rss(), "MB")
conns = []
chunk = b"x-big: " + b"a" * (400 << 10)
for i in range(500):
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(0.05)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n" + chunk)
    except OSError: pass
    conns.append(s)
time.sleep(2)
print("after 500 unfinished 400 kB heads: rss", rss(), "MB; open fds", len(os.listdir(f"/proc/{node.pid}/fd")))
node.terminate(); node.wait()
