"""``stage0 serve --workers N``: N server processes, each with its own listening socket.

uvicorn's multi-process mode gives every worker the same listening socket, and the first worker
to wake takes a whole burst of new connections: under a load that opens its connections at
once, one worker was seen holding 55 of 64 keep-alive connections, so one process (one GIL,
one core) did almost all the work. Here every worker listens on a socket of its own bound with
``SO_REUSEPORT``, and the kernel spreads incoming connections over them by a hash of the
connection, so the load divides evenly (Linux; elsewhere the workers share one socket, as
uvicorn does).

The supervisor (the parent process) binds the sockets and keeps them open, so a worker that
dies is replaced on the same socket and the connections that arrive meanwhile wait in its
backlog rather than being refused. SIGINT and SIGTERM stop the workers; SIGHUP is passed on to
them (each reloads its policy pack in place).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn

log = logging.getLogger("stage0.workers")
STARTUP_FAILURE = 3
"""The exit code of a uvicorn worker that failed before serving (the app or the socket is
broken): restarting it would fail the same way, so the supervisor stops."""
RESTART_DELAY_S = 1.0
"""The first replacement's delay; it doubles with each worker that dies again, to 30 s."""
MAX_RESTART_DELAY_S = 30.0
STABLE_S = 10.0
"""A worker up this long has started well: its slot's failures are forgotten, and from then on
a replacement that fails at start-up is retried rather than stopping the service."""
PR_SET_PDEATHSIG = 1

multiprocessing.allow_connection_pickling()
_spawn = multiprocessing.get_context("spawn")


