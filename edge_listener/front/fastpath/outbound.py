"""Which association carries the C-STORE of each instance of a C-MOVE or C-GET.

C-GET: the requester's own association (the storage contexts it proposed with the SCP role);
nothing is opened. C-MOVE: an association to the Move Destination, opened when the first
instance is ready and offering every SOP class known by then: all of them when the plan named
its instances, the first instance's when the plan named only series (their instances name
themselves as they arrive, see services/retrieve_fetch.py). Only an instance of a SOP class that the
open association was not offered (a later series of another class, say a screenshot series
after the images) makes it change: that one is released and the next offers every class seen
so far, so a study of one SOP class goes on ONE association, and there is never more than one
at a time (many destinations, storescp among them, serve one association after the other: a
second one opened beside the first would wait for it forever). A SOP class that was offered
and refused stays refused: its instances fail with that reason. Once the destination could not
be reached, no further association is tried.

Per association and SOP class, the accepted transfer syntaxes and their context IDs are looked
up once: pynetdicom's lookups build and validate UIDs on every call (a tenth of the sender's
CPU per C-STORE).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Iterable

from edge_listener.services.retrieve import accepted_syntaxes

from . import wire

# Opens an association to the Move Destination offering these SOP classes; raises
# DestinationUnavailable (with the comment for the requester) if it cannot.
Opener = Callable[[set[str]], Any]


class DestinationUnavailable(Exception):
    """No association to the destination for this instance; `comment` says why (no PHI)."""

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment


class Outbound:
    """The association the C-STOREs of one retrieval go out on. `prepare` is applied to each
    association before its first C-STORE (the P-DATA throttle); it is held `wire.paused`
    while we send; `release()` releases the one opened here (after the final response)."""

    def __init__(
        self, opener: Opener | None, requester: Any = None, known: Iterable[str] = (), prepare: Callable[[Any], None] = lambda assoc: None
    ) -> None:
        self._opener = opener
        self._prepare = prepare
        self._seen = set(known)  # SOP classes to offer the next association
        self._current: Any = None
        self._offered: set[str] = set()  # ...offered to the current one
        self.opened = 0  # associations taken so far (C-MOVE: opened to the destination)
        self._down: str | None = None  # why the destination cannot be reached
        self._syntaxes: dict[str, dict[str, int]] = {}  # of the current association, per SOP class
        self._paused = ExitStack()
        if requester is not None:
            self._take(requester, set())

    @classmethod
    def requester(cls, assoc: Any, prepare: Callable[[Any], None] = lambda assoc: None) -> Outbound:
        """C-GET: every C-STORE on the requester's association."""
        return cls(None, requester=assoc, prepare=prepare)

    def association(self, sop_class: str) -> Any:
        """The association for an instance of `sop_class`: the open one if it was offered that
        class (or for C-GET), else a new one offering it and every class seen before."""
        if self._opener is None or sop_class in self._offered:
            return self._current
        if self._down is not None:
            raise DestinationUnavailable(self._down)
        self._seen.add(sop_class)
        self.release()
        try:
            assoc = self._opener(set(self._seen))
        except DestinationUnavailable as exc:
            self._down = exc.comment
            raise
        self._take(assoc, set(self._seen))
        return assoc

    def accepted(self, assoc: Any, sop_class: str) -> dict[str, int]:
        """Transfer syntax -> context ID in which we may send `sop_class` on `assoc` (the
        current association; as the C-STORE SCU), in the order the contexts were accepted."""
        found = self._syntaxes.get(sop_class)
        if found is None:
            found = self._syntaxes[sop_class] = accepted_syntaxes(assoc, sop_class)
        return found

    @property
    def is_established(self) -> bool:
        return self._current is None or self._current.is_established

    def end_sending(self) -> None:
        """Give the association's reactor back (before the final response)."""
        self._paused.close()

    def release(self) -> None:
        """End sending, and release the association if we opened it."""
        self.end_sending()
        if self._opener is not None and self._current is not None and self._current.is_established:
            self._current.release()

    def _take(self, assoc: Any, offered: set[str]) -> None:
        self._prepare(assoc)
        self._paused.enter_context(wire.paused(assoc))
        self._current, self._offered, self._syntaxes = assoc, offered, {}
        self.opened += 1
