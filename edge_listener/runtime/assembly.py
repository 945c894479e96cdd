"""The DIMSE services beside C-STORE (C-FIND, C-MOVE, C-GET, Storage Commitment), built from
one picklable settings object so every listener process builds the same ones.

In local mode they ask the DICOMweb store in process; with `qido_url` (cloud mode) C-FIND and
the instance look-ups of retrieval go to the `qido` Cloud Function instead.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path

from dicom_adapter import qido
from dicom_adapter.aets import Peer
from dicom_adapter.buffers.spool import Spool
from dicom_adapter.config import UploadSettings
from dicom_adapter.dicomweb import DicomWebClient
from dicom_adapter.store_profiles import DEFAULT_PROFILE, store_profile
from dicom_adapter.upload import store_client

from edge_listener.services.commitment import CommitmentService
from edge_listener.services.query import Finder, QueryService
from edge_listener.services.retrieve import Planner, Resolver, RetrieveService
from edge_listener.front.server import DimseService


# C-FIND asks the store for its next page while one is answered: a large result comes faster,
# a small one costs the store one request more; and its first page is small, so the first
# match goes out before a large answer is complete (see dicomweb._search_pages).
FIND_PAGES_IN_FLIGHT = 2
FIND_FIRST_PAGE = 25


@dataclass(frozen=True)
class QueryRetrieveSettings:
    store: UploadSettings  # the DICOMweb store and how to reach it
    fuzzy_matching: bool = False
    qido_page_size: int = 500
    qido_store_profile: str = DEFAULT_PROFILE  # what the store's QIDO-RS is trusted to match (store_profiles.py)
    qido_url: str | None = None  # cloud mode: the qido function; None: search the store in process
    peers: dict[str, Peer] = field(default_factory=dict)  # AET dictionary: move destinations, commitment requesters
    cmove_aet: str | None = None  # calling AE of outgoing associations; None: the listener's AE title
    staging_dir: Path | None = None  # where retrieved instances wait for their C-STORE
    spool_dir: Path | None = None  # commitment waits for instances still queued here
    commitment_wait_s: float = 120.0  # ...at most this long


def finder(settings: QueryRetrieveSettings, client: DicomWebClient) -> Finder:
    """How C-FIND identifiers are answered: the qido function, or the same code in process."""
    if settings.qido_url:
        from dicom_adapter.qido_client import QidoFunctionClient

        return QidoFunctionClient(settings.qido_url, fuzzy=settings.fuzzy_matching).find_json  # its own profile
    paging = copy.copy(client)  # the same store and session, two QIDO-RS pages at once
    paging.pages_in_flight = FIND_PAGES_IN_FLIGHT
    paging.first_page_size = FIND_FIRST_PAGE
    return functools.partial(_find_in_process, paging, settings)


def resolvers(settings: QueryRetrieveSettings, client: DicomWebClient) -> tuple[Planner, Resolver]:
    """How C-MOVE/C-GET identifiers become series and instances (qido.plan_retrieval,
    qido.resolve_instances): the qido function, or in process."""
    if settings.qido_url:
        from dicom_adapter.qido_client import QidoFunctionClient

        function = QidoFunctionClient(settings.qido_url)
        return function.plan_retrieval, function.resolve_instances
    return (
        functools.partial(_in_process, qido.plan_retrieval, client, settings),
        functools.partial(_in_process, qido.resolve_instances, client, settings),
    )


def _in_process(search, client: DicomWebClient, settings: QueryRetrieveSettings, identifier, model):  # type: ignore[no-untyped-def]
    return search(client, identifier, model, page_size=settings.qido_page_size, profile=store_profile(settings.qido_store_profile))


def _find_in_process(client: DicomWebClient, settings: QueryRetrieveSettings, identifier, model):  # type: ignore[no-untyped-def]
    return qido.find_json(client, identifier, model, fuzzy=settings.fuzzy_matching, page_size=settings.qido_page_size,
                          profile=store_profile(settings.qido_store_profile))


def build_services(settings: QueryRetrieveSettings | None) -> list[DimseService]:
    if settings is None:
        return []
    client = store_client(settings.store)
    services: list[DimseService] = [QueryService(finder(settings, client))]
    if settings.staging_dir is not None:
        services.append(
            RetrieveService(
                *resolvers(settings, client), client, settings.peers, settings.staging_dir, settings.cmove_aet, tls=settings.store.dimse_tls
            )
        )
    spool = Spool(settings.spool_dir) if settings.spool_dir is not None else None
    services.append(
        CommitmentService(client, settings.peers, spool, settings.cmove_aet, settings.commitment_wait_s, tls=settings.store.dimse_tls)
    )
    return services
