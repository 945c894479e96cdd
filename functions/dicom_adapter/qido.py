"""C-FIND identifiers as QIDO-RS searches, and QIDO-RS answers as C-FIND identifiers.

The one translation between DIMSE queries and the store, used by the edge in local mode and by
the `qido` Cloud Function in cloud mode (functions/main.py):
  * each non-empty key becomes a QIDO match parameter (single value, `*`/`?` wildcards, date
    and time ranges, UID lists as comma-separated lists);
  * each empty key (or a lone `*`) becomes an `includefield`;
  * a multi-valued ModalitiesInStudy becomes one search per modality, merged without
    duplicates; PATIENT level searches studies and merges them by Patient ID;
  * every answer is a Dataset holding exactly the requested keys (empty if the store has no
    value), from the store's DICOM JSON by pydicom's `Dataset.from_json`.
Results are generators: the store is paged as they are consumed, and a consumer that stops
(C-CANCEL) stops the paging. Bad identifiers raise QueryError with the DIMSE status to answer.

For C-MOVE/C-GET/commitment: `resolve_instances` names every instance by an instance-level
search; `plan_retrieval` above IMAGE level names only the series, with the store's count of
their instances, by one series-level search (the instances then name themselves in the
WADO-RS answer; retrieve_fetch.py), which spares the store a search result per instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from .dicomweb import DicomWebClient, DicomWebError, in_order
from .matching import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    Key,
    QueryError,
    answer_matches,
    check_character_set,
    is_matching_element,
    json_key,
    key_of,
    tag_text,
)
from .store_profiles import StoreProfile, store_profile

PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"
LEVELS_OF_MODEL = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}

# DIMSE statuses of query failures (PS3.4 C.4.1.1.4, C.4.2.1.5).
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700

MODALITIES_IN_STUDY = Tag(0x0008, 0x0061)
PATIENT_ID = Tag(0x0010, 0x0020)
STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)
SERIES_INSTANCE_UID = Tag(0x0020, 0x000E)
SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
SOP_CLASS_UID = Tag(0x0008, 0x0016)
NUMBER_OF_SERIES_RELATED_INSTANCES = Tag(0x0020, 0x1209)
# Patient-level counts: sums of the study-level counts the store gives.
PATIENT_COUNTS = {
    Tag(0x0020, 0x1200): None,  # NumberOfPatientRelatedStudies: one per study
    Tag(0x0020, 0x1202): Tag(0x0020, 0x1206),  # ...RelatedSeries: sum of NumberOfStudyRelatedSeries
    Tag(0x0020, 0x1204): Tag(0x0020, 0x1208),  # ...RelatedInstances: sum of NumberOfStudyRelatedInstances
}
RESOLVE_SERIES_IN_FLIGHT = 2  # series of a study searched at once when resolving its instances


@dataclass(frozen=True)
class InstanceRef:
    """One instance a C-MOVE, C-GET or commitment needs: its UIDs, from a QIDO answer."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class SeriesRef:
    """A whole series a C-MOVE/C-GET needs, with the store's count of its instances (the
    remaining count of the Pending responses before its instances are known)."""

    study_instance_uid: str
    series_instance_uid: str
    instances: int


@dataclass(frozen=True)
class QidoSearch:
    """One QIDO-RS request: resource level, the UIDs in its path and its query parameters."""

    level: str  # studies | series | instances
    study: str | None
    series: str | None
    params: dict[str, Any]


def find(
    client: DicomWebClient,
    identifier: Dataset,
    model: str,
    *,
    fuzzy: bool = False,
    page_size: int = 500,
    profile: StoreProfile | None = None,
) -> Iterator[Dataset]:
    """Answer a C-FIND identifier from the store: one Dataset per match, as the pages arrive."""
    level = query_level(identifier, model)
    for answer in _answers(client, identifier, level, fuzzy, page_size, profile or store_profile(None)):
        yield to_identifier(answer, identifier, level)


