"""Redis's own CPU per task for kombu's layout, with the least a worker can send.

Not a cargo bench (cargo builds only `benches/*.rs`): a Python script, run with the CI
virtualenv's Python (redis-py and Celery), against a Redis of its own:

    target/celery-venv/bin/python benches/redis_floor.py redis://127.0.0.1:16400/0 8 20000

It captures one envelope sent by Python Celery (`send_task('noop')`), pushes N copies
(each with its own delivery tag) onto a fresh list, then drains it as a perfect weft
worker would at a take size of T: weft's take script (read from
`src/celery/redis/mod.rs`, the one the worker runs), then, for the T messages taken, one
`MULTI` with `SETEX` + `PUBLISH` of each result, one `ZREM` and one `HDEL` for the
acknowledgements and the settler's marker. Printed: Redis's CPU (`INFO cpu`) and the
script's and `EXEC`'s time (`INFO commandstats`) per task. No worker work is timed: this
is the floor of what Redis spends per task at that take size, however fast the worker.
"""

import pathlib
import re
import sys
import time
import uuid

import redis
from celery import Celery

url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
take = int(sys.argv[2]) if len(sys.argv) > 2 else 8
n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000

src = pathlib.Path(__file__).resolve().parent.parent / "src/celery/redis/mod.rs"
lua = re.search(
    r'static POP_AND_RECORD.*?r#"(.*?)"#', src.read_text(), re.S
).group(1)

r = redis.Redis.from_url(url)
queue = "weft-floor-" + uuid.uuid4().hex
app = Celery(broker=url, backend=url)
app.send_task("noop", queue=queue)
envelope = r.rpop(queue).decode()
tag = re.search(r'"delivery_tag": "([^"]+)"', envelope).group(1)

record = "weft-floor-fetch-" + uuid.uuid4().hex
index, unacked = "weft-floor-unacked_index", "weft-floor-unacked"
pipe = r.pipeline(transaction=False)
for _ in range(n):
    pipe.lpush(queue, envelope.replace(tag, str(uuid.uuid4())))
pipe.execute()

meta = (
    '{"status": "SUCCESS", "result": null, "traceback": null, "children": [], '
    '"date_done": "2026-12-06T00:00:00.000000+00:00", "task_id": "%s"}'
)
sha = r.script_load(lua)


def cpu():
    info = r.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


r.config_resetstat()
c0, seq, done, results = cpu(), 0, 0, []
while True:
    seq += 1
    got = r.evalsha(sha, 4, index, unacked, record, queue, take, time.time(), seq, queue)
    if not got:
        break
    tags = [got[i + 2] for i in range(0, len(got), 3)]
    pipe = r.pipeline(transaction=True)
    for t in tags:
        key = "weft-floor-meta-" + t.decode()
        results.append(key)
        pipe.setex(key, 600, meta % t.decode())
        pipe.publish(key, meta % t.decode())
    pipe.zrem(index, *tags).hdel(unacked, *tags)
    pipe.setex(record + ".settled", 600, seq)
    pipe.execute()
    done += len(tags)
c1 = cpu()
stats = r.info("commandstats")
left = r.hlen(unacked)
for i in range(0, len(results), 1000):
    r.delete(*results[i : i + 1000])
r.delete(queue, index, unacked, record, record + ".settled")
print(
    "take %d, %d tasks: Redis CPU %.1f us/task (script %.1f, EXEC %.1f); left unacked: %d"
    % (
        take,
        done,
        (c1 - c0) * 1e6 / done,
        stats["cmdstat_evalsha"]["usec"] / done,
        stats["cmdstat_exec"]["usec"] / done,
        left,
    )
)
