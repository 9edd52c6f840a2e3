"""The decision writer's durability on an SQLite file: the log's flush after the write lock,
and a background checkpoint of the write-ahead log. (PostgreSQL's commit is its own flush.)"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from stage0.store.database import Store

if TYPE_CHECKING:
    from stage0.server.writer import WriterStats

log = logging.getLogger("stage0.pipeline")

CHECKPOINT_INTERVAL_S = 0.05
"""How often the background checkpointer looks for new commits (SQLite files)."""


class Durability:
    """SQLite: sync the write-ahead log after the write lock is released, before any answer of
    the batch leaves (:meth:`sync`), and checkpoint it in the background.

    The writer's connection commits with ``synchronous=NORMAL``: the commit writes the batch's
    frames to the WAL without waiting for the disk, and releases the lock. The sync then makes
    them durable (it covers every frame written before them, other processes' included) while
    the next process already writes its batch: the disk's flush is no longer part of the turn
    every writer waits for.

    A failed sync is final for this process, as a failed fsync is for PostgreSQL: the batch's
    rows are committed (other connections see them, a repeated request id would replay them)
    but what reached the disk is unknown, and a retried sync can report success over pages the
    kernel dropped. So the batch and every later job get a fail-closed 503, ``/readyz`` says
    why (:attr:`broken`), and the process must be restarted (on restart SQLite recovers the log
    from what is on disk)."""

    def __init__(self, store: Store, stats: WriterStats) -> None:
        self.store = store
        self.stats = stats
        self.deferred = store.file_backed
        """Commit without syncing, sync after the lock (an SQLite file)."""
        self.broken: str | None = None
        self.checkpoint_interval_s = CHECKPOINT_INTERVAL_S
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if store.file_backed:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                                  name="stage0-checkpointer", daemon=True)
            self._checkpointer.start()

    def sync(self) -> bool:
        """Flush the log; on failure mark the writer :attr:`broken` (and say so)."""
        try:
            self.store.sync_wal()
        except OSError as exc:
            self.broken = (f"the decision log could not be flushed to disk ({exc}); this "
                           "server process fails every check closed until it is restarted")
            log.critical("%s", self.broken)
            return False
        return True

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)

    def _checkpoint_loop(self) -> None:
        """Copy the write-ahead log into the SQLite database file in the background.

        SQLite checkpoints when a commit leaves more than 1,000 pages in the WAL, inside that
        commit: the writer then copies some 4 MB and syncs the database file while every
        writer waits on its lock (5-10 ms, the worst batches). A passive checkpoint here,
        every 50 ms after new commits, copies the frames while the writers go on; what is left
        for the commit's own checkpoint is small, and that one still runs, so the WAL is
        rewound as before (a background checkpoint alone never catches up under a steady load,
        and the WAL would grow without bound)."""
        seen = 0
        while not self._closing.wait(self.checkpoint_interval_s):
            if self.stats.committed == seen:
                continue
            seen = self.stats.committed
            try:
                self.store.checkpoint()
            except Exception:  # an optimisation: the commit's own checkpoint remains
                log.debug("background checkpoint failed", exc_info=True)