def find_json(
    client: DicomWebClient,
    identifier: Dataset,
    model: str,
    *,
    fuzzy: bool = False,
    page_size: int = 500,
    profile: StoreProfile | None = None,
) -> Iterator[dict[str, Any]]:
    """`find`, each match as DICOM JSON (identifier_json): no pydicom per match."""
    level = query_level(identifier, model)
    build = identifier_json_builder(identifier, level)
    for answer in _answers(client, identifier, level, fuzzy, page_size, profile or store_profile(None)):
        yield build(answer)


def _answers(
    client: DicomWebClient, identifier: Dataset, level: str, fuzzy: bool, page_size: int, profile: StoreProfile
) -> Iterator[dict[str, Any]]:
    """The store's answers to the identifier's searches that match every key (matching.py),
    merged (and per patient at PATIENT level)."""
    searches = translate(identifier, level, fuzzy=fuzzy, profile=profile)
    keys = adapter_keys(identifier, searches, fuzzy=fuzzy)
    answers = _merged(client, searches, keys, page_size, unique=_unique_key(level))
    return _patients(answers, identifier) if level == "PATIENT" else answers


def adapter_keys(identifier: Dataset, searches: list[QidoSearch], *, fuzzy: bool = False) -> list[Key]:
    """The keys the adapter matches each answer on: all but a UID the searches' path holds (the
    store answered exactly that resource) and, with fuzzy matching, names (the store's fuzzy
    match is the point of the flag: Google's adapter's meaning)."""
    in_path = {STUDY_INSTANCE_UID} if searches[0].study else set()
    in_path |= {SERIES_INSTANCE_UID} if searches[0].series else set()
    keys = []
    for element in identifier:
        if not is_matching_element(element) or element.tag in in_path:
            continue
        key = key_of(element)
        if not key.universal and not (fuzzy and key.vr == "PN"):
            keys.append(key)
    return keys


def query_level(identifier: Dataset, model: str) -> str:
    if model not in LEVELS_OF_MODEL:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"unknown information model {model!r}")
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "Query/Retrieve Level (0008,0052) is missing")
    if level not in LEVELS_OF_MODEL[model]:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"level {level[:16]} is not in the {model.lower()} root model")
    return level


def translate(identifier: Dataset, level: str, *, fuzzy: bool = False, profile: StoreProfile | None = None) -> list[QidoSearch]:
    """The QIDO-RS searches that together return (at least) every match of `identifier` at
    `level`: the keys `profile` trusts the store with as match parameters, every other key as
    an `includefield`, so the adapter can match the answers itself (adapter_keys)."""
    profile = profile or store_profile(None)
    check_character_set(identifier)
    params: dict[str, Any] = {}
    include: list[str] = []
    modalities: list[str] = []
    for element in identifier:
        if not is_matching_element(element):
            continue
        name = _qido_name(element.tag)
        key = key_of(element)
        values = list(key.values or ())
        include.append(name)  # matched keys too: the adapter matches each answer on them
        if fuzzy and key.vr == "PN" and values:
            params[name] = values[0]  # the store's fuzzy match is the answer (adapter_keys)
        elif not values:
            continue
        elif element.tag == MODALITIES_IN_STUDY and level == "STUDY" and len(values) > 1 and profile.trusts(key_of_one(key)):
            modalities = list(dict.fromkeys(values))
        elif (value := profile.match_value(key)) is not None:
            params[name] = value
    # UIDs that name a single parent go into the path (hierarchical); others stay filters.
    study = _single(params, STUDY_INSTANCE_UID) if level in ("SERIES", "IMAGE") else None
    series = _single(params, SERIES_INSTANCE_UID) if level == "IMAGE" and study else None
    if level == "PATIENT":
        include += [_qido_name(t) for t in (PATIENT_ID, Tag(0x0020, 0x1206), Tag(0x0020, 0x1208))]
    if include:
        params["includefield"] = list(dict.fromkeys(include))  # repeated: every store reads that
    if fuzzy:
        params["fuzzymatching"] = "true"
    resource = {"PATIENT": "studies", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}[level]
    if not modalities:
        return [QidoSearch(resource, study, series, params)]
    name = _qido_name(MODALITIES_IN_STUDY)
    return [QidoSearch(resource, study, series, {**params, name: modality}) for modality in modalities]


