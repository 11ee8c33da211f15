"""Ingest benchmark: tracklayerd against a bare aiohttp + uvloop server, same load, same run.

Run it from the repository root with the project's virtualenv (needs ``wrk`` and ``taskset``)::

    python contrib/bench/ingest.py                        # 1 rep, synchronous=full
    python contrib/bench/ingest.py --repeat 3             # 3 interleaved reps, medians
    python contrib/bench/ingest.py --synchronous normal --duration 10

What it measures (method of reference/performance.md):

* Two servers, each started fresh for every run: ``tracklayerd serve`` (fresh data dir, a
  ``http_api`` source with a bearer token, ``[storage] synchronous`` from ``--synchronous``)
  and a bare aiohttp + uvloop server whose handler only reads the body and decodes it with
  ``msgspec.json.decode`` before answering ``200 {}``.
* Two loads, identical for both servers, each a wrk Lua script that gives every event a unique
  ``event_id`` (random tag per wrk run + thread number + counter, so deduplication never
  shortcuts a write): single ~1 KB events at ``--connections`` (64) and ``{"events": [...]}``
  batches of ``--batch-size`` (100) events at ``--batch-connections`` (10).
* The server is pinned to ``--server-cpu`` (0) and ``wrk -t1`` to ``--client-cpu`` (1).
  ``--warmup`` seconds of load (discarded), then ``--duration`` seconds measured: events/s
  (200-acknowledged events / wrk's elapsed time), p50 / p99 request latency, the server's CPU
  (utime + stime from /proc) and wrk's CPU, and tracklayerd / bare for the same load.
* tracklayerd only: idle CPU over ``--idle-secs`` with no traffic and idle RSS (VmRSS), once
  after startup and once after the load (after the processor has caught up with the inbox),
  plus the peak RSS (VmHWM). After each run the inbox row count is checked against what wrk
  saw: 200-acknowledged events <= rows <= events sent (wrk drops the requests still in flight
  when it stops, and the server may have committed those).
* The figures are checked against the targets of the ingest issue (single events >= 60 % of
  the bare server, batches >= 50,000 events/s, p99 < 25 ms at 64 connections, idle CPU < 1 %,
  idle RSS < 80 MiB). With ``--repeat N`` the runs are interleaved (rep 1 of every case, then
  rep 2, ...) and medians are reported, with the min-max range of events/s.

The exit status is 0 when every run passed its row check, whatever the targets say.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any, Literal

TOKEN = "bench-token"
ENDPOINT = "/v1/events"
ID_MARK = "@@EVENT_ID@@"
LISTENING = re.compile(r"listening on http://([^\s:]+):(\d+)")
STARTUP_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 30.0
SETTLE_SECS = 1.5  # after startup / catch-up, before an idle sample (tracklayerd's idle timers)
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB_PER_MIB = 1024.0

# Targets from the ingest issue.
TARGET_SINGLE_RATIO = 0.60
TARGET_BATCH_EVENTS_PER_SEC = 50_000.0
TARGET_P99_MS = 25.0
TARGET_IDLE_CPU_PCT = 1.0
TARGET_IDLE_RSS_MIB = 80.0
# What the targets assume the bare server does on the standard machine (single events, c64).
REFERENCE_BARE_SINGLE = 25_000.0

ServerKind = Literal["bare", "tracklayerd"]
CaseName = Literal["single", "batch"]
SERVERS: tuple[ServerKind, ...] = ("bare", "tracklayerd")
CASES: tuple[CaseName, ...] = ("single", "batch")


# -- the payload --------------------------------------------------------------------------


def event_json() -> str:
    """One realistic conversion event (~1 KB) with ID_MARK where the event_id goes."""
    event: dict[str, Any] = {
        "event": "purchase",
        "event_id": ID_MARK,
        "timestamp": "2026-11-23T10:00:00Z",
        "user": {
            "email": "jane.doe+orders@example.com",
            "phone": "+1 (415) 555-0134",
            "first_name": "Jane",
            "last_name": "Doe",
            "street": "1 Market Street, Apt 5",
            "city": "San Francisco",
            "state": "CA",
            "zip": "94105-1234",
            "country": "US",
            "external_id": "cust-0001234567",
            "fbp": "fb.1.1732350000000.1234567890",
            "fbc": "fb.1.1732350000000.IwAR2xyzAbCdEfGhIjKlMnOpQrStUvWx",
        },
        "order_id": "ORD-2026-112300042",
        "value": 129.9,
        "currency": "USD",
        "items": [
            {"id": "sku-1", "name": "Merino wool sweater", "price": 79.9, "quantity": 1},
            {"id": "sku-2", "name": "Cotton socks", "price": 15.0, "quantity": 2},
            {"id": "sku-3", "name": "Gift wrapping", "price": 20.0, "quantity": 1},
        ],
        "context": {
            "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                          "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "page_url": "https://shop.example/checkout",
            "referrer": "https://shop.example/cart",
        },
        "properties": {"coupon": "WINTER10", "shipping": 4.95, "tax": 10.4},
    }
    return json.dumps(event, separators=(",", ":"))


LUA_TEMPLATE = Template(r"""-- Generated by contrib/bench/ingest.py: unique ids, parseable summary.
local prefix = [==[$prefix]==]
local suffix = [==[$suffix]==]
local per_request = $per_request

