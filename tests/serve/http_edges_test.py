#!/usr/bin/env python3
"""Hostile HTTP against `finmoe serve` on a tiny model, over raw sockets: huge
bodies to routes that take none, lines and headers past the limits, a head
sent a byte at a time, bodies that stop, API keys with something after them.
Each gets its OpenAI error before the server reads what it does not need,
the connection is closed when a request was not read to its end, and the
server keeps serving with its memory where it was. The access log
(--log-level) writes one line per request with its status, latency and tokens.

Standard library only. Usage: http_edges_test.py FINMOE_BINARY TEST_DATA_DIR
"""
import datetime
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
KEY = "sk-edge-test"
HEADER_TIMEOUT = 2
READ_TIMEOUT = 2
SCRATCH = None
SERVER = None


def setUpModule():
    global SCRATCH, SERVER
    SCRATCH = serve_util.ScratchDir("finmoe-serve-edges-")
    model = serve_util.make_tiny_model(FINMOE, DATA, SCRATCH.path)
    key_file = os.path.join(SCRATCH.path, "key")
    with open(key_file, "w") as f:
        f.write(KEY + "\n")
    SERVER = serve_util.Server(FINMOE, model, "--served-model-name", "edge", "--kv-cache-memory", "8MiB",
                               "--api-key-file", key_file, "--max-body-bytes", "1048576",
                               "--header-timeout", str(HEADER_TIMEOUT), "--read-timeout", str(READ_TIMEOUT),
                               "--keep-alive-timeout", "5")


def tearDownModule():
    try:
        if SERVER:
            assert SERVER.stop() == 0, SERVER.log()
    finally:
        SCRATCH.cleanup()


def connect(timeout=10):
    return socket.create_connection((SERVER.host, SERVER.port), timeout=timeout)


_unread = {}  # socket -> bytes received past the last response read


def read_response(sock):
    """(status, headers {lowercase: value}, body bytes) of one response; body
    by Content-Length or chunked."""
    buf = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response head: %r" % buf[:200])
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()

    def need(n):
        nonlocal rest
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed inside a response body")
            rest += data

    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while True:
            while b"\r\n" not in rest:
                need(len(rest) + 1)
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            need(size + 2)
            body, rest = body + rest[:size], rest[size + 2:]
            if size == 0:
                break
    else:
        n = int(headers.get("content-length", "0"))
        need(n)
        body, rest = rest[:n], rest[n:]
    if rest:
        _unread[sock] = rest
    return status, headers, body


def closed_by_server(sock, wait=5.0):
    """Whether the server closes the socket (EOF or reset) within `wait` s."""
    sock.settimeout(wait)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def auth(extra=""):
    return "Authorization: Bearer %s\r\n%s" % (KEY, extra)


