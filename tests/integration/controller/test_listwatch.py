"""The lean list-and-watch (remediator.listwatch) against the lab's real kube-apiserver: paginated
list, changed reductions only, deletions, and a prompt stop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import listwatch
from remediator.health import NodeView
from remediator.health_controller import node_view
from tests.integration.conftest import RunningLab
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


class Received:
    """What the watch delivered, in order (written in the loop's thread, read by the test)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, NodeView | None]] = []
        self.lock = threading.Lock()

    def deliver(self, batch: dict[str, NodeView | None]) -> None:
        with self.lock:
            self.batches.append(dict(batch))

    def changes(self, name: str) -> list[NodeView | None]:
        with self.lock:
            return [b[name] for b in self.batches if name in b]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def test_nodes(lab: RunningLab) -> Iterator[list[str]]:
    suffix = uuid.uuid4().hex[:6]
    names = [f"lw-{suffix}-{i}" for i in range(3)]
    for name in names:
        lab.core.create_node(
            client.V1Node(metadata=client.V1ObjectMeta(name=name, labels={"listwatch-test": suffix}))
        )
    yield names
    for name in names:
        try:
            lab.core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _label(lab: RunningLab, node: str, key: str, value: str) -> None:
    lab.core.patch_node(node, {"metadata": {"labels": {key: value}}})


def test_list_watch_delivers_changed_views_only(
    lab: RunningLab, loop: asyncio.AbstractEventLoop, test_nodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listwatch, "PAGE_SIZE", 2)  # the lab's nodes and ours span several pages
    received = Received()
    nodes = client.CoreV1Api(lab.api).list_node
    watch = listwatch.ListWatch(nodes, node_view, received.deliver, loop, name="t")
    watch.start()
    try:
        wait_for(watch.synced.is_set, 30, "the first list")
        listed = set().union(*(b.keys() for b in received.batches))
        lab_nodes = {n.metadata.name for n in lab.core.list_node().items}
        assert listed >= lab_nodes | set(test_nodes)
        first, second, third = test_nodes

        # A label change arrives as a new view.
        _label(lab, first, "changed", "yes")
        view = wait_for(
            lambda: next((v for v in received.changes(first) if v and v.labels.get("changed")), None),
            20,
            "the label change",
        )
        assert view.name == first

        # An annotation changes nothing the view holds: nothing is delivered for it. Watch events
        # arrive in order, so once a later change to another node is in, the annotation was seen.
        before = len(received.changes(second))
        lab.core.patch_node(second, {"metadata": {"annotations": {"unrelated": "1"}}})
        _label(lab, third, "marker", "1")
        wait_for(lambda: any(v and v.labels.get("marker") for v in received.changes(third)), 20, "the marker")
        assert len(received.changes(second)) == before

        # A deleted node is delivered as None.
        lab.core.delete_node(third)
        wait_for(lambda: received.changes(third)[-1] is None, 20, "the deletion")
        assert watch.events >= 3
    finally:
        started = time.monotonic()
        watch.stop()
        stop_seconds = time.monotonic() - started
    # stop() closes the open watch instead of waiting for the server to end it.
    assert stop_seconds < 5 and not watch._thread.is_alive()


def test_list_watch_skips_objects_it_cannot_reduce(
    lab: RunningLab, loop: asyncio.AbstractEventLoop, test_nodes: list[str]
) -> None:
    received = Received()

    def picky(body: dict[str, Any]) -> NodeView:
        if body["metadata"]["name"] == test_nodes[0]:
            raise ValueError("cannot read this one")
        return node_view(body)

    nodes = client.CoreV1Api(lab.api).list_node
    watch = listwatch.ListWatch(nodes, picky, received.deliver, loop, name="t")
    watch.start()
    try:
        wait_for(watch.synced.is_set, 30, "the first list")
        assert received.changes(test_nodes[0]) == []
        assert received.changes(test_nodes[1]) and received.changes(test_nodes[1])[-1] is not None
    finally:
        watch.stop()


def test_coalesced_changes_arrive_together_and_not_before_the_window(
    lab: RunningLab, loop: asyncio.AbstractEventLoop, test_nodes: list[str]
) -> None:
    received = Received()
    arrivals: list[float] = []

    def deliver(batch: dict[str, NodeView | None]) -> None:
        arrivals.append(time.monotonic())
        received.deliver(batch)

    nodes = client.CoreV1Api(lab.api).list_node
    watch = listwatch.ListWatch(nodes, node_view, deliver, loop, name="t", coalesce_seconds=1.0)
    watch.start()
    try:
        wait_for(watch.synced.is_set, 30, "the first list")
        sent = time.monotonic()
        first, second = test_nodes[:2]
        for name in (first, second):
            _label(lab, name, "batched", "yes")

        def batch_with_change() -> int | None:
            with received.lock:
                return next(
                    (
                        i
                        for i, b in enumerate(received.batches)
                        if (v := b.get(first)) is not None and v.labels.get("batched")
                    ),
                    None,
                )

        wait_for(lambda: batch_with_change() is not None, 20, "the label change")
        index = batch_with_change()
        assert index is not None
        # Both changes in that one batch, handed over a whole window after the first reached the watch.
        batch = received.batches[index]
        assert (view := batch.get(second)) is not None and view.labels.get("batched") == "yes"
        assert arrivals[index] - sent >= 1.0
    finally:
        watch.stop()