wrk.method = "POST"
wrk.path = "$path"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"

local threads = {}
function setup(thread)
  thread:set("thread_no", #threads + 1)
  threads[#threads + 1] = thread
end

local id_prefix
events_sent = 0
requests_sent = 0
function init(args)
  id_prefix = args[1] .. "-" .. thread_no .. "-"
end

local parts = {}
function request()
  local body
  if per_request == 1 then
    events_sent = events_sent + 1
    body = prefix .. id_prefix .. events_sent .. suffix
  else
    local k = 1
    parts[1] = '{"events":['
    for i = 1, per_request do
      events_sent = events_sent + 1
      if i > 1 then
        k = k + 1
        parts[k] = ","
      end
      parts[k + 1] = prefix
      parts[k + 2] = id_prefix
      parts[k + 3] = events_sent
      parts[k + 4] = suffix
      k = k + 4
    end
    k = k + 1
    parts[k] = "]}"
    body = table.concat(parts, "", 1, k)
  end
  requests_sent = requests_sent + 1
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local sent_requests, sent_events = 0, 0
  for _, thread in ipairs(threads) do
    sent_requests = sent_requests + thread:get("requests_sent")
    sent_events = sent_events + thread:get("events_sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us": %.0f, "completed": %.0f, "non2xx": %.0f, ' ..
    '"connect_errors": %.0f, "read_errors": %.0f, "write_errors": %.0f, "timeouts": %.0f, ' ..
    '"sent_requests": %.0f, "sent_events": %.0f, "p50_us": %.1f, "p99_us": %.1f, ' ..
    '"max_us": %.1f}\n',
    summary.duration, summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    sent_requests, sent_events, latency:percentile(50), latency:percentile(99), latency.max))
end
""")


def write_lua(path: Path, per_request: int) -> None:
    prefix, suffix = event_json().split(ID_MARK)
    path.write_text(LUA_TEMPLATE.substitute(
        prefix=prefix, suffix=suffix, per_request=per_request, path=ENDPOINT, token=TOKEN,
    ))


def sample_body(per_request: int) -> bytes:
    """A body like the ones wrk sends (for the size printed in the header)."""
    one = event_json().replace(ID_MARK, f"{secrets.token_hex(5)}-1-{10**6}")
    if per_request == 1:
        return one.encode()
    return ('{"events":[' + ",".join([one] * per_request) + "]}").encode()


# -- the bare server (runs in a child process: this script with --serve-bare) --------------


def serve_bare(host: str) -> None:
    """aiohttp + uvloop, read the body, msgspec-decode it, 200 {}. SIGTERM stops it."""
    # Imported here: the orchestrating process never needs them.
    import asyncio

    import msgspec
    import uvloop
    from aiohttp import web

    decode = msgspec.json.decode

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        decode(body)
        return web.Response(body=b"{}", content_type="application/json")

    async def main() -> None:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_post(ENDPOINT, handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, 0, backlog=1024).start()
        port = runner.addresses[0][1]
        print(f"listening on http://{host}:{port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        loop_runner.run(main())


# -- processes ------------------------------------------------------------------------------


@dataclass
class Server:
    kind: ServerKind
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    db: Path | None

    @property
    def pid(self) -> int:
        return self.proc.pid


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / KIB_PER_MIB
    return values["VmRSS"], values["VmHWM"]


def idle_cpu_pct(pid: int, secs: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(secs)
    return 100.0 * (cpu_seconds(pid) - before) / secs


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running_server(
    kind: ServerKind, workdir: Path, cpu: int, synchronous: str
) -> Iterator[Server]:
    """Start a fresh server pinned to `cpu`; stop it (SIGTERM, then SIGKILL) on the way out."""
    log = workdir / f"{kind}.log"
    db: Path | None = None
    python = [sys.executable]
    if kind == "bare":
        command = [*python, str(Path(__file__).resolve()), "--serve-bare", "127.0.0.1"]
    else:
        data_dir = workdir / "data"
        config = workdir / "tracklayerd.toml"
        config.write_text(
            f'[storage]\nsynchronous = "{synchronous}"\n\n'
            f'[sources.bench]\ntype = "http_api"\ntoken = "{TOKEN}"\n'
        )
        db = data_dir / "tracklayerd.sqlite3"
        command = [*python, "-m", "tracklayerd", "serve", "--config", str(config),
                   "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *command],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
        while True:
            found = LISTENING.search(log.read_text(errors="replace"))
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start:\n{log_tail(log)}")
            time.sleep(0.05)
        yield Server(kind, proc, f"http://{found[1]}:{found[2]}{ENDPOINT}", log, db)
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- wrk --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    duration_us: float
    completed: int
    non2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    sent_requests: int
    sent_events: int
    p50_us: float
    p99_us: float
    max_us: float
    client_cpu_secs: float

    def acked_events(self, per_request: int) -> int:
        return (self.completed - self.non2xx) * per_request

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def run_wrk(
    url: str, lua: Path, *, connections: int, secs: int, cpu: int, workdir: Path, label: str
) -> WrkResult:
    tag = secrets.token_hex(5)  # new ids for every wrk run: warm-up and measured never collide
    command = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{secs}s",
               "--latency", "--timeout", "10s", "-s", str(lua), url, "--", tag]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=secs + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (workdir / f"wrk-{label}.out").write_text(done.stdout + done.stderr)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    fields = json.loads(line.removeprefix("BENCH_RESULT "))
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return WrkResult(
        duration_us=fields["duration_us"],
        completed=int(fields["completed"]),
        non2xx=int(fields["non2xx"]),
        connect_errors=int(fields["connect_errors"]),
        read_errors=int(fields["read_errors"]),
        write_errors=int(fields["write_errors"]),
        timeouts=int(fields["timeouts"]),
        sent_requests=int(fields["sent_requests"]),
        sent_events=int(fields["sent_events"]),
        p50_us=fields["p50_us"],
        p99_us=fields["p99_us"],
        max_us=fields["max_us"],
        client_cpu_secs=client_cpu,
    )


# -- one run: a fresh server, one load ------------------------------------------------------


@dataclass
class Idle:
    cpu_pct: float
    rss_mib: float


@dataclass
class RowCheck:
    rows: int
    processed: int
    acked: int
    sent: int

    @property
    def ok(self) -> bool:
        return self.acked <= self.rows <= self.sent

    def describe(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (f"inbox rows {self.rows:,} (200-acked {self.acked:,} <= rows <= sent "
                f"{self.sent:,}: {verdict}; unacked in flight at wrk stop "
                f"{self.sent - self.acked:,}); events rows {self.processed:,}")


@dataclass
class RunResult:
    server: ServerKind
    case: CaseName
    connections: int
    per_request: int
    measured: WrkResult
    server_cpu_secs: float
    idle_start: Idle | None = None
    idle_after: Idle | None = None
    peak_rss_mib: float | None = None
    backlog_at_end: int | None = None
    catchup_secs: float | None = None
    rows: RowCheck | None = None

    @property
    def secs(self) -> float:
        return self.measured.duration_us / 1e6

    @property
    def events_per_sec(self) -> float:
        return self.measured.acked_events(self.per_request) / self.secs

    @property
    def server_cpu_pct(self) -> float:
        return 100.0 * self.server_cpu_secs / self.secs

    @property
    def client_cpu_pct(self) -> float:
        return 100.0 * self.measured.client_cpu_secs / self.secs

    @property
    def cpu_us_per_event(self) -> float:
        events = self.measured.acked_events(self.per_request)
        return 1e6 * self.server_cpu_secs / events if events else float("nan")


@dataclass
class Settings:
    duration: int
    warmup: int
    connections: int
    batch_connections: int
    batch_size: int
    synchronous: str
    idle_secs: float
    max_catchup_secs: float
    server_cpu: int
    client_cpu: int


def read_db(db: Path, query: str) -> tuple[Any, ...]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row: tuple[Any, ...] = conn.execute(query).fetchone()
        return row
    finally:
        conn.close()


BACKLOG_SQL = (
    "SELECT coalesce((SELECT max(seq) FROM inbox), 0)"
    " - coalesce((SELECT max(id) FROM events), 0)"
)


def wait_for_processor(db: Path, max_secs: float) -> tuple[int, float]:
    """(inbox backlog when the load stopped, seconds until the processor caught up)."""
    started = time.monotonic()
    backlog = first = int(read_db(db, BACKLOG_SQL)[0])
    while backlog > 0 and time.monotonic() - started < max_secs:
        time.sleep(0.25)
        backlog = int(read_db(db, BACKLOG_SQL)[0])
    return first, time.monotonic() - started


def run_one(
    kind: ServerKind, case: CaseName, settings: Settings, workdir: Path, lua: dict[CaseName, Path]
) -> RunResult:
    per_request = 1 if case == "single" else settings.batch_size
    connections = settings.connections if case == "single" else settings.batch_connections
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-{case}-", dir=workdir))
    try:
        with running_server(kind, run_dir, settings.server_cpu, settings.synchronous) as server:
            idle_start = None
            if kind == "tracklayerd":
                time.sleep(SETTLE_SECS)
                idle_start = Idle(idle_cpu_pct(server.pid, settings.idle_secs),
                                  memory_mib(server.pid)[0])

            def load(secs: int, label: str) -> WrkResult:
                return run_wrk(server.url, lua[case], connections=connections, secs=secs,
                               cpu=settings.client_cpu, workdir=run_dir, label=label)

            warm = load(settings.warmup, "warmup") if settings.warmup > 0 else None
            cpu_before = cpu_seconds(server.pid)
            measured = load(settings.duration, "measured")
            result = RunResult(kind, case, connections, per_request, measured,
                               cpu_seconds(server.pid) - cpu_before, idle_start)
            if server.db is not None:
                result.backlog_at_end, result.catchup_secs = wait_for_processor(
                    server.db, settings.max_catchup_secs)
                time.sleep(SETTLE_SECS)
                cpu = idle_cpu_pct(server.pid, settings.idle_secs)
                rss, result.peak_rss_mib = memory_mib(server.pid)
                result.idle_after = Idle(cpu, rss)
        # Stopped (SIGTERM commits whatever is queued): now count what was stored.
        if server.db is not None:
            runs = [measured] if warm is None else [warm, measured]
            rows, processed = read_db(
                server.db, "SELECT (SELECT count(*) FROM inbox), (SELECT count(*) FROM events)")
            result.rows = RowCheck(
                rows=rows, processed=processed,
                acked=sum(r.acked_events(per_request) for r in runs),
                sent=sum(r.sent_events for r in runs),
            )
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # the databases are ~2 KB per event


def progress(result: RunResult, rep: int, reps: int) -> str:
    m = result.measured
    text = (f"[rep {rep}/{reps}] {result.case:<6} {result.server:<11} c{result.connections:<3}"
            f" {result.events_per_sec:>10,.0f} events/s  p50 {m.p50_us / 1000:6.2f} ms"
            f"  p99 {m.p99_us / 1000:6.2f} ms  server CPU {result.server_cpu_pct:3.0f}%"
            f"  wrk CPU {result.client_cpu_pct:3.0f}%")
    problems = []
    if m.non2xx:
        problems.append(f"{m.non2xx:,} non-2xx")
    if m.socket_errors:
        problems.append(f"{m.socket_errors:,} socket errors/timeouts")
    if problems:
        text += "  !! " + ", ".join(problems)
    if result.idle_start and result.idle_after:
        text += (f"\n    idle after startup {result.idle_start.cpu_pct:.2f}% CPU "
                 f"{result.idle_start.rss_mib:.1f} MiB; after load "
                 f"{result.idle_after.cpu_pct:.2f}% CPU {result.idle_after.rss_mib:.1f} MiB "
                 f"(peak {result.peak_rss_mib:.1f} MiB); inbox backlog at end of load "
                 f"{result.backlog_at_end:,}, processor caught up in {result.catchup_secs:.1f} s")
    if result.rows:
        text += "\n    " + result.rows.describe()
    return text


# -- the report -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    return f"{median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def report(results: list[RunResult], settings: Settings, reps: int) -> bool:
    """Print the tables; returns True when every target is met."""
    def runs(kind: ServerKind, case: CaseName) -> list[RunResult]:
        return [r for r in results if r.server == kind and r.case == case]

    def ratios(case: CaseName) -> list[float]:
        pairs = zip(runs("tracklayerd", case), runs("bare", case), strict=True)
        return [t.events_per_sec / b.events_per_sec for t, b in pairs]

    print()
    print(f"== ingest benchmark: synchronous={settings.synchronous}, {reps} rep(s), "
          f"{settings.warmup} s warm-up + {settings.duration} s measured per run; "
          f"server on CPU {settings.server_cpu}, wrk -t1 on CPU {settings.client_cpu} ==")
    print("   medians over reps; events/s as median [min-max]; 'vs bare' = median of the per-rep"
          " ratios; µs/event = server CPU time per acknowledged event")
    header = (f"{'case':<7}{'server':<12}{'conns':>5}  {'events/s':<26}{'p50 ms':>7}{'p99 ms':>8}"
              f"{'srv CPU':>9}{'µs/event':>10}{'wrk CPU':>9}{'vs bare':>9}")
    print(header)
    print("-" * len(header))
    for case in CASES:
        for kind in SERVERS:
            rs = runs(kind, case)
            if not rs:
                continue
            ratio = f"{100 * median(ratios(case)):.1f}%" if kind == "tracklayerd" else ""
            print(
                f"{case:<7}{kind:<12}{rs[0].connections:>5}  "
                f"{spread([r.events_per_sec for r in rs]):<26}"
                f"{median([r.measured.p50_us / 1000 for r in rs]):>7.2f}"
                f"{median([r.measured.p99_us / 1000 for r in rs]):>8.2f}"
                f"{median([r.server_cpu_pct for r in rs]):>8.0f}%"
                f"{median([r.cpu_us_per_event for r in rs]):>10.1f}"
                f"{median([r.client_cpu_pct for r in rs]):>8.0f}%"
                f"{ratio:>9}"
            )

    print()
    print(f"tracklayerd idle ({settings.idle_secs:g} s without traffic; medians; CPU resolution "
          f"{100 / CLK_TCK / settings.idle_secs:.2f}%)")
    print(f"{'process':<28}{'CPU after startup':>18}{'RSS':>10}{'CPU after load':>16}"
          f"{'RSS':>10}{'peak RSS':>10}{'backlog':>10}{'catch-up':>10}")
    for case in CASES:
        rs = [r for r in runs("tracklayerd", case) if r.idle_start and r.idle_after]
        if not rs:
            continue
        print(
            f"{'after the ' + case + ' load':<28}"
            f"{median([r.idle_start.cpu_pct for r in rs if r.idle_start]):>17.2f}%"
            f"{median([r.idle_start.rss_mib for r in rs if r.idle_start]):>6.1f} MiB"
            f"{median([r.idle_after.cpu_pct for r in rs if r.idle_after]):>15.2f}%"
            f"{median([r.idle_after.rss_mib for r in rs if r.idle_after]):>6.1f} MiB"
            f"{median([r.peak_rss_mib or 0.0 for r in rs]):>6.1f} MiB"
            f"{median([float(r.backlog_at_end or 0) for r in rs]):>10,.0f}"
            f"{median([r.catchup_secs or 0.0 for r in rs]):>9.1f}s"
        )

    bare_single = runs("bare", "single")
    if bare_single:
        rate = median([r.events_per_sec for r in bare_single])
        if abs(rate / REFERENCE_BARE_SINGLE - 1) > 0.25:
            print(f"\nnote: the bare server did {rate:,.0f} req/s (single events, "
                  f"c{bare_single[0].connections}); the targets assume ~"
                  f"{REFERENCE_BARE_SINGLE:,.0f} (reference/performance.md). Ratios to the bare "
                  "server carry over to another machine; absolute rates do not.")

    checks = [r.rows for r in results if r.rows is not None]
    bad = [c for c in checks if not c.ok]
    print()
    print(f"row check: {len(checks) - len(bad)}/{len(checks)} tracklayerd runs stored between "
          "the 200-acknowledged and the sent events" + ("" if not bad else "  !! MISMATCH"))
    errors = sum(r.measured.non2xx + r.measured.socket_errors for r in results)
    if errors:
        print(f"!! {errors:,} non-2xx responses or socket errors in measured runs (see above)")

    return print_targets(results, runs, ratios)


def print_targets(
    results: list[RunResult],
    runs: Callable[[ServerKind, CaseName], list[RunResult]],
    ratios: Callable[[CaseName], list[float]],
) -> bool:
    rows: list[tuple[str, str, bool]] = []
    if runs("tracklayerd", "single") and runs("bare", "single"):
        ratio = median(ratios("single"))
        rows.append((f"single events >= {TARGET_SINGLE_RATIO:.0%} of bare",
                     f"{ratio:.1%}", ratio >= TARGET_SINGLE_RATIO))
        single = runs("tracklayerd", "single")
        p99 = median([r.measured.p99_us / 1000 for r in single])
        rows.append((f"p99 < {TARGET_P99_MS:g} ms, single events at c{single[0].connections}",
                     f"{p99:.2f} ms", p99 < TARGET_P99_MS))
    if runs("tracklayerd", "batch"):
        batch = runs("tracklayerd", "batch")
        eps = median([r.events_per_sec for r in batch])
        rows.append((f"batched >= {TARGET_BATCH_EVENTS_PER_SEC:,.0f} events/s "
                     f"(c{batch[0].connections})",
                     f"{eps:,.0f} events/s", eps >= TARGET_BATCH_EVENTS_PER_SEC))
    idles = [i for r in results for i in (r.idle_start, r.idle_after) if i is not None]
    if idles:
        cpu = max(i.cpu_pct for i in idles)
        rss = max(i.rss_mib for i in idles)
        rows.append((f"idle CPU < {TARGET_IDLE_CPU_PCT:g}% (worst run)", f"{cpu:.2f}%",
                     cpu < TARGET_IDLE_CPU_PCT))
        rows.append((f"idle RSS < {TARGET_IDLE_RSS_MIB:g} MiB (worst run)", f"{rss:.1f} MiB",
                     rss < TARGET_IDLE_RSS_MIB))
    print()
    print(f"{'target':<44}{'measured':>18}  result")
    for name, measured, ok in rows:
        print(f"{name:<44}{measured:>18}  {'PASS' if ok else 'FAIL'}")
    return all(ok for _, _, ok in rows)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tracklayerd's ingest against a bare aiohttp+uvloop server.")
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per run")
    parser.add_argument("--connections", type=int, default=64,
                        help="connections for single events")
    parser.add_argument("--batch-connections", type=int, default=10,
                        help="connections for batches")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch request")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full",
                        help="tracklayerd's [storage] synchronous")
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved repetitions; medians are reported")
    parser.add_argument("--cases", default="single,batch",
                        help="comma-separated subset of: single, batch")
    parser.add_argument("--idle-secs", type=float, default=5.0,
                        help="length of each idle CPU sample")
    parser.add_argument("--max-catchup-secs", type=float, default=300.0,
                        help="how long to wait for the processor to drain the inbox after load")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--serve-bare", metavar="HOST", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        parser.error(f"--cases: expected a subset of {', '.join(CASES)}")
    args.cases = cases
    if min(args.duration, args.connections, args.batch_connections, args.batch_size,
           args.repeat) < 1 or args.warmup < 0:
        parser.error("durations, connections, sizes and --repeat must be positive")
    return args


def print_header(settings: Settings) -> None:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    print(f"tracklayerd {version('tracklayerd')}, Python {sys.version.split()[0]}, aiohttp "
          f"{version('aiohttp')}, uvloop {version('uvloop')}, msgspec {version('msgspec')}, "
          f"SQLite {sqlite3.sqlite_version}, {(wrk.stdout + wrk.stderr).splitlines()[0][:30]}, "
          f"{os.cpu_count()} CPUs")
    print(f"payload: single event {len(sample_body(1)):,} B; batch of {settings.batch_size} "
          f"{len(sample_body(settings.batch_size)):,} B; single events at c{settings.connections},"
          f" batches at c{settings.batch_connections}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    # Cleanup (the finally blocks) must also run on SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings(
        duration=args.duration, warmup=args.warmup, connections=args.connections,
        batch_connections=args.batch_connections, batch_size=args.batch_size,
        synchronous=args.synchronous, idle_secs=args.idle_secs,
        max_catchup_secs=args.max_catchup_secs, server_cpu=args.server_cpu,
        client_cpu=args.client_cpu,
    )
    # This process only waits; keep it off the server's CPU.
    os.sched_setaffinity(0, {settings.client_cpu})
    print_header(settings)
    workdir = Path(tempfile.mkdtemp(prefix="tracklayerd-bench-"))
    results: list[RunResult] = []
    try:
        lua: dict[CaseName, Path] = {"single": workdir / "single.lua",
                                     "batch": workdir / "batch.lua"}
        write_lua(lua["single"], 1)
        write_lua(lua["batch"], settings.batch_size)
        for rep in range(1, args.repeat + 1):
            for case in args.cases:
                for kind in SERVERS:
                    result = run_one(kind, case, settings, workdir, lua)
                    print(progress(result, rep, args.repeat), flush=True)
                    results.append(result)
        report(results, settings, args.repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.rows is None or r.rows.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
