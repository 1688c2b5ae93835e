"""bench/push helper, run with the product's .venv (it has aiohttp):

    receiver.py serve --port P          a fast aiohttp endpoint that records what pushes deliver
    receiver.py replay --url U --file F --concurrency N
                                        the bare loop: POST recorded bodies, one task per path, in order
    receiver.py arrive --api A --key K --prefix P --total N --datasets D [--forward R]
                                        rows arriving: POST 100-row loads to Pushbase (?wait=true, 4 at
                                        a time, round robin over the datasets); with --forward, also
                                        POST each load's rows to R/<dataset> once its job is Complete
                                        (the bare loop facing the same arrival as the pushes)

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


def load_rows(prefix: str, total: int, datasets: int, rows_per_load: int) -> list[tuple[str, list[dict]]]:
    out = []
    for k, start in enumerate(range(0, total, rows_per_load)):
        rows = [{"id": i, "name": f"row {i}", "amount": i * 0.5} for i in range(start, min(start + rows_per_load, total))]
        out.append((f"{prefix}{k % datasets:02d}", rows))
    return out


async def arrive(api: str, key: str, prefix: str, total: int, datasets: int, rows_per_load: int, concurrency: int, forward: str | None) -> None:
    items = load_rows(prefix, total, datasets, rows_per_load)
    bodies = [(name, json.dumps(rows).encode()) for name, rows in items]
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    headers = {"content-type": "application/json", "x-api-key": key}
    forwards: list[asyncio.Task] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        async def send_on(name: str, body: bytes) -> None:
            async with session.post(f"{forward}/{name}?keep=0", data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                assert r.status == 200

        async def worker() -> None:
            while not queue.empty():
                name, body = queue.get_nowait()
                async with session.post(f"{api}/api/datasets/{name}/data?wait=true", data=body, headers=headers) as r:
                    doc = await r.json()
                    if r.status != 200 or doc.get("status") != "Complete":
                        raise RuntimeError(f"load -> {r.status}: {str(doc)[:300]}")
                if forward:
                    forwards.append(asyncio.get_running_loop().create_task(send_on(name, body)))

        started = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        loaded = time.time()
        await asyncio.gather(*forwards)
    print(json.dumps({"started": started, "loaded": loaded, "loads": len(bodies)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    r = sub.add_parser("replay")
    r.add_argument("--url", required=True)
    r.add_argument("--file", required=True)
    r.add_argument("--concurrency", type=int, default=20)
    a = sub.add_parser("arrive")
    a.add_argument("--api", required=True)
    a.add_argument("--key", required=True)
    a.add_argument("--prefix", required=True)
    a.add_argument("--total", type=int, required=True)
    a.add_argument("--datasets", type=int, required=True)
    a.add_argument("--rows-per-load", type=int, default=100)
    a.add_argument("--concurrency", type=int, default=4)
    a.add_argument("--forward")
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.port)
    elif args.cmd == "arrive":
        asyncio.run(arrive(args.api, args.key, args.prefix, args.total, args.datasets, args.rows_per_load, args.concurrency, args.forward))
    else:
        asyncio.run(replay(args.url, args.file, args.concurrency))


if __name__ == "__main__":
    sys.exit(main())