def reuse_port_supported() -> bool:
    """Whether the kernel balances connections over ``SO_REUSEPORT`` sockets (Linux does; on
    BSD and macOS the newest socket takes them all)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_sockets(host: str, port: int, count: int, *, backlog: int = 2048) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port``, bound with ``SO_REUSEPORT``.

    First the port is bound once without ``SO_REUSEPORT``: that fails when anything already
    listens there, another ``stage0 serve`` included (``SO_REUSEPORT`` alone would let two
    servers split the traffic without a word). Port 0 takes the port the first socket gets.
    """
    family = _family(host)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        port = probe.getsockname()[1]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(reuse_port_socket(host, port, backlog))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def reuse_port_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """One more listening socket on ``host:port`` beside the others (``SO_REUSEPORT``)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _worker(config: uvicorn.Config, sock: socket.socket, supervisor: int) -> None:
    """A worker process: uvicorn's server on its own socket. It ends with the supervisor
    (``PR_SET_PDEATHSIG``), and ignores SIGHUP unless it has a policy file to reload (the
    reloader then handles it)."""
    _die_with_parent(supervisor)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config.configure_logging()
    uvicorn.Server(config).run(sockets=[sock])


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this process when ``parent`` ends (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.debug("PR_SET_PDEATHSIG is not available", exc_info=True)
    if os.getppid() != parent:  # the supervisor ended before the call above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Slot:
    sock: socket.socket | None
    process: SpawnProcess | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    failures: int = 0
    """Consecutive short-lived runs (reset once a worker stays up :data:`STABLE_S`)."""


@dataclass
class Supervisor:
    """Starts one worker per socket, replaces workers that die, and stops them on a signal."""

    config: uvicorn.Config
    sockets: list[socket.socket]
    slots: list[_Slot] = field(default_factory=list)
    should_exit: threading.Event = field(default_factory=threading.Event)
    _ever_stable: bool = False
    _address: tuple[str, int] = ("", 0)

    def run(self) -> int:
        self.slots = [_Slot(sock) for sock in self.sockets]
        self._address = self.sockets[0].getsockname()[:2]
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        log.info("stage0 serve: %d worker processes on http://%s:%d, each with its own "
                 "listening socket (SO_REUSEPORT)", len(self.slots), *self._address)
        code = 0
        try:
            for slot in self.slots:
                self._start(slot)
            while not self.should_exit.wait(0.25):
                code = self._keep_alive()
                if code:
                    self.should_exit.set()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in [*self.sockets, *(s.sock for s in self.slots if s.sock is not None)]:
                sock.close()  # closing twice is harmless
        return code

    def _on_signal(self, sig: int, _frame: Any) -> None:
        if sig == signal.SIGHUP:
            for slot in self.slots:
                if slot.process is not None and slot.process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.process.pid, signal.SIGHUP)
            return
        self.should_exit.set()

    def _start(self, slot: _Slot) -> None:
        if slot.sock is None:  # closed after repeated failures: a fresh one beside the others
            slot.sock = reuse_port_socket(*self._address, self.config.backlog)
        process = _spawn.Process(target=_worker, args=(self.config, slot.sock, os.getpid()),
                                 name="stage0-worker")
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        log.info("started worker process [%s]", process.pid)

    def _keep_alive(self) -> int:
        """Replace dead workers, after a delay that grows while they keep dying. A worker that
        fails at start-up before any has run well stops the supervisor with its exit code (the
        app or the store cannot start, and would not on a retry either)."""
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None and process.exitcode is None:
                if now - slot.started_at >= STABLE_S:
                    slot.failures = 0
                    self._ever_stable = True
                continue
            if process is not None:
                if process.exitcode == STARTUP_FAILURE and not self._ever_stable:
                    log.error("worker process [%s] failed to start; stopping", process.pid)
                    return STARTUP_FAILURE
                slot.failures = 0 if now - slot.started_at >= STABLE_S else slot.failures + 1
                delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** max(0, slot.failures - 1))
                log.warning("worker process [%s] exited with %s; replacing it in %g s",
                            process.pid, process.exitcode, delay)
                _forget_metrics(process.pid)
                if slot.failures >= 2 and slot.sock is not None:
                    # connections the kernel queues on a slot that keeps failing would wait
                    # for nothing: close it, so they go to the live workers
                    slot.sock.close()
                    slot.sock = None
                slot.process, slot.restart_at = None, now + delay
            if (slot.restart_at is not None and now >= slot.restart_at
                    and not self.should_exit.is_set()):
                try:
                    self._start(slot)
                except OSError as exc:
                    log.error("cannot replace a worker: %s; trying again", exc)
                    slot.restart_at = now + MAX_RESTART_DELAY_S
        return 0

    def _stop_all(self) -> None:
        running = [s.process for s in self.slots if s.process is not None]
        for process in running:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("worker process [%s] did not stop; killing it", process.pid)
                process.kill()
                process.join()


def _forget_metrics(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the shared metrics (prometheus_client)."""
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess  # noqa: PLC0415

    try:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except OSError:
        log.debug("could not clear the metrics of worker %s", pid, exc_info=True)


def listen(host: str, port: int, workers: int, *, backlog: int = 2048) -> list[socket.socket]:
    """The listening sockets ``stage0 serve`` will hand to its workers, bound before anything
    else happens, so a busy port fails at once and the same way whatever ``workers`` is.

    One worker (or a kernel without ``SO_REUSEPORT`` balancing): one socket. Several workers:
    :func:`bind_sockets`. Port 0 takes a free port (``sockets[0].getsockname()[1]``).
    """
    if workers > 1 and reuse_port_supported():
        return bind_sockets(host, port, workers, backlog=backlog)
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return [sock]


def serve(app: str, *, sockets: list[socket.socket], workers: int, **options: Any) -> int:
    """Serve ``app`` (an import string of an app factory) with ``workers`` processes on the
    sockets :func:`listen` bound."""
    host, port = sockets[0].getsockname()[:2]
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    if len(sockets) == 1:
        # SIGHUP reloads a policy file (the reloader installs its handler); with none there is
        # nothing to reload, and a hangup must not stop the server
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if workers <= 1:
            uvicorn.Server(config).run(sockets=sockets)
            return 0
        # several workers without SO_REUSEPORT balancing: uvicorn's processes share the socket
        from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

        Multiprocess(config, sockets=sockets).run()
        return 0
    config.configure_logging()
    return Supervisor(config, sockets).run()
