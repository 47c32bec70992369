"""Release from Postfix's hold queue the messages a campaign hold quarantined, once the hold is lifted.

Only hold quarantines are tracked: a message quarantined for a disclosure waits for a person, always.
The list of queue ids lives in memory; after a milter restart, release by hand (``postsuper -H``).
Releasing needs the right to run ``postsuper`` (root or the Postfix owner), hence off by default.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections import OrderedDict
from typing import Callable

from mailaudit.adapters.config import MilterConfig

log = logging.getLogger("mailaudit.milter")


class HoldReleaser:
    def __init__(self, is_held: Callable[[str, str | None], object], mcfg: MilterConfig,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 interval_s: float = 1.0, max_tracked: int = 100_000):
        self.is_held = is_held
        self.mcfg = mcfg
        self._run = run
        self.interval_s = interval_s
        self.max_tracked = max_tracked
        self._pending: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.released = 0
        self.failures = 0

    def track(self, queue_id: str | None, event, decision) -> None:
        if not queue_id or getattr(decision, "cause", None) != "hold":
            return
        with self._lock:
            self._pending[queue_id] = (event.service, event.campaign or event.template)
            while len(self._pending) > self.max_tracked:
                dropped, _ = self._pending.popitem(last=False)
                log.warning("auto-release forgets %s (more than %d held); release it by hand", dropped,
                            self.max_tracked)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def command(self) -> list[str]:
        cmd = [self.mcfg.postsuper]
        if self.mcfg.postfix_config_dir:
            cmd += ["-c", self.mcfg.postfix_config_dir]
        return cmd + ["-H", "-"]

    def check_once(self) -> list[str]:
        """Release every tracked message whose hold is lifted; return their queue ids."""
        with self._lock:
            items = list(self._pending.items())
        ready = [qid for qid, (svc, camp) in items if self.is_held(svc, camp) is None]
        if not ready:
            return []
        proc = self._run(self.command(), input="\n".join(ready) + "\n", capture_output=True, text=True,
                         timeout=30)
        if proc.returncode != 0:
            self.failures += 1
            log.error("auto-release: %s failed (%s): %s", " ".join(self.command()), proc.returncode,
                      (proc.stderr or "").strip()[:300])
            return []
        with self._lock:
            for qid in ready:
                self._pending.pop(qid, None)
        self.released += len(ready)
        log.info("auto-release: hold lifted, released %d message(s) from the hold queue: %s", len(ready),
                 " ".join(ready[:20]))
        return ready

    def start(self) -> "HoldReleaser":
        self._thread = threading.Thread(target=self._loop, name="mailaudit-auto-release", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:
                self.failures += 1
                log.exception("auto-release check failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
