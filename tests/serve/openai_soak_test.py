#!/usr/bin/env python3
"""Soak with the official `openai` async client, idle and under CPU load: 200
streaming chat requests from 32 concurrent clients sharing one connection
pool, 20% of them closing their stream after 3 chunks, 10% malformed bodies
sent on connections of their own, and 5% from a client so starved that its
body arrives 6 s after its head (httpx writes them separately), followed by
a second request on the same connection. Run once on a quiet machine and
once while busy-loop processes load every core (FINMOE_SOAK_LOAD of them,
default one per core).

In both runs every valid request must stream to its end (finish_reason stop
or length, then the usage chunk), every malformed one must get a 400 with an
OpenAI error object, and no request may fail any other way: the client
retries nothing (max_retries=0), so a stale or half-read keep-alive
connection shows up as a lost request.

Usage: openai_soak_test.py FINMOE_BINARY TEST_DATA_DIR  (exit 77 = skipped)
"""
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

openai = serve_util.import_openai()

FINMOE, DATA = serve_util.args()
MODEL = "soak"
NUM_REQUESTS = 200
CLIENTS = 32
WORDS = ["revenue", "equity", "bond", "yield", "asset", "margin", "dividend", "cash", "flow", "ratio", "loan"]
MALFORMED = [b'{"messages": [', b'{"messages": "hello"}', b'{"messages": [{"role": "user", "content": "x"}], "n": 0}',
             b'{"messages": [{"role": "user", "content": "x"}], "temperature": 9}', b"\xff\xfe", b"[]",
             b'{"messages": [{"role": "robot", "content": "x"}]}', b'{"model": "other", "messages": []}']


def plan(rng):
    kinds = (["valid"] * 65 + ["slow"] * 5 + ["close"] * 20 + ["malformed"] * 10) * (NUM_REQUESTS // 100 + 1)
    kinds = kinds[:NUM_REQUESTS]
    rng.shuffle(kinds)
    jobs = []
    for i, kind in enumerate(kinds):
        jobs.append({"i": i, "kind": kind, "words": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))),
                     "max_tokens": rng.randint(4, 32) if kind == "valid" else 200,
                     "temperature": rng.choice([0, 0.8]), "n": 2 if rng.random() < 0.2 else 1,
                     "bad": MALFORMED[i % len(MALFORMED)]})
    return jobs


async def run_valid(client, job):
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": job["words"]}], max_tokens=job["max_tokens"],
        temperature=job["temperature"], seed=job["i"], n=job["n"], stream=True,
        stream_options={"include_usage": True})
    finished, usage = {}, None
    async for chunk in stream:
        for c in chunk.choices:
            if c.finish_reason:
                finished[c.index] = c.finish_reason
        if chunk.usage:
            usage = chunk.usage
    ok = set(finished) == set(range(job["n"])) and all(r in ("stop", "length") for r in finished.values())
    return ok and usage is not None, (finished, usage)


async def run_close(client, job):
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": job["words"]}], max_tokens=job["max_tokens"],
        temperature=job["temperature"], seed=job["i"], stream=True, extra_body={"ignore_eos": True})
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.close()
    return got == 3, got


async def read_http_response(reader):
    """(status, body bytes) of one response, Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)}
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                return status, body
    return status, await reader.readexactly(int(headers.get(b"content-length", b"0")))


async def run_slow(server, job):
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": job["words"]}],
                       "max_tokens": 8, "seed": job["i"]}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(6)
        writer.write(body)
        await writer.drain()
        first = await read_http_response(reader)
        writer.write(head + body)  # the next request on the kept-alive connection
        await writer.drain()
        second = await read_http_response(reader)
        ok = first[0] == 200 and second[0] == 200 and all(json.loads(b)["choices"] for _, b in (first, second))
        return ok, (first[0], first[1][:200], second[0], second[1][:200])
    finally:
        writer.close()


async def run_malformed(server, job):
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(job["bad"]) + job["bad"])
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        err = json.loads(await reader.readexactly(length))["error"]
        ok = status == 400 and set(err) == {"message", "type", "param", "code"} and bool(err["message"])
        return ok, (status, err)
    finally:
        writer.close()


async def soak(server):
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    jobs = plan(random.Random(1234))
    queue = list(jobs)
    results = {}

    async def worker():
        while queue:
            job = queue.pop()
            try:
                if job["kind"] == "valid":
                    results[job["i"]] = await run_valid(client, job)
                elif job["kind"] == "close":
                    results[job["i"]] = await run_close(client, job)
                elif job["kind"] == "slow":
                    results[job["i"]] = await run_slow(server, job)
                else:
                    results[job["i"]] = await run_malformed(server, job)
            except openai.APIStatusError as e:  # an HTTP error the server sent
                shaped = isinstance(e.body, dict) and set(e.body) == {"message", "type", "param", "code"}
                results[job["i"]] = (False, "HTTP %d, %s body %r" % (e.status_code, "OpenAI" if shaped else "bare",
                                                                     e.body))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                results[job["i"]] = (False, repr(e))

    t0 = time.time()
    await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    elapsed = time.time() - t0
    await client.close()
    lost = [(j["i"], j["kind"], results[j["i"]][1]) for j in jobs if not results[j["i"]][0]]
    valid = sum(j["kind"] in ("valid", "slow") for j in jobs)
    return lost, valid, elapsed


def busy_loops(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


class OpenAiSoak(unittest.TestCase):
    def test_idle_and_under_cpu_load(self):
        scratch = serve_util.ScratchDir("finmoe-serve-osoak-")
        server = None
        loads = []
        try:
            model = serve_util.make_tiny_model(FINMOE, DATA, scratch.path, seed=5)
            server = serve_util.Server(FINMOE, model, "--served-model-name", MODEL, "--kv-cache-memory", "8MiB",
                                       "--max-num-seqs", "16")
            figures = {}
            for name in ("idle", "loaded"):
                if name == "loaded":
                    loads = busy_loops(int(os.environ.get("FINMOE_SOAK_LOAD", os.cpu_count() or 2)))
                    time.sleep(1)
                lost, valid, elapsed = asyncio.run(soak(server))
                for p in loads:
                    p.kill()
                    p.wait()
                loads = []
                figures[name] = (lost, valid, elapsed)
                print("openai soak %s: %d requests (%d valid) in %.1f s, %d lost"
                      % (name, NUM_REQUESTS, valid, elapsed, len(lost)), file=sys.stderr)
                for x in lost[:10]:
                    print("  lost: %r" % (x,), file=sys.stderr)
            for name, (lost, _, _) in figures.items():
                self.assertEqual(lost, [], "%s run: requests lost" % name)
            self.assertIsNone(server.proc.poll(), "server crashed")
        except Exception:
            if server:
                print(server.log()[-3000:], file=sys.stderr)
            raise
        finally:
            for p in loads:
                p.kill()
                p.wait()
            if server:
                self.assertEqual(server.stop(), 0, "graceful shutdown exits 0")
            scratch.cleanup()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