def key_of_one(key: Key) -> Key:
    """A list key as one of its values (ModalitiesInStudy: one search per value)."""
    return Key(key.tag, key.vr, (key.values or ("",))[:1])


def to_identifier(answer: dict[str, Any], request: Dataset, level: str) -> Dataset:
    """A C-FIND response identifier: the requested keys, valued from the store's answer."""
    found = Dataset.from_json(_without_bulk_data(answer))
    response = Dataset()
    for element in request:
        tag = element.tag
        if tag == SPECIFIC_CHARACTER_SET or tag.group in (0x0000, 0x0002):
            continue
        if tag == QUERY_RETRIEVE_LEVEL:
            response.QueryRetrieveLevel = level
        elif tag in found:
            response[tag] = found[tag]
        elif element.VR == "UI" and element.VM == 1:  # a single UID the search had in its path
            response[tag] = DataElement(tag, "UI", element.value)
        elif element.VR == "SQ":
            response[tag] = DataElement(tag, "SQ", [])
        else:
            response[tag] = DataElement(tag, element.VR, None)
    return response


def identifier_json(answer: dict[str, Any], request: Dataset, level: str) -> dict[str, Any]:
    """to_identifier in DICOM JSON, straight from the store's answer: the requested keys, valued
    from the answer (its elements as they are), else empty."""
    return identifier_json_builder(request, level)(answer)


