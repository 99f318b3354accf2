# 500 failing tasks with 1 MB messages, then one `GET /v1/tasks?limit=1000`; the node's RSS
# after the failures and its peak (VmHWM) after the list.
# Build first: cargo build --release --features "service cli" --example node
# Usage: python3 benches/service/bigresults.py target/release/examples/node [node flags...]
import http.client, json, os, subprocess, sys, time
binary = sys.argv[1]; port = 20000 + os.getpid() % 1000
node = subprocess.Popen([binary, "--ephemeral", "--tcp", f"127.0.0.1:{port}"] + sys.argv[2:], stdout=subprocess.DEVNULL)
def status(field):
    for l in open(f"/proc/{node.pid}/status"):
        if l.startswith(field): return int(l.split()[1]) // 1024
def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"content-type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, data
for _ in range(200):
    try:
        if call("GET", "/healthz")[0] == 200: break
    except OSError: time.sleep(0.05)
print("start: rss", status("VmRSS"), "MB")
message = "m" * 1_000_000
ids = [json.loads(call("POST", "/v1/tasks/fail", {"args": [message]})[1])["id"] for _ in range(500)]
for i in ids[-1:]:
    call("GET", f"/v1/tasks/{i}?wait=30")
time.sleep(1)
print("after 500 failures with 1 MB messages: rss", status("VmRSS"), "MB")
st, data = call("GET", "/v1/tasks?limit=1000")
listed = json.loads(data)
print("list: status", st, "tasks", len(listed["tasks"]), "truncated", listed.get("truncated", False), "bytes", len(data), "; peak rss", status("VmHWM"), "MB")
node.terminate(); node.wait()
