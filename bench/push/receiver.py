"""bench/push helper, run with the product's .venv (it has aiohttp):

    receiver.py serve --port P          a fast aiohttp endpoint that records what pushes deliver
    receiver.py replay --url U --file F --concurrency N
                                        the bare loop: POST recorded bodies, one task per path, in order

The receiver answers 200 to every POST, counts calls and rows, and remembers each row's arrival time
(``time.time()``, the same clock the server's job status uses on this host) and each call's body so
the bare loop can send exactly the same batches.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web


def rows_in(body: bytes, ctype: str) -> list[dict]:
    if ctype.startswith("application/x-www-form-urlencoded"):
        return json.loads(parse_qs(body.decode())["json"][0])
    if ctype.startswith("application/x-ndjson"):
        return [json.loads(line) for line in body.splitlines() if line]
    return json.loads(body)


def serve(port: int) -> None:
    state = {"calls": 0, "rows": 0, "arrivals": {}, "bodies": defaultdict(list), "webhook_ids": set()}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        rows = rows_in(body, request.headers.get("content-type", ""))
        state["calls"] += 1
        wid = request.headers.get("webhook-id")
        if wid not in state["webhook_ids"]:
            state["webhook_ids"].add(wid)
            state["rows"] += len(rows)
        for row in rows:
            state["arrivals"].setdefault(f"{request.path}:{row.get('id')}", now)
        if request.query.get("keep") != "0":
            state["bodies"][request.path].append(body.decode())
        return web.Response(status=200)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"calls": state["calls"], "rows": state["rows"], "distinct": len(state["arrivals"]),
                                  "last": max(state["arrivals"].values(), default=None)})

    async def arrivals(_request: web.Request) -> web.Response:
        return web.json_response(state["arrivals"])

    async def dump(request: web.Request) -> web.Response:
        with open(request.query["file"], "w") as f:
            for path, bodies in state["bodies"].items():
                for body in bodies:
                    f.write(json.dumps({"path": path, "body": body}) + "\n")
        return web.json_response({"written": sum(len(b) for b in state["bodies"].values())})

    async def reset(_request: web.Request) -> web.Response:
        state.update(calls=0, rows=0, arrivals={}, bodies=defaultdict(list), webhook_ids=set())
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", arrivals)
    app.router.add_post("/_dump", dump)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def replay(url: str, path: str, concurrency: int) -> None:
    per_path: dict[str, list[bytes]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            item = json.loads(line)
            per_path[item["path"]].append(item["body"].encode())
    connector = aiohttp.TCPConnector(limit=100)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one_path(p: str, bodies: list[bytes]) -> int:
            async with semaphore:
                for body in bodies:  # in order, one at a time per path, like a push
                    async with session.post(url + p + "?keep=0", data=body, headers=headers) as r:
                        await r.read()
                        assert r.status == 200
            return len(bodies)

        started = time.perf_counter()
        calls = sum(await asyncio.gather(*(one_path(p, b) for p, b in per_path.items())))
        elapsed = time.perf_counter() - started
    print(json.dumps({"calls": calls, "seconds": elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    r = sub.add_parser("replay")
    r.add_argument("--url", required=True)
    r.add_argument("--file", required=True)
    r.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.port)
    else:
        asyncio.run(replay(args.url, args.file, args.concurrency))


if __name__ == "__main__":
    sys.exit(main())
