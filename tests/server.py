"""A real `tracklayerd serve` subprocess for end-to-end tests."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

LISTENING = re.compile(r"listening on http://(\S+):(\d+)")
START_TIMEOUT_SECS = 30


class ServerProcess:
    def __init__(self, data_dir: Path, config: Path | None = None, cwd: Path | None = None,
                 extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.config = config
        self.cwd = cwd
        self.extra = extra or []
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.url = ""

    def start(self) -> ServerProcess:
        args = [sys.executable, "-m", "tracklayerd", "serve", "--listen", "127.0.0.1:0"]
        if self.config is not None:
            args += ["--config", str(self.config), "--data-dir", str(self.data_dir)]
        args += self.extra
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKLAYERD_")}
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, cwd=self.cwd, env=env)
        self._queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self._queue), daemon=True).start()
        while True:
            line = self._queue.get(timeout=START_TIMEOUT_SECS)
            if line is None:
                raise RuntimeError("server exited during startup:\n" + "".join(self.lines))
            match = LISTENING.search(line)
            if match:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                return self

    def _pump(self, proc: subprocess.Popen[str], q: queue.Queue[str | None]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self.lines.append(line)
                q.put(line)
        q.put(None)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._drain()
        return code

    def _drain(self) -> None:
        # Wait for the pump to reach EOF (and close the pipe) after the process exited.
        while self._queue.get(timeout=10) is not None:
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self._drain()

    @property
    def log(self) -> str:
        return "".join(self.lines)
