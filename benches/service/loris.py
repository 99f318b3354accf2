# Opens N connections to a weft node on TCP and trickles one header byte per connection
# every GAP seconds; samples the node's open files and RSS, and whether /healthz answers.
# Build first: cargo build --release --features "service cli" --example node
# Usage: python3 benches/service/loris.py target/release/examples/node 2000 3 21
import os, socket, subprocess, sys, time
binary, n, gap, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
port = 18000 + os.getpid() % 1000
node = subprocess.Popen([binary, "--ephemeral", "--tcp", f"127.0.0.1:{port}"] + sys.argv[5:], stdout=subprocess.DEVNULL)
time.sleep(1)
def fds(): return len(os.listdir(f"/proc/{node.pid}/fd"))
def rss():
    for l in open(f"/proc/{node.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
def health():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return s.recv(100).split(b"\r\n")[0].decode()
    except Exception as e:
        return f"no answer ({type(e).__name__})"
print(f"start: fds={fds()} rss={rss()}MB")
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.setblocking(False)
    try: s.send(b"GET /healthz HTTP/1.1\r\n")
    except OSError: pass
    conns.append(s)
t0 = time.time(); last = 0
while time.time() - t0 < dur:
    time.sleep(gap)
    for s in conns:
        try: s.send(b"x")
        except OSError: pass
    el = time.time() - t0
    print(f"t={el:4.0f}s fds={fds()} rss={rss()}MB healthz: {health()}")
node.terminate(); node.wait()
