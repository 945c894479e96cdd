"""`dicom-adapter status --watch`: the pipeline redrawn in the terminal every second (rich).

It draws what /metrics serves, read the same way (pipeline_metrics.py): the queue from the
spool or bucket, and the counters every process of a running local adapter writes into the
spool's metrics folder; the rates are the counters' change since the last redraw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edge_listener.metrics import PREFIX
from .pipeline_metrics import DeadLetters, QueueState, pipeline_registry, samples

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# (row name, counter sample name, labels the row is split by); uploads split by outcome.
STAGES = (
    ("received", f"{PREFIX}_instances_received_total", ()),
    ("rejected", f"{PREFIX}_instances_rejected_total", ("status",)),
    ("buffered", f"{PREFIX}_instances_buffered_total", ("destination",)),
    ("uploads", f"{PREFIX}_uploads_total", ("destination", "outcome")),
    ("transcodes skipped", f"{PREFIX}_transcodes_skipped_total", ("destination",)),
    ("dead-lettered", f"{PREFIX}_dead_letters_total", ("stage", "destination")),
    ("exports", f"{PREFIX}_exports_total", ("destination", "outcome")),
)
SHOWN_DEAD_LETTERS = 5


@dataclass
class CounterRates:
    """Counter totals, and their rate per second since the previous reading."""

    counters_dir: Path | None
    _last: Samples = field(default_factory=dict)
    _last_at: float = 0.0

    def read(self) -> list[tuple[str, float, float]]:
        """(row, total, per second) for every stage with a count, in pipeline order."""
        if self.counters_dir is None or not self.counters_dir.is_dir():
            return []
        now, current = time.monotonic(), samples(pipeline_registry(self.counters_dir))
        elapsed = now - self._last_at if self._last else 0.0
        rows = []
        for name, sample, split_by in STAGES:
            for labels, value in sorted((labels, value) for (key, labels), value in current.items() if key == sample):
                before = self._last.get((sample, labels), value)
                rate = (value - before) / elapsed if elapsed > 0 else 0.0
                parts = [dict(labels)[label] for label in split_by if label in dict(labels)]
                rows.append((" / ".join([name, *parts]), value, rate))
        self._last, self._last_at = current, now
        return rows


def render(where: str, state: QueueState, letters: DeadLetters, counters: list[tuple[str, float, float]], *, cloud: bool) -> Group:
    """One frame: counters and rates, the queue, the dead letters."""
    flow = Table(title=f"dicom-adapter: {where}", title_justify="left", expand=False)
    flow.add_column("stage")
    flow.add_column("total", justify="right")
    flow.add_column("per s", justify="right")
    for row, total, rate in counters:
        flow.add_row(row, f"{total:,.0f}", f"{rate:,.1f}")
    if not counters:
        flow.add_row(Text("counters: on each edge pod's /metrics" if cloud else "no counters yet (is the adapter running?)", style="dim"), "", "")
    age = "-" if state["oldest_queued_age_s"] is None else f"{state['oldest_queued_age_s']:.1f} s"
    queue = Table(show_header=True, expand=False)
    queue.add_column("queue")
    queue.add_column("entries", justify="right")
    queue.add_row(f"waiting for upload ({state['queued_bytes']:,} bytes, oldest {age})", f"{state['queued']:,}")
    for label, count in sorted(state["queued_by_destination"].items()):
        queue.add_row(f"  to {label}", f"{count:,}")
    if "exports_queued" in state:
        queue.add_row(f"exports ({state['exports_pending_notifications']:,} notifications to route)", f"{state['exports_queued']:,}")
        for label, count in sorted(state["exports_queued_by_destination"].items()):
            queue.add_row(f"  to {label}", f"{count:,}")
    queue.add_row("dead letters", f"{len(letters):,}", style="bold red" if letters else None)
    for name, record in letters[-SHOWN_DEAD_LETTERS:]:
        queue.add_row(Text(f"  {name}: {record.get('reason')}", overflow="ellipsis", no_wrap=True), "")
    return Group(flow, queue)


def watch(
    where: str, read_state: Callable[[], tuple[QueueState, DeadLetters]], counters_dir: Path | None, *, interval_s: float = 1.0, console: Console | None = None
) -> None:
    """Redraw every `interval_s` until Ctrl-C (a slow bucket listing stretches the interval)."""
    rates = CounterRates(counters_dir)
    cloud = counters_dir is None

    def frame() -> Group:
        state, letters = read_state()
        return render(where, state, letters, rates.read(), cloud=cloud)

    with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(frame(), refresh=True)
        except KeyboardInterrupt:
            pass