class HttpEdges(unittest.TestCase):
    def assert_openai_error(self, status, headers, body, want_status, code=None):
        self.assertEqual(status, want_status, body[:300])
        err = json.loads(body)["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"}, err)
        self.assertTrue(err["message"])
        if code:
            self.assertEqual(err["code"], code, err)
        return err

    def assert_still_serving(self):
        status, _, _ = SERVER.request("GET", "/health")
        self.assertEqual(status, 200)
        self.assertIsNone(SERVER.proc.poll(), "server died")

    def huge_body(self, path, chunked, want_status, total=100 << 20):
        """Sends a `total`-byte body after the head while reading the answer;
        returns the bytes the server let the client send."""
        rss_before = SERVER.rss_kib()
        sock = connect()
        framing = "Transfer-Encoding: chunked\r\n" if chunked else "Content-Length: %d\r\n" % total
        sock.sendall(("POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n%s\r\n"
                      % (path, auth(), framing)).encode())
        sent = [0]

        def send_body():
            piece = b"x" * 65536
            chunk = (b"%x\r\n" % len(piece)) + piece + b"\r\n" if chunked else piece
            try:
                while sent[0] < total:
                    sock.sendall(chunk)
                    sent[0] += len(piece)
            except OSError:
                pass  # the server closed: what we want

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        status, headers, body = read_response(sock)
        self.assert_openai_error(status, headers, body, want_status)
        self.assertEqual(headers.get("connection"), "close")
        sender.join(30)
        self.assertFalse(sender.is_alive(), "the server kept reading the body")
        sock.close()
        self.assertLess(sent[0], total // 4, "%d of %d body bytes were read" % (sent[0], total))
        self.assertLess(SERVER.rss_kib() - rss_before, 32 * 1024, "RSS grew while the body arrived")
        self.assert_still_serving()
        return sent[0]

    def test_a_huge_chunked_body_to_a_route_without_a_body_is_not_read(self):
        self.huge_body("/nope", chunked=True, want_status=404)
        self.huge_body("/v1/models", chunked=True, want_status=405)

    def test_a_huge_body_to_a_completion_route_is_refused_at_its_head(self):
        self.huge_body("/v1/completions", chunked=True, want_status=413)
        # with Content-Length the answer comes before a single body byte
        sock = connect()
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
                      % (auth(), 100 << 20)).encode())
        status, headers, body = read_response(sock)
        self.assertEqual(self.assert_openai_error(status, headers, body, 413)["code"], "request_too_large")
        self.assertTrue(closed_by_server(sock))
        sock.close()

    def test_no_body_is_read_before_the_api_key_is_checked(self):
        for header in ("", "Authorization: Bearer wrong\r\n"):
            sock = connect()
            sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: 1000000\r\n\r\n"
                          % header).encode())
            status, headers, body = read_response(sock)  # no body byte was sent
            self.assert_openai_error(status, headers, body, 401, "invalid_api_key")
            self.assertEqual(headers.get("connection"), "close")
            self.assertTrue(closed_by_server(sock), "a connection with an unread body must close")
            sock.close()
        # a client that waits for 100 Continue is refused without it
        sock = connect()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 10\r\n\r\n")
        status, headers, body = read_response(sock)
        self.assert_openai_error(status, headers, body, 401)
        sock.close()

    def test_the_api_key_is_compared_whole(self):
        for value in (KEY + "\x00anything", KEY + "\x00", KEY + "x", KEY[:-1], ""):
            sock = connect()
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                         value.encode("latin-1") + b"\r\n\r\n")
            status, headers, body = read_response(sock)
            self.assert_openai_error(status, headers, body, 401)
            sock.close()
        status, _, body = SERVER.request("GET", "/v1/models", headers={"Authorization": "Bearer " + KEY})
        self.assertEqual(status, 200, body)
        self.assertEqual(SERVER.request("GET", "/health")[0], 200)  # open without a key

    def test_long_lines_and_many_headers_are_refused(self):
        cases = [
            (b"GET /" + b"a" * 200000, 414, None),  # no line end ever comes
            (b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 200000, 431, "header_too_large"),
            (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n", 431, None),
            (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + auth().encode() +
             b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 100000, 400, "invalid_chunked_body"),
            (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + auth().encode() +
             b"Transfer-Encoding: gzip\r\n\r\n", 501, None),
            (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + auth().encode() +
             b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", 400, None),
        ]
        for data, want, code in cases:
            with self.subTest(want=want, start=data[:40]):
                sock = connect()
                try:
                    sock.sendall(data)
                except OSError:
                    pass  # closed while we were still sending: the answer is already there
                status, headers, body = read_response(sock)
                self.assert_openai_error(status, headers, body, want, code)
                self.assertTrue(closed_by_server(sock))
                sock.close()
        self.assert_still_serving()

    def test_a_head_sent_a_byte_at_a_time_times_out(self):
        sock = connect()
        t0 = time.time()
        line = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
        held = None
        try:
            for b in line:  # one byte every 0.25 s until the server answers
                sock.sendall(bytes([b]))
                if select.select([sock], [], [], 0.25)[0]:
                    held = time.time() - t0
                    break
        except OSError:
            pass
        status, headers, body = read_response(sock)
        held = held or time.time() - t0
        self.assert_openai_error(status, headers, body, 408, "request_timeout")
        self.assertTrue(closed_by_server(sock))
        sock.close()
        self.assertLess(held, HEADER_TIMEOUT + 3, "the head deadline is for the whole head")

    def test_a_body_that_stops_times_out(self):
        sock = connect()
        t0 = time.time()
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: 100\r\n\r\n{\"prompt\""
                      % auth()).encode())
        status, headers, body = read_response(sock)
        self.assert_openai_error(status, headers, body, 408, "request_timeout")
        self.assertLess(time.time() - t0, READ_TIMEOUT + 3)
        self.assertTrue(closed_by_server(sock))
        sock.close()

    def test_a_body_late_after_its_head_never_desynchronises_the_connection(self):
        # A client starved of CPU can send its body seconds after its head (httpx
        # writes them separately). Within --read-timeout the request is served;
        # past it the answer is a 408 and the connection closes, so the late
        # body is never parsed as a request whose error would answer the next one.
        body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
        head = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (auth(), len(body))).encode()
        sock = connect(timeout=30)
        sock.sendall(head)
        time.sleep(READ_TIMEOUT / 2)
        sock.sendall(body)
        self.assertEqual(read_response(sock)[0], 200)
        sock.sendall(head + body)
        self.assertEqual(read_response(sock)[0], 200, "the next request on the connection is served")
        sock.close()

        sock = connect(timeout=30)
        sock.sendall(head)
        time.sleep(READ_TIMEOUT + 1)
        status, headers, data = read_response(sock)
        self.assert_openai_error(status, headers, data, 408, "request_timeout")
        self.assertEqual(headers.get("connection"), "close")
        try:
            sock.sendall(body)  # too late
            sock.sendall(head + body)  # a next request on the same connection
        except OSError:
            pass
        self.assertTrue(closed_by_server(sock), "no answer may follow the 408 on this connection")
        sock.close()

    def test_keep_alive_only_at_request_boundaries(self):
        body = json.dumps({"prompt": "hi", "max_tokens": 2})
        req = ("POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
               "Content-Length: %d\r\n\r\n%s" % (auth(), len(body), body)).encode()
        sock = connect()
        # two requests in one write, then a third after: all answered in order on one connection
        sock.sendall(req + req)
        for _ in range(2):
            status, headers, data = read_response(sock)
            self.assertEqual(status, 200, data)
            self.assertEqual(len(json.loads(data)["choices"]), 1)
            self.assertNotEqual(headers.get("connection"), "close")
        sock.sendall(req)
        self.assertEqual(read_response(sock)[0], 200)
        # a bad request that was read whole keeps the connection too
        bad = b'{"prompt": "hi", "n": 0}'
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
                      % (auth(), len(bad))).encode() + bad)
        status, headers, data = read_response(sock)
        self.assertEqual(self.assert_openai_error(status, headers, data, 400)["param"], "n")
        sock.sendall(req)
        self.assertEqual(read_response(sock)[0], 200)
        sock.close()

    def test_help_says_a_key_on_the_command_line_is_visible_in_ps(self):
        out = subprocess.run([FINMOE, "serve", "--help"], capture_output=True, text=True).stdout
        self.assertIn("--api-key-file", out)
        self.assertIn("`ps`", out)
        r = subprocess.run([FINMOE, "serve", "x", "--api-key-file", os.path.join(SCRATCH.path, "missing")],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--api-key-file", r.stdout + r.stderr)



ACCESS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z finmoe serve: (\S+) (\S+) (\d{3}) "
                    r"([\d.]+|-) ms(?: prompt_tokens=(\d+) completion_tokens=(\d+))?(.*)$")


