"""A remediation timeline: what happened to which host and VM, when -- as data, text and a picture.

A :class:`Timeline` has one lane per host and per VM. Lanes hold *spans* (a host powered off, a VM
down) and *marks* (failure, detection, Fence created, fence verified, VM running again). Scenarios
build it from what the cluster recorded (node conditions, Fence status, VM status) and from what
libvirt reported; ``render`` draws it to PNG and SVG with matplotlib, ``as_text`` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: Mark kinds, in the order a remediation passes them, with their colours.
MARK_STYLES: dict[str, tuple[str, str]] = {
    "failure": ("#d62728", "failure"),
    "detected": ("#ff7f0e", "detected"),
    "fence-created": ("#9467bd", "Fence created"),
    "fence-verified": ("#1f77b4", "fence verified"),
    "released": ("#17becf", "released"),
    "vm-running": ("#2ca02c", "VM running again"),
    "host-back": ("#8c564b", "host back"),
}
SPAN_COLOURS = {"off": "#bbbbbb", "down": "#f4b6b6", "unknown": "#ffe0a8", "migrating": "#c6dbef"}


@dataclass(frozen=True)
class Mark:
    at: datetime
    kind: str
    label: str = ""


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime | None
    kind: str
    label: str = ""


@dataclass
class Lane:
    name: str
    kind: str  # "host" or "vm"
    marks: list[Mark] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


@dataclass
class Timeline:
    title: str
    start: datetime
    lanes: list[Lane] = field(default_factory=list)

    def lane(self, name: str, kind: str) -> Lane:
        for lane in self.lanes:
            if lane.name == name:
                return lane
        lane = Lane(name, kind)
        self.lanes.append(lane)
        return lane

    def mark(
        self, lane: str, kind: str, at: datetime | None, label: str = "", lane_kind: str = "host"
    ) -> None:
        if at is not None:
            self.lane(lane, lane_kind).marks.append(Mark(at, kind, label))

    def span(
        self,
        lane: str,
        kind: str,
        start: datetime | None,
        end: datetime | None,
        label: str = "",
        lane_kind: str = "host",
    ) -> None:
        if start is not None:
            self.lane(lane, lane_kind).spans.append(Span(start, end, kind, label))

    def seconds(self, at: datetime) -> float:
        return (at - self.start).total_seconds()

    def end(self) -> datetime:
        times = [m.at for lane in self.lanes for m in lane.marks]
        times += [s.end for lane in self.lanes for s in lane.spans if s.end is not None]
        return max(times, default=self.start)

    def events(self) -> list[tuple[float, str, str, str]]:
        """Every mark as (seconds since start, lane, kind, label), in time order."""
        rows = [(self.seconds(m.at), lane.name, m.kind, m.label) for lane in self.lanes for m in lane.marks]
        return sorted(rows)

    def as_text(self) -> str:
        lines = [self.title]
        for seconds, lane, kind, label in self.events():
            name = MARK_STYLES.get(kind, ("", kind))[1]
            lines.append(f"  {seconds:7.2f}s  {lane:<22} {name}{': ' + label if label else ''}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "start": self.start.isoformat(),
            "events": [
                {"seconds": round(s, 3), "lane": lane, "kind": kind, "label": label}
                for s, lane, kind, label in self.events()
            ],
        }

    def render(self, stem: Path) -> list[Path]:
        """Draw the timeline to ``stem``.png and ``stem``.svg; returns the two paths."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        lanes = sorted(self.lanes, key=lambda lane: (lane.kind != "host", lane.name))
        total = max(self.seconds(self.end()) * 1.05, 1.0)
        fig, ax = plt.subplots(figsize=(12, 1.6 + 0.45 * max(len(lanes), 3)))
        for row, lane in enumerate(lanes):
            y = len(lanes) - row
            for span in lane.spans:
                start = self.seconds(span.start)
                width = (self.seconds(span.end) if span.end else total) - start
                ax.barh(y, width, left=start, height=0.5, color=SPAN_COLOURS.get(span.kind, "#dddddd"))
            for mark in lane.marks:
                colour = MARK_STYLES.get(mark.kind, ("#000000", mark.kind))[0]
                ax.plot([self.seconds(mark.at)], [y], marker="|", markersize=18, mew=3, color=colour)
        ax.set_yticks([len(lanes) - i for i in range(len(lanes))])
        ax.set_yticklabels([f"{lane.name}" for lane in lanes])
        ax.set_xlim(0, total)
        ax.set_xlabel("seconds since the failure")
        ax.set_title(self.title)
        ax.grid(axis="x", alpha=0.3)
        handles: list[Any] = [
            Line2D([0], [0], marker="|", linestyle="", markersize=12, mew=3, color=colour, label=name)
            for colour, name in _used_styles(lanes)
        ]
        handles += [Patch(color=SPAN_COLOURS[k], label=f"{k}") for k in _used_spans(lanes)]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        stem.parent.mkdir(parents=True, exist_ok=True)
        paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
        for path in paths:
            fig.savefig(path, dpi=110)
        plt.close(fig)
        return paths


def _used_styles(lanes: Iterable[Lane]) -> list[tuple[str, str]]:
    kinds = {m.kind for lane in lanes for m in lane.marks}
    return [MARK_STYLES[k] for k in MARK_STYLES if k in kinds]


def _used_spans(lanes: Iterable[Lane]) -> list[str]:
    kinds = {s.kind for lane in lanes for s in lane.spans}
    return [k for k in SPAN_COLOURS if k in kinds]
