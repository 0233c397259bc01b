"""Benchmark tcbon against the floor of its own shape.

The floor is what the design card's shape costs with nothing else: a bare
``http.server.ThreadingHTTPServer`` that writes its address to a file and
answers JSON, and a bare ``urllib.request`` client. Both sides run in the same
fresh virtual environment (no site-packages noise), with bytecode cached,
interleaved and repeated, and the table gives the ratio to each target.

    python bench_tcbon.py              # about two minutes
    python bench_tcbon.py --quick      # fewer repetitions, for a smoke test

Linux only (it reads /proc for wake-ups and memory). Loopback only; every
process it starts is ended by pid.
"""
import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

FLOOR_SERVER = r"""
import http.server, json, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # no Nagle stall between headers and body

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"success": True, "message": "Hello there!",
                           "echo": event.get("seq")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer.request_queue_size = 128  # as tcbon's: 5 drops SYNs
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write("%s:%d" % server.server_address[:2])
os.replace(tmp, sys.argv[1])
server.serve_forever()
"""

FLOOR_CLIENT = r"""
import json, sys, urllib.request
with open(sys.argv[1]) as f:
    address = f.read()
request = urllib.request.Request("http://%s/event" % address, method="POST",
                                 data=json.dumps({"name": "ack"}).encode(),
                                 headers={"Content-Type": "application/json"})
print(json.loads(urllib.request.urlopen(request, timeout=5).read()))
"""

TCBON_PRIMARY = r"""
import sys, tcbon
app = tcbon.Process(sys.argv[1], app_dir=sys.argv[2])

@app.on("ack")
def ack(event):
    return {"message": "Hello there!", "echo": event.get("seq")}

app.run_forever()
"""

TCBON_SECOND = r"""
import sys, tcbon
app = tcbon.Process(sys.argv[1], app_dir=sys.argv[2])
try:
    app.start()
except tcbon.ProcessExists:
    print(app.send("event", {"name": "ack"}))
"""

# argv NAME APP_DIR PROJECT: one of several instances, described by its project.
TCBON_INSTANCE = r"""
import sys, tcbon
app = tcbon.Process(sys.argv[1], app_dir=sys.argv[2], instances=True)
app.describe(project=sys.argv[3])

@app.on("ack")
def ack(event):
    return {"message": "Hello there!", "echo": event.get("seq")}

app.run_forever()
"""

# A later launch routed to the instance of a project: one event, exit.
TCBON_ROUTED = r"""
import sys, tcbon
app = tcbon.Process(sys.argv[1], app_dir=sys.argv[2], instances=True)
print(app.send("event", {"name": "ack"}, where={"project": sys.argv[3]}))
"""

TCBON_LOAD = r"""
import sys, tcbon
client = tcbon.Process(sys.argv[1], app_dir=sys.argv[2])
for seq in range(int(sys.argv[3])):
    assert client.send("event", {"name": "ack", "seq": seq})["echo"] == seq
"""

FLOOR_LOAD = r"""
import json, sys, urllib.request
with open(sys.argv[1]) as f:
    url = "http://%s/event" % f.read()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for seq in range(int(sys.argv[3])):
    request = urllib.request.Request(url, method="POST", headers={
        "Content-Type": "application/json"},
        data=json.dumps({"name": "ack", "seq": seq}).encode())
    assert json.loads(opener.open(request, timeout=30).read())["echo"] == seq
"""


