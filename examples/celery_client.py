"""Interop between Python Celery and a weft worker, on Redis (or RabbitMQ plus Redis).

1. Start the weft worker:    cargo run --features redis --example celery_worker
2. Run this script:          python examples/celery_client.py [redis://127.0.0.1:6379/0 [BROKER]]

With a second argument (e.g. amqp://guest:guest@127.0.0.1:5672//) that is the broker and the
first is the result backend; start the worker with the same BROKER_URL and REDIS_URL.

Python sends `add` and `fail` to the default queue `celery`; the weft worker runs them.
To have weft send tasks that a Python worker runs, see `weft::celery::Client` (and
tests/celery.rs, `weft_sends_python_worker_runs_weft_reads`, with tests/fixtures/celery/pytasks.py).
"""
import sys

from celery import Celery

url = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
broker = sys.argv[2] if len(sys.argv) > 2 else url
app = Celery("client", broker=broker, backend=url)

print("add(2, 3) =", app.send_task("add", args=[2, 3]).get(timeout=10))
print("urgent add(40, 2) =", app.send_task("add", args=[40, 2], priority=0).get(timeout=10))
try:
    app.send_task("fail").get(timeout=10)
except Exception as e:  # a RuntimeError raised by the Rust task
    print("fail() raised", type(e).__name__, e)
print("weft workers answering ping:", app.control.ping(timeout=1.0))
