"""app.kinds: every kind of the catalogue walked through every place it reaches, from its declaration alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import Counter, Histogram
from sqlalchemy import Engine, Table, select

from app import kinds
from app.db.models import MetricEvent
from app.ingest import Attempt, reset_label_caps, store_and_count
from app.metrics import definitions, labels
from app.metrics.counting import Move
from app.store import event_row
from panic_metrics_client.events import EVENT_KINDS, EVENT_MODELS, Event
from panic_metrics_client.messages import TASK_OF_KIND
from tests.support.db import rolled_back_session
from tests.support.from_model import events
from workers.tasks import events as tasks

TABLE = cast("Table", MetricEvent.__table__)
COMMON_COLUMNS = {"event_id", "kind", "occurred_at", "published_at", "stored_at", "stored_by"}
METRICS = [value for value in vars(definitions).values() if isinstance(value, Counter | Histogram | definitions.Gauge)]


# Each kind of the client's catalogue (a parameter, not a fixture: hypothesis draws per kind).
each_kind = pytest.mark.parametrize("kind_name", EVENT_KINDS)


def test_each_catalogue_model_has_exactly_one_declaration() -> None:
    """The declarations and the catalogue's models are the same set, each declared once."""
    declared = [kind.model for kind in kinds.KINDS]
    assert sorted(m.__name__ for m in declared) == sorted(m.__name__ for m in EVENT_MODELS.values())
    assert len(set(declared)) == len(declared)
    assert [kinds.KIND_OF[model].name for model in EVENT_MODELS.values()] == list(EVENT_KINDS)


def test_a_catalogue_kind_without_declaration_stops_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """The import-time check names the kind the worker could not store."""
    monkeypatch.setattr(kinds, "KINDS", kinds.KINDS[1:])
    with pytest.raises(RuntimeError, match="missing \\['panic_request'\\]"):
        kinds._check_one_per_model()
    monkeypatch.setattr(kinds, "KINDS", (*kinds.KINDS, kinds.KINDS[0]))
    with pytest.raises(RuntimeError, match="twice"):
        kinds._check_one_per_model()


@each_kind
def test_each_kind_has_its_task(kind_name: str) -> None:
    """The worker registers a task under the name the client publishes the kind to."""
    task = tasks.EVENT_TASKS[kind_name]
    assert task.name == TASK_OF_KIND[kind_name]
    assert getattr(tasks, TASK_OF_KIND[kind_name].rpartition(".")[2]) is task
    assert task.__doc__


@each_kind
def test_declared_columns_exist_and_come_from_fields(kind_name: str) -> None:
    """Every declared column is a column of metric_events (not a common one), filled from a field or property
    of the model, or computed from the event."""
    kind = kinds.KIND_OF[EVENT_MODELS[kind_name]]
    assert kind.name == kind_name
    assert set(kind.columns) <= set(TABLE.columns.keys()) - COMMON_COLUMNS
    named = {source for source in kind.columns.values() if isinstance(source, str)}
    properties = {name for name in dir(kind.model) if isinstance(getattr(kind.model, name), property)}
    assert named <= set(kind.model.model_fields) | properties
    assert all(isinstance(source, str) or callable(source) for source in kind.columns.values())


@each_kind
def test_capped_fields_are_label_dimensions(kind_name: str) -> None:
    """Each free-text label field is a field of the model and a dimension with a cap."""
    kind = kinds.KIND_OF[EVENT_MODELS[kind_name]]
    assert set(kind.capped) <= set(kind.model.model_fields)
    assert set(kind.capped) <= set(labels.DIMENSIONS)


@each_kind
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_moves_name_defined_metrics_with_their_labels(kind_name: str, data: st.DataObject) -> None:
    """Every metric a kind moves is defined in app.metrics.definitions, with exactly its label names."""
    kind = kinds.KIND_OF[EVENT_MODELS[kind_name]]
    event = data.draw(events(kind.model))
    capped = {
        field: data.draw(st.sampled_from([str(value), labels.OTHER])) for field, value in kind.raw_labels(event).items()
    }
    moves = kind.moves(event, capped)
    assert moves
    for move in moves:
        assert any(move.metric is metric for metric in METRICS), move.metric
        assert sorted(move.labels) == sorted(move.metric._labelnames)


def _same(stored: Any, sent: Any) -> bool:
    """A value as the database gives it back equals the value the event held."""
    if isinstance(sent, Enum):
        return bool(stored == sent.value)
    if isinstance(sent, datetime):
        return bool(stored.replace(tzinfo=UTC) == sent.astimezone(UTC)) if stored.tzinfo is None else stored == sent
    if isinstance(sent, Decimal):
        return Decimal(str(stored)) == sent
    return bool(stored == sent)


def _target_of(move: Move) -> Any:
    child = move.metric.labels(**move.labels)
    return child._sum if isinstance(move.metric, Histogram) else child._value


@each_kind
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_generated_event_is_stored_as_one_row_and_tallied(
    kind_name: str, db_engine: Engine, data: st.DataObject
) -> None:
    """A valid event of any kind becomes its row (every declared column as sent) and a tally of what it moves."""
    kind = kinds.KIND_OF[EVENT_MODELS[kind_name]]
    event: Event = data.draw(events(kind.model))
    reset_label_caps()
    attempt = Attempt()
    with rolled_back_session(db_engine) as session:
        result = store_and_count(session, events=[event], published_at=None, attempt=attempt)
        row = session.execute(select(MetricEvent).where(MetricEvent.event_id == event.event_id)).scalar_one()
    assert (result.stored, result.duplicates, result.rejected) == (1, 0, 0)
    assert row.kind == kind_name
    for column, source in kind.columns.items():
        sent = getattr(event, source) if isinstance(source, str) else source(event)
        assert _same(getattr(row, column), sent), (column, getattr(row, column), sent)
    # A fresh database admits every label value, so the moves see them uncapped.
    moves = kind.moves(event, kind.raw_labels(event))
    tallied = {id(target.value) for target in attempt.tally.targets()}
    for move in moves:
        assert (id(_target_of(move)) in tallied) == (move.amount is not None), move
    assert id(definitions.EVENTS_STORED.labels(kind=kind_name)._value) in tallied


@each_kind
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_event_row_fills_only_the_kind_s_columns(kind_name: str, data: st.DataObject) -> None:
    """The row has every column of metric_events but stored_at; those of other kinds stay empty."""
    kind = kinds.KIND_OF[EVENT_MODELS[kind_name]]
    event = data.draw(events(kind.model))
    token = uuid.uuid4()
    row = event_row(event, published_at=None, stored_by=token)
    assert set(row) == set(TABLE.columns.keys()) - {"stored_at"}
    assert (row["event_id"], row["kind"], row["stored_by"]) == (event.event_id, kind_name, token)
    others = set(row) - set(kind.columns) - COMMON_COLUMNS
    assert all(row[column] is None for column in others)
