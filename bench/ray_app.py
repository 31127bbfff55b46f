"""A trivial Ray Serve deployment for bench/router_overhead.sh: answers `ok` to every request
under /bench through Ray Serve's HTTP proxy on 127.0.0.1:PORT, the same answer the trivial nginx
backend gives. One replica; max_ongoing_requests raised from Ray's default (5) so the proxy is
measured, not an admission limit we chose. Prints READY and serves until SIGTERM.

Usage: ray_app.py PORT
"""

import signal
import sys
import threading

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse


@serve.deployment(num_replicas=1, max_ongoing_requests=256)
class Ok:
    async def __call__(self, request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("ok\n")


def main() -> None:
    port = int(sys.argv[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Ok.bind(), name="bench", route_prefix="/bench")
    print("READY", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
