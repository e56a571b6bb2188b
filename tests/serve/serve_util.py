"""Helpers for the Python tests of `finmoe serve`: a tiny model made with
`finmoe init`, a server on a free loopback port, raw HTTP calls, /metrics."""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77  # ctest SKIP_RETURN_CODE


def import_openai():
    """The official `openai` package, or exit SKIP naming the interpreter that lacks it."""
    try:
        import openai
    except ImportError:
        print("SKIP: the python in FINMOE_PYTHON (%s) has no `openai` package" % sys.executable)
        sys.exit(SKIP)
    return openai


def args():
    """argv: FINMOE_BINARY TEST_DATA_DIR"""
    if len(sys.argv) < 3:
        print("usage: %s FINMOE_BINARY TEST_DATA_DIR" % sys.argv[0], file=sys.stderr)
        sys.exit(2)
    return sys.argv[1], sys.argv[2]


def make_tiny_model(finmoe, data_dir, out_dir, seed=3):
    out = os.path.join(out_dir, "tiny")
    subprocess.run([finmoe, "init", out, "--preset", "tiny", "--arch", "llama", "--dtype", "float32",
                    "--seed", str(seed), "--tokenizer", os.path.join(data_dir, "tokenizer", "qwen3")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


class Server:
    """`finmoe serve MODEL --port 0 ...` until stop(); the port is read from its log."""

    def __init__(self, finmoe, model, *extra, timeout=120, port=0):
        self.cmd = [finmoe, "serve", model, "--host", "127.0.0.1", "--port", str(port)] + list(extra)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.port = None
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"listening on http://[^:]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        self.thread = threading.Thread(target=reader, daemon=True)
        self.thread.start()
        if not ready.wait(timeout) or self.port is None:
            self.kill()
            raise RuntimeError("server did not start: %s\n%s" % (" ".join(self.cmd), self.log()))
        self.host = "127.0.0.1"
        self.url = "http://127.0.0.1:%d" % self.port

    def log(self):
        return "".join(self.lines)

    def pid(self):
        return self.proc.pid

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, timeout=60):
        """SIGTERM, then the exit code (graceful shutdown must exit 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("server did not stop within %ss after SIGTERM\n%s" % (timeout, self.log()))
        self.thread.join(5)
        self.proc.stdout.close()
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(5)
        if not self.proc.stdout.closed:
            self.proc.stdout.close()

    # ---- raw HTTP ----------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers dict, body bytes)"""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def post_json(self, path, body, headers=None):
        status, _, data = self.request("POST", path, body, headers)
        return status, json.loads(data) if data else None

    def metrics(self):
        """{metric name: value}, labels dropped (one sample per name), plus
        {name{labels}: value} for labelled samples."""
        status, _, data = self.request("GET", "/metrics")
        assert status == 200, status
        out = {}
        for line in data.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            sample, value = line.rsplit(" ", 1)
            name = sample.split("{", 1)[0]
            out[sample] = float(value)
            out.setdefault(name, float(value))
        return out


class ScratchDir:
    def __init__(self, prefix):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)