class AccessLog(unittest.TestCase):
    """--log-level info (the default): one line per HTTP request, after its response."""

    def access_lines(self, server, path):
        return [m for m in (ACCESS.match(line.rstrip("\n")) for line in server.lines) if m and m.group(3) == path]

    def wait_for_line(self, server, path, count):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = self.access_lines(server, path)
            if len(lines) >= count:
                return lines
            time.sleep(0.02)
        self.fail("no access line for %s in:\n%s" % (path, server.log()))

    def test_a_line_per_request_with_time_status_latency_and_tokens(self):
        before = len(self.access_lines(SERVER, "/v1/completions"))
        t0 = time.monotonic()
        status, body = SERVER.post_json("/v1/completions", {"model": "edge", "prompt": "The balance sheet",
                                                            "max_tokens": 3, "temperature": 0},
                                        headers={"Authorization": "Bearer " + KEY})
        elapsed_ms = (time.monotonic() - t0) * 1e3
        self.assertEqual(status, 200, body)
        line = self.wait_for_line(SERVER, "/v1/completions", before + 1)[-1]
        stamp, method, _, code, ms, prompt_tokens, completion_tokens, rest = line.groups()
        self.assertEqual((method, code), ("POST", "200"))
        # the response's own usage
        self.assertEqual(int(prompt_tokens), body["usage"]["prompt_tokens"])
        self.assertEqual(int(completion_tokens), body["usage"]["completion_tokens"])
        self.assertEqual(rest, "")
        # the server's latency is within what the client waited
        self.assertGreater(float(ms), 0)
        self.assertLessEqual(float(ms), elapsed_ms + 1)
        # UTC, now
        when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
        self.assertLess(abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()), 60)

        # other routes: no tokens; errors with their status
        before = len(self.access_lines(SERVER, "/no/such/route"))
        self.assertEqual(SERVER.request("GET", "/no/such/route")[0], 404)
        line = self.wait_for_line(SERVER, "/no/such/route", before + 1)[-1]
        self.assertEqual((line.group(2), line.group(4), line.group(6)), ("GET", "404", None))

    def test_log_level_warning_writes_no_access_lines_and_a_bad_level_is_refused(self):
        server = serve_util.Server(FINMOE, os.path.join(SCRATCH.path, "tiny"), "--kv-cache-memory", "8MiB",
                                   "--log-level", "warning")
        try:
            self.assertEqual(server.request("GET", "/v1/models")[0], 200)
            self.assertEqual(server.request("GET", "/health")[0], 200)
        finally:
            self.assertEqual(server.stop(), 0, server.log())
        self.assertEqual([m for m in (ACCESS.match(x) for x in server.lines) if m], [], server.log())
        r = subprocess.run([FINMOE, "serve", os.path.join(SCRATCH.path, "tiny"), "--log-level", "loud"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("--log-level: log level 'loud' unknown (error, warning, info)", r.stderr)

if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