class Bench:
    def __init__(self, quick):
        self.quick = quick
        self.work = tempfile.mkdtemp(prefix="tcbon-bench-")
        self.lib = os.path.join(self.work, "lib")
        os.mkdir(self.lib)
        shutil.copy(os.path.join(HERE, "tcbon.py"), self.lib)
        venv = os.path.join(self.work, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        self.python = os.path.join(venv, "bin", "python")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PYTHON") and "proxy" not in k.lower()}
        self.env.update(PYTHONPATH=self.lib, XDG_DATA_HOME=os.path.join(self.work, "xdg"))
        self.app_dir = os.path.join(self.work, "state")
        self.children = []
        # Cache bytecode for both sides, as an installed program would have.
        self.run(["-c", "import tcbon, http.server, urllib.request, json, logging"])

    def close(self):
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self, args):
        started = time.perf_counter()
        subprocess.run([self.python] + args, env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        return time.perf_counter() - started

    def spawn(self, args, stderr=None):
        proc = subprocess.Popen([self.python] + args, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        self.children.append(proc)
        return proc

    def end(self, proc):
        proc.terminate()
        proc.wait(10)
        self.children.remove(proc)

    # The two servers ---------------------------------------------------------------
    def tcbon_primary(self, name="bench"):
        proc = self.spawn(["-c", TCBON_PRIMARY, name, self.app_dir])
        return proc, self.tcbon_ready(name)

    def tcbon_ready(self, name):
        """Poll until the primary answers an event; return its (address, token)."""
        import tcbon
        path = tcbon.Process(name, app_dir=self.app_dir).pid_file

        def ready():
            with open(path) as f:
                state = json.load(f)
            post(state["address"], {"name": "ack"}, state["token"])
            return state["address"], state["token"]
        return poll(ready, (OSError, ValueError, KeyError, http.client.HTTPException))

    def floor_server(self):
        path = os.path.join(self.work, "floor-%d.address" % len(self.children))
        # Its tracebacks (the body flood's bodies are not JSON) are not ours to show.
        proc = self.spawn(["-c", FLOOR_SERVER, path], stderr=subprocess.DEVNULL)

        def ready():
            with open(path) as f:
                address = f.read()
            post(address, {"name": "ack"})
            return proc, address, path
        return poll(ready, (OSError, ValueError, http.client.HTTPException))


def poll(attempt, failures, limit=60.0):
    """attempt() until it stops raising one of failures; give up after limit s."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return attempt()
        except failures:
            if time.monotonic() > deadline:
                raise RuntimeError("not ready after %.0f s" % limit) from None
            time.sleep(0.0002)


def post(address, event, token=None):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Tcbon-Token"] = token
        conn.request("POST", "/event", json.dumps(event), headers)
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise http.client.HTTPException(data)
        return json.loads(data)
    finally:
        conn.close()


def interleave(rounds, *measures):
    """Run each measure once per round, alternating; return the samples."""
    samples = [[] for _ in measures]
    for _ in range(rounds):
        for i, measure in enumerate(measures):
            samples[i].append(measure())
    return samples


def cpu_switches(pid):
    """Context switches of every thread of pid: each one is a wake-up."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, task)) as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def rss_kib(pid, field="VmRSS"):
    """Resident memory of pid now (VmRSS) or at its peak (VmHWM), in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no " + field)


def body_flood(address, connections=200, size=1 << 20):
    """Unauthenticated requests that each announce a 1 MiB body and send
    all of it but one byte, at once; return how much the peak RSS of the
    server at address grew, as measured by the caller."""
    host, port = address.rsplit(":", 1)
    head = ("POST /event HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (address, size)).encode()
    body = b" " * (size - 1)

    def one():
        try:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(head + body)
                sock.recv(100)
        except OSError:
            pass  # refused and closed: what a server should do
    threads = [threading.Thread(target=one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def latencies(send, count):
    out = []
    for seq in range(count):
        started = time.perf_counter()
        send(seq)
        out.append(time.perf_counter() - started)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    opts = parser.parse_args(argv)
    rounds = 8 if opts.quick else 30
    events = 300 if opts.quick else 2000
    per_client = 100 if opts.quick else 400
    idle = 3.0 if opts.quick else 10.0
    sys.path.insert(0, HERE)
    import tcbon

    bench = Bench(opts.quick)
    rows = []

    def row(figure, ours, floor, unit, target, better="lower", ratio=None):
        ratio = ratio if ratio is not None else (ours / floor if floor else float("inf"))
        if better == "lower":
            met = ratio <= target
        elif better == "higher":
            met = ratio >= target
        else:
            met = ours <= target
        rows.append((figure, ours, floor, unit, ratio, target, better, met))

    try:
        # 1. Import.
        pas, imp = interleave(rounds, lambda: bench.run(["-c", "pass"]),
                              lambda: bench.run(["-c", "import tcbon"]))
        row("python -c 'import tcbon' (ms)", statistics.median(imp) * 1e3,
            statistics.median(pas) * 1e3, "ms", 1.20)

        # 2. Primary ready: launch until it accepts an event.
        def ready_tcbon():
            started = time.perf_counter()
            proc, _ = bench.tcbon_primary("ready")
            took = time.perf_counter() - started
            bench.end(proc)
            return took

        def ready_floor():
            started = time.perf_counter()
            proc, _, _ = bench.floor_server()
            took = time.perf_counter() - started
            bench.end(proc)
            return took
        ours, floor = interleave(rounds, ready_tcbon, ready_floor)
        row("primary ready (ms)", statistics.median(ours) * 1e3,
            statistics.median(floor) * 1e3, "ms", 1.05)

        # Long-lived servers for the rest.
        primary, (address, token) = bench.tcbon_primary()
        floor_proc, floor_address, floor_path = bench.floor_server()

        # 3. Second-instance hand-off: launch, ProcessExists, one event, exit.
        ours, floor = interleave(
            rounds, lambda: bench.run(["-c", TCBON_SECOND, "bench", bench.app_dir]),
            lambda: bench.run(["-c", FLOOR_CLIENT, floor_path]))
        row("second-instance hand-off (ms)", statistics.median(ours) * 1e3,
            statistics.median(floor) * 1e3, "ms", 1.08)

        # 4. Event round trips from this process, alternating.
        client = tcbon.Process("bench", app_dir=bench.app_dir)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        floor_url = "http://%s/event" % floor_address

        def floor_send(seq):
            request = urllib.request.Request(floor_url, method="POST", headers={
                "Content-Type": "application/json"},
                data=json.dumps({"name": "ack", "seq": seq}).encode())
            return json.loads(opener.open(request, timeout=5).read())

        ours, floor = [], []
        for _ in range(events // 100):
            ours += latencies(lambda seq: client.send("event", {"name": "ack", "seq": seq}), 100)
            floor += latencies(floor_send, 100)
        q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]  # noqa: E731
        row("event round trip p50 (ms)", q(ours, .5) * 1e3, q(floor, .5) * 1e3, "ms", 1.05)
        row("event round trip p99 / own p50", q(ours, .99) / q(ours, .5),
            q(floor, .99) / q(floor, .5), "x", 3.0, better="absolute",
            ratio=q(ours, .99) / q(ours, .5))
        row("events/s, one client", len(ours) / sum(ours), len(floor) / sum(floor), "/s", 0.8,
            better="higher")

        # 5. 16 concurrent client processes, each sending per_client events.
        def load(script, arg):
            started = time.perf_counter()
            procs = [bench.spawn(["-c", script, arg, bench.app_dir, str(per_client)],
                                 stderr=subprocess.PIPE) for _ in range(16)]
            for proc in procs:
                err = proc.communicate(timeout=300)[1]
                if proc.returncode:
                    raise RuntimeError("a load client failed: %s" % err.decode()[-500:])
                bench.children.remove(proc)
            return 16 * per_client / (time.perf_counter() - started)
        ours, floor = interleave(3, lambda: load(TCBON_LOAD, "bench"),
                                 lambda: load(FLOOR_LOAD, floor_path))
        row("events/s, 16 client processes", statistics.median(ours),
            statistics.median(floor), "/s", 0.8, better="higher")

        # 6. Several instances: three of one name, each with its project. A
        # launch routed to one of them by metadata, against the single-instance
        # hand-off above; `list` on the command line, against the probe of
        # the single instance.
        several = [bench.spawn(["-c", TCBON_INSTANCE, "bench-several", bench.app_dir, p])
                   for p in ("a", "b", "c")]

        def three():
            if len(tcbon.instances("bench-several", bench.app_dir)) != 3:
                raise ValueError("not all three listed yet")
        poll(three, (OSError, ValueError, tcbon.Error))
        ours, floor = interleave(
            rounds, lambda: bench.run(["-c", TCBON_ROUTED, "bench-several", bench.app_dir, "b"]),
            lambda: bench.run(["-c", TCBON_SECOND, "bench", bench.app_dir]))
        row("routed hand-off, 3 instances (ms)", statistics.median(ours) * 1e3,
            statistics.median(floor) * 1e3, "ms", 1.20)
        ours, floor = interleave(
            rounds, lambda: bench.run(["-m", "tcbon", "bench-several", "list", "--app-dir",
                                       bench.app_dir]),
            lambda: bench.run(["-m", "tcbon", "bench", "--app-dir", bench.app_dir]))
        row("`list` of 3 instances (ms)", statistics.median(ours) * 1e3,
            statistics.median(floor) * 1e3, "ms", 1.20)
        for proc in several:
            bench.end(proc)

        # 7. Idle wake-ups of every thread, over the same window for both.
        time.sleep(0.5)
        before = cpu_switches(primary.pid), cpu_switches(floor_proc.pid)
        time.sleep(idle)
        after = cpu_switches(primary.pid), cpu_switches(floor_proc.pid)
        ours, floor = [(a - b) / idle for a, b in zip(after, before)]
        row("idle wake-ups per second", ours, floor, "/s", 0.0, better="absolute",
            ratio=ours)

        # 8. Memory of the idle servers.
        ours, floor = rss_kib(primary.pid) / 1024.0, rss_kib(floor_proc.pid) / 1024.0
        row("resident memory (MiB)", ours, floor, "MiB", floor + 0.8, better="absolute",
            ratio=ours - floor)

        # 9. Peak memory under 200 unauthenticated 1 MiB bodies (the floor keeps them).
        grown = []
        for pid, addr in ((primary.pid, address), (floor_proc.pid, floor_address)):
            before = rss_kib(pid, "VmHWM")
            body_flood(addr)
            grown.append((rss_kib(pid, "VmHWM") - before) / 1024.0)
        row("peak RSS growth, body flood (MiB)", grown[0], grown[1], "MiB", 64.0,
            better="absolute", ratio=grown[0])
    finally:
        bench.close()

    print("tcbon %s, Python %s (%s) on %s, %d cores; %s" % (
        tcbon.__version__, platform.python_version(), platform.python_implementation(),
        platform.platform(terse=True), os.cpu_count() or 0,
        "quick run" if opts.quick else "%d rounds, %d round trips" % (rounds, events)))
    print()
    print("%-34s %10s %10s %8s  %-14s %s" % ("figure", "tcbon", "floor", "ratio", "target",
                                             "met"))
    for figure, ours, floor, _unit, ratio, target, better, met in rows:
        if figure.startswith("resident"):
            goal, shown = "<= floor+0.8 MiB", "%+.2f" % ratio
        elif better == "absolute":
            goal, shown = "<= %g" % target, "-"
        else:
            goal = ("<= %.2fx" if better == "lower" else ">= %.2fx") % target
            shown = "%.2fx" % ratio
        print("%-34s %10.2f %10.2f %8s  %-14s %s" % (figure, ours, floor, shown, goal,
                                                     "yes" if met else "NO"))
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