def identifier_json_builder(request: Dataset, level: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """identifier_json for one request, its keys read once: a C-FIND answers many matches, and
    walking the request Dataset for each cost more than the rest of building the response."""
    level_element = {"vr": "CS", "Value": [level]}  # always the level asked at
    keys: list[tuple[str, dict[str, Any] | None]] = []  # (JSON key, the element if the answer has none; None: the level)
    for element in request:
        tag = element.tag
        if tag == SPECIFIC_CHARACTER_SET or tag.group in (0x0000, 0x0002):
            continue
        if " or " in element.VR:  # an ambiguous VR (pixel module keys): pydicom resolves those
            return lambda answer: to_identifier(answer, request, level).to_json_dict()
        if tag == QUERY_RETRIEVE_LEVEL:
            keys.append((json_key(tag), None))
        elif element.VR == "UI" and element.VM == 1:  # a single UID the search had in its path
            keys.append((json_key(tag), {"vr": "UI", "Value": [str(element.value)]}))
        elif element.VR == "SQ":
            keys.append((json_key(tag), {"vr": "SQ", "Value": []}))
        else:
            keys.append((json_key(tag), {"vr": element.VR}))

    def build(answer: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = {}
        for key, empty in keys:
            found = answer.get(key)
            if empty is None:
                response[key] = level_element
            elif isinstance(found, dict) and "BulkDataURI" not in found:
                response[key] = found
            else:
                response[key] = empty
        return response

    return build


def resolve_instances(
    client: DicomWebClient, identifier: Dataset, model: str, *, page_size: int = 500, profile: StoreProfile | None = None
) -> Iterator[InstanceRef]:
    """The instances a C-MOVE/C-GET identifier names, by its unique keys down to its level."""
    query = _retrieve_query(identifier, model, "IMAGE")
    # The UIDs straight from the DICOM JSON: pydicom's JSON model cost ~1 ms per instance here.
    tags = (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID, SOP_CLASS_UID)

    searches = translate(query, "IMAGE", profile=profile)
    keys = adapter_keys(query, searches)

    def refs(search: QidoSearch) -> list[InstanceRef]:
        in_path = {STUDY_INSTANCE_UID: search.study or "", SERIES_INSTANCE_UID: search.series or ""}  # the answer may omit them
        answers = _search_matching(client, search, keys, page_size)
        found = ([str(_first(answer, json_key(tag)) or in_path.get(tag, "")) for tag in tags] for answer in answers)
        return [InstanceRef(*uids) for uids in found if all(uids)]

    for found in in_order(refs, _per_series(client, searches, page_size), RESOLVE_SERIES_IN_FLIGHT):
        yield from found


def plan_retrieval(
    client: DicomWebClient, identifier: Dataset, model: str, *, page_size: int = 500, profile: StoreProfile | None = None
) -> Iterator[InstanceRef | SeriesRef]:
    """What a C-MOVE/C-GET identifier names: above IMAGE level its series, each with the
    store's instance count, from one series-level search (Orthanc: 10 ms for a study of 500
    instances, against 180-270 ms to name them all); at IMAGE level, or when the store gives
    no count for a series, its instances (resolve_instances)."""
    level = query_level(identifier, model)
    if level == "IMAGE":
        yield from resolve_instances(client, identifier, model, page_size=page_size, profile=profile)
        return
    query = _retrieve_query(identifier, model, "SERIES")
    query[NUMBER_OF_SERIES_RELATED_INSTANCES] = DataElement(NUMBER_OF_SERIES_RELATED_INSTANCES, "IS", None)
    searches = translate(query, "SERIES", profile=profile)  # unique keys only: no ModalitiesInStudy, one search
    search, keys = searches[0], adapter_keys(query, searches)
    series: dict[str, SeriesRef] = {}
    for answer in _search_matching(client, search, keys, page_size):
        study_uid = str(_first(answer, json_key(STUDY_INSTANCE_UID)) or search.study or "")
        series_uid = str(_first(answer, json_key(SERIES_INSTANCE_UID)))
        count = _first(answer, json_key(NUMBER_OF_SERIES_RELATED_INSTANCES))
        if not (study_uid and series_uid):
            continue
        if not isinstance(count, (int, str)) or not str(count).strip().isdigit():
            yield from resolve_instances(client, identifier, model, page_size=page_size, profile=profile)
            return
        series.setdefault(series_uid, SeriesRef(study_uid, series_uid, int(count)))
    yield from (ref for ref in series.values() if ref.instances > 0)


def series_identifier(series: SeriesRef) -> Dataset:
    """A Study Root SERIES-level retrieve identifier naming one series (resolve_instances)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = series.study_instance_uid
    identifier.SeriesInstanceUID = series.series_instance_uid
    return identifier


def _retrieve_query(identifier: Dataset, model: str, query_at: str) -> Dataset:
    """The query at `query_at` (IMAGE or SERIES) for a retrieve identifier: its unique keys down
    to its level (the last one required), the other UIDs as return keys."""
    level = query_level(identifier, model)
    required = {
        "PATIENT": [PATIENT_ID],
        "STUDY": ([PATIENT_ID] if model == PATIENT_ROOT else []) + [STUDY_INSTANCE_UID],
        "SERIES": [STUDY_INSTANCE_UID, SERIES_INSTANCE_UID],
        "IMAGE": [STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID],
    }[level]
    keys = (PATIENT_ID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID) + ((SOP_INSTANCE_UID, SOP_CLASS_UID) if query_at == "IMAGE" else ())
    query = Dataset()
    query.QueryRetrieveLevel = query_at
    for tag in keys:
        value = identifier.get(tag)
        given = value is not None and value.value not in (None, "", [])
        if tag == required[-1] and not given:
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{level} level needs {tag_text(tag)}")
        if given and tag in required:
            query[tag] = value
        else:
            query[tag] = DataElement(tag, "LO" if tag == PATIENT_ID else "UI", None)
    return query


def _per_series(client: DicomWebClient, searches: list[QidoSearch], page_size: int) -> list[QidoSearch]:
    """A search for a whole study's instances as one search per series, which the store can
    answer in parallel (Orthanc: 500 instances in two series, 0.17 s instead of 0.3 s)."""
    if len(searches) != 1 or not searches[0].study or searches[0].series:
        return searches
    whole = searches[0]
    series = [str(_first(answer, json_key(SERIES_INSTANCE_UID))) for answer in _search(client, QidoSearch("series", whole.study, None, {}), page_size)]
    if len(series) < 2 or not all(series):
        return searches
    return [QidoSearch("instances", whole.study, uid, whole.params) for uid in dict.fromkeys(series)]


def _merged(client: DicomWebClient, searches: list[QidoSearch], keys: list[Key], page_size: int, unique: Tag) -> Iterator[dict[str, Any]]:
    """The matching answers of every search, each unique key once (several ModalitiesInStudy)."""
    seen: set[str] = set()
    key = json_key(unique)
    for search in searches:
        for answer in _search_matching(client, search, keys, page_size):
            if len(searches) > 1:
                uid = str(_first(answer, key))
                if uid in seen:
                    continue
                seen.add(uid)
            yield answer


def _search_matching(client: DicomWebClient, search: QidoSearch, keys: list[Key], page_size: int) -> Iterator[dict[str, Any]]:
    """The store's answers to `search` that match every key (the store's QIDO is a prefilter)."""
    return (answer for answer in _search(client, search, page_size) if answer_matches(keys, answer))


def _search(client: DicomWebClient, search: QidoSearch, page_size: int) -> Iterator[dict[str, Any]]:
    try:
        if search.level == "studies":
            yield from client.search_for_studies(search.params, page_size=page_size)
        elif search.level == "series":
            yield from client.search_for_series(search.study, search.params, page_size=page_size)
        else:
            yield from client.search_for_instances(search.study, search.series, search.params, page_size=page_size)
    except DicomWebError as exc:
        if exc.http_status is not None and 400 <= exc.http_status < 500 and exc.http_status not in (408, 429):
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"store refused the query: {exc.reason}") from None
        raise QueryError(OUT_OF_RESOURCES, f"store unavailable: {exc.reason}") from None


def _patients(studies: Iterable[dict[str, Any]], request: Dataset) -> Iterator[dict[str, Any]]:
    """PATIENT level from study answers: one answer per Patient ID.

    Streams when no patient counts are asked for; counts need every study first.
    """
    key = json_key(PATIENT_ID)
    counts = [tag for tag in PATIENT_COUNTS if tag in request]
    if not counts:
        seen: set[str] = set()
        for study in studies:
            patient = _first(study, key)
            if patient not in seen:
                seen.add(patient)
                yield study
        return
    patients: dict[str, dict[str, Any]] = {}
    for study in studies:
        patient = patients.setdefault(_first(study, key), {**study, **{json_key(t): {"vr": "IS", "Value": [0]} for t in counts}})
        for tag in counts:
            source = PATIENT_COUNTS[tag]
            add = 1 if source is None else int(_first(study, json_key(source)) or 0)
            patient[json_key(tag)]["Value"][0] += add
    yield from patients.values()


def _unique_key(level: str) -> Tag:
    return {"PATIENT": STUDY_INSTANCE_UID, "STUDY": STUDY_INSTANCE_UID, "SERIES": SERIES_INSTANCE_UID, "IMAGE": SOP_INSTANCE_UID}[level]


def _single(params: dict[str, Any], tag: Tag) -> str | None:
    """Take a single UID out of the parameters (it goes into the path instead)."""
    name = _qido_name(tag)
    value = params.get(name)
    if value and "," not in value and "*" not in value and "?" not in value:
        del params[name]
        return value
    return None


def _qido_name(tag: Tag) -> str:
    """The QIDO-RS attribute name: the keyword if DICOM has one, else the tag as 8 hex digits."""
    return keyword_for_tag(tag) or f"{tag:08X}"


def _first(answer: dict[str, Any], key: str) -> Any:
    values = (answer.get(key) or {}).get("Value") or [""]
    return values[0]


def _without_bulk_data(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without elements given by BulkDataURI: a C-FIND response never carries bulk
    data, and without them pydicom needs no handler (with one, it inspects the handler's
    signature for every element: a third of the decoding time of a large result)."""
    return {tag: value for tag, value in answer.items() if not (isinstance(value, dict) and "BulkDataURI" in value)}
