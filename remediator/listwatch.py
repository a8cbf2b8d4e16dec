"""A lean list-and-watch of one Kubernetes collection, for the high-volume kinds (Nodes, Leases).

kopf handles every watch event with a handler call, its own bookkeeping and a log line: about a
millisecond each. Kubelets re-report node status every minute or so and renew their Leases every
ten seconds, so at thousands of nodes that is most of a core for events that change nothing a
policy reads. :class:`ListWatch` instead runs in a thread of its own:

* it lists the collection (paginated), then watches from the list's resourceVersion with bookmarks,
  decoding each watch line with ``json.loads`` only;
* a ``reduce`` function turns each object into the little its consumer reads (for a Node: labels and
  condition transitions), and only reductions that differ from the last one known are passed on;
* changes are handed to the consumer's asyncio loop in batches (``deliver``, called in the loop):
  while the loop is busy, further changes join the pending batch instead of queueing callbacks, and
  with ``coalesce_seconds`` a batch is delivered that long after its first change (for kinds that
  change all the time and are read late anyway, like Lease renewals: one wake-up of the loop per
  batch instead of per event);
* after every (re)list the consumer gets the full difference, objects gone included, and ``synced``
  is set once the first list has been delivered -- a consumer must not judge the collection before;
* a watch that expires (410 Gone) is re-listed at once; connection and API errors are retried with
  a capped backoff, and said in the log once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The server ends each watch after about this long; a new one continues from the last version.
WATCH_SECONDS = 300
#: Objects per page of the initial list.
PAGE_SIZE = 500
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class ListWatch(Generic[T]):
    """List then watch a collection in a thread; deliver changed reductions.

    ``list_call`` is the generated client's list method for the collection, e.g.
    ``CoreV1Api(api).list_node`` or ``functools.partial(CoordinationV1Api(api).list_namespaced_lease,
    "kube-node-lease")``; it is called with ``_preload_content=False`` and its raw JSON decoded here.
    """

    def __init__(
        self,
        list_call: Callable[..., Any],
        reduce: Callable[[dict[str, Any]], T],
        deliver: Callable[[dict[str, T | None]], None],
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        coalesce_seconds: float = 0.0,
    ) -> None:
        self.list_call = list_call
        self.reduce = reduce
        self.deliver = deliver
        self.loop = loop
        self.name = name
        self.coalesce_seconds = coalesce_seconds
        #: Set (in the loop) once the first full list has been delivered.
        self.synced = asyncio.Event()
        self.known: dict[str, T] = {}
        self.events = 0
        self._pending: dict[str, T | None] = {}
        self._scheduled = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"listwatch-{name}", daemon=True)

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        # A read waiting for the next watch line returns once its socket is shut down (closing
        # the response from this thread would not wake it).
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout)

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        failing = False
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                backoff = BACKOFF_START_S
                if failing:
                    log.info("%s: watching again", self.name)
                    failing = False
            except _Expired:
                version = None
            except Exception as exc:  # the watch must outlive any one bad response
                if self._stop.is_set():
                    return  # stop() shut the socket down under a read
                if not failing:
                    log.warning("%s: list/watch failed (%s); retrying", self.name, _describe(exc))
                    failing = True
                version = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _list(self) -> str:
        items: dict[str, T] = {}
        token: str | None = None
        while True:
            response = self._get(timeout=(10, 60), limit=PAGE_SIZE, _continue=token)
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            for obj in page.get("items") or []:
                name = _name(obj)
                reduced = self._reduce(obj)
                if name and reduced is not None:
                    items[name] = reduced
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        changes: dict[str, T | None] = {n: v for n, v in items.items() if self.known.get(n) != v}
        changes.update({n: None for n in self.known.keys() - items.keys()})
        self.known = items
        self._hand_over(changes, synced=True)
        return str((page.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        response = self._get(
            timeout=(10, WATCH_SECONDS + 60),
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            resource_version=version or None,
        )
        self._response = response
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired
                    raise ValueError(f"watch error: {obj.get('message') or obj}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                self.events += 1
                self._apply(kind, obj)
        finally:
            self._response = None
            response.release_conn()
        return version

    def _apply(self, kind: str | None, obj: dict[str, Any]) -> None:
        name = _name(obj)
        if not name:
            return
        if kind == "DELETED":
            if self.known.pop(name, None) is not None:
                self._hand_over({name: None})
            return
        reduced = self._reduce(obj)
        if reduced is not None and self.known.get(name) != reduced:
            self.known[name] = reduced
            self._hand_over({name: reduced})

    def _reduce(self, obj: dict[str, Any]) -> T | None:
        try:
            return self.reduce(obj)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: skipping %s: %s", self.name, _name(obj) or "an object", exc)
            return None

    def _get(self, timeout: tuple[float, float], **query: Any) -> Any:
        return self.list_call(**query, _preload_content=False, _request_timeout=timeout)

    # --- handing over to the loop ----------------------------------------------------------------

    def _hand_over(self, changes: dict[str, T | None], synced: bool = False) -> None:
        with self._lock:
            self._pending.update(changes)
            if self._scheduled and not synced:
                return
            self._scheduled = True
        try:
            if self.coalesce_seconds > 0 and not synced:
                later = self.loop.call_later
                self.loop.call_soon_threadsafe(later, self.coalesce_seconds, self._flush, False)
            else:
                self.loop.call_soon_threadsafe(self._flush, synced)
        except RuntimeError:  # the loop is closed: the controller is stopping
            self._stop.set()

    def _flush(self, synced: bool) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
            self._scheduled = False
        if batch:
            self.deliver(batch)
        if synced:
            self.synced.set()


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _lines(response: Any) -> Iterator[bytes]:
    """Complete lines of a streamed watch response."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 1 :]
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"[:300]
