"""kopf glue for the Fence controller: settings, one daemon per Fence, and the deletion handler.

Everything that does work lives in :mod:`remediator.fence_controller`; the decisions in
:mod:`remediator.workflow`. A Fence is driven by a kopf *daemon* (one thread per active Fence) because
a fence is a long, stepwise operation whose waits must be interruptible at safe points: kopf sets the
daemon's ``stopped`` flag when the Fence is deleted or the operator stops, and the runner checks it
between steps. kopf's own finalizer keeps a deleted Fence around until the daemon has stopped and
:func:`fence_deleted` has said (in an Event) where the node was left.

The objects the handlers need (API client, :class:`~remediator.fence_controller.Settings`, the
per-Fence "daemon exited" flags) are built at start-up and handed over in kopf's ``memo``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import kopf

from remediator import fence_controller as fc

FINALIZER = "remediator.io/fence-protection"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The kubeconfig in $KUBECONFIG (``remediator run --kubeconfig`` sets it), else the service account."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf's bookkeeping stays in annotations; status belongs to the Fence state machine.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="remediator.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="remediator.io", key="last-handled-configuration"
    )
    # The runner posts its own Events (one per phase change); kopf's per-handler ones would be noise.
    settings.posting.enabled = False
    settings.execution.max_workers = 64
    settings.watching.server_timeout = 300
    settings.watching.connect_timeout = 10


@kopf.daemon(fc.GROUP, fc.VERSION, fc.PLURAL, id="fence", backoff=1.0, cancellation_timeout=None)
def fence_daemon(name: str, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """Drive one Fence to a terminal phase; returns at once for finished Fences."""
    exited: dict[str, threading.Event] = memo.exited
    flag = exited.setdefault(name, threading.Event())
    flag.clear()
    try:
        runner = fc.FenceRunner(
            memo.api, memo.settings, name, stopped=lambda: bool(stopped), wait=stopped.wait
        )
        runner.run()
    finally:
        flag.set()


@kopf.on.delete(fc.GROUP, fc.VERSION, fc.PLURAL, id="fence-deleted")
def fence_deleted(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Once the Fence's daemon stopped at a safe point, say where the node was left."""
    flag = memo.exited.get(name)
    if flag is not None and not flag.wait(timeout=1.0):
        raise kopf.TemporaryError("waiting for the Fence to reach a safe point", delay=0.5)
    # kopf may call a deletion handler again before the finalizer is gone; say it once.
    reported: set[str] = memo.reported
    uid = str(body.get("metadata", {}).get("uid", name))
    if uid not in reported:
        fc.on_fence_deleted(memo.api, name, dict(body))
        reported.add(uid)
