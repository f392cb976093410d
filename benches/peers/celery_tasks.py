"""The task Celery's worker runs for celery_bench.py (broker and result
backend: the private Redis whose URL is in RINGLEADER_PEERS_REDIS)."""

import os

from celery import Celery

url = os.environ.get("RINGLEADER_PEERS_REDIS", "redis://127.0.0.1:6379/0")
app = Celery("celery_tasks", broker=url, backend=url)
app.conf.update(
    worker_prefetch_multiplier=4,
    task_acks_late=False,
    result_expires=600,
    broker_connection_retry_on_startup=True,
)


@app.task
def square(x):
    return x * 2
