"""A column added to the contract, without stopping anyone: both wire formats, real processes.

The source gains a column (``Orders.GiftMessage``) and the next release of the contract
a nullable field with a default for it (tests/integration/contract_release.py writes
that release; its producer and consumers run as commands with it on PYTHONPATH). With
the released contract (this worktree) on one side and the new one on the other:

1. the released producer publishes; a released consumer applies, and runs on while
2. the new producer publishes events that carry the column: the released consumer
   applies them without a restart (single-object: it finds their writer schema by
   fingerprint in the folder ``schema_history_dir`` names; without that folder it
   refuses them with the unknown fingerprint named; registry: by schema id);
3. a new consumer on a group of its own reads both from the start (old events get the
   column's default), and the released consumer's group is replayed to the earliest
   offsets over both versions: every target equals the source.

Registry mode also checks that the producer sets BACKWARD on each subject, so that a
release whose schema cannot read the registered one is refused before it publishes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumers.dead_letters import dlq_topic
from queuestream.errors import QueuestreamError
from schemas.avro import AvroCodec
from tests.helpers import CLI, CLI_TIMEOUT, cli_env, wait_for
from tests.integration.contract_release import (
    REPO_ROOT,
    decoded_rows,
    release_env,
    release_with_column,
)
from tests.integration.kafka_readback import (
    committed_messages,
    message_headers,
    wait_until_readable,
)
from tests.integration.pipeline import Pipeline, run_in_thread

GIFT = {"name": "GiftMessage", "type": ["null", "string"], "default": None}
GIFT_SQL = "GiftMessage: Mapped[str | None] = mapped_column(sa.String(200))"
#: Not BACKWARD compatible: the new reader has no value for the events already written.
GIFT_REQUIRED = {"name": "GiftMessage", "type": "string"}
APPLY_TIMEOUT = 120.0  # seconds for a running consumer to apply what was published


@pytest.fixture(params=["single-object", "registry"])
def wire(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def evolving(
    sqlite_url: str, kafka_bootstrap: str, unique: str, wire: str, request: pytest.FixtureRequest
) -> Iterator[Pipeline]:
    """A pipeline whose source has the new column (NULL until set), in the ``wire`` format."""
    more: dict[str, Any] = {}
    if wire == "registry":
        more["schema_registry_url"] = request.getfixturevalue("schema_registry_url")
    pipe = Pipeline(sqlite_url, kafka_bootstrap, unique, **more)
    with pipe.source.begin() as conn:
        conn.execute(sa.text("ALTER TABLE Orders ADD COLUMN GiftMessage VARCHAR(200)"))
    try:
        yield pipe
    finally:
        pipe.close()


def _command(
    pipe: Pipeline, release: Path | None, args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``queuestream ARGS`` (or ``python -m ARGS[1:]`` when ARGS[0] is ``-m``) on ``release``."""
    settings = pipe.settings()
    more = {
        "QUEUESTREAM_SOURCE_URL": pipe.source_url,
        "QUEUESTREAM_TRANSACTIONAL_ID": settings.effective_transactional_id,
        "QUEUESTREAM_PARTITIONS": str(settings.partitions),
        "QUEUESTREAM_SETTLE_SECONDS": "0",
        "QUEUESTREAM_IDLE_SECONDS": "0.5",
    }
    env = cli_env(pipe.bootstrap, pipe.prefix, **more)
    env.pop("SCHEMA_REGISTRY_URL", None)
    if settings.schema_registry_url:
        env["SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    env = release_env(env, release)
    env["PYTHONPATH"] = ":".join(p for p in (env.get("PYTHONPATH"), str(REPO_ROOT)) if p)
    command = [CLI[0], *args] if args[0] == "-m" else [*CLI, *args]
    return subprocess.run(
        command,
        env=env,
        cwd=cwd,  # not the repository: its packages would come before PYTHONPATH's
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _give_gifts(pipe: Pipeline) -> dict[int, str]:
    """A gift message on every other order (a change: ModifiedDate moves); them by id."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with pipe.source.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE Orders SET GiftMessage = 'gift ' || OrderID, ModifiedDate = :now "
                "WHERE OrderID % 2 = 0"
            ),
            {"now": now},
        )
        found = conn.execute(sa.text("SELECT OrderID, GiftMessage FROM Orders"))
        return {int(i): m for i, m in found if m is not None}


def _new_producer_refresh(pipe: Pipeline, release: Path, cwd: Path) -> None:
    _ok(_command(pipe, release, ["refresh"], cwd))
    wait_until_readable(pipe.bootstrap, [f"{pipe.prefix}.{t}" for t in ("orders", "batches")])


def _decoded_by_release(pipe: Pipeline, release: Path, cwd: Path) -> dict[str, Any]:
    """What a process on ``release`` decodes of the orders topic (see decoded_rows)."""
    args = ["-m", "tests.integration.contract_release", pipe.prefix, "orders"]
    decoded: dict[str, Any] = json.loads(_ok(_command(pipe, release, args, cwd)))
    return decoded


@pytest.mark.slow
def test_a_column_added_while_consumers_run(evolving: Pipeline, wire: str, tmp_path: Path) -> None:
    pipe = evolving
    release = release_with_column(tmp_path / "release", "orders", "Order", GIFT, GIFT_SQL)
    history = release / "schemas" / "avro" / "history"
    old_target = f"sqlite:///{tmp_path / 'old.db'}"
    new_target = f"sqlite:///{tmp_path / 'new.db'}"

    # 1. The released contract on both sides.
    pipe.simulate(60)
    pipe.refresh()
    more = {"schema_history_dir": history} if wire == "single-object" else {}
    runtime = pipe.runtime("accounting", old_target, **more)
    runtime.until_idle = False
    thread, errors = run_in_thread(runtime)
    try:
        wait_for(
            lambda: runtime.stats.refreshes >= 1,
            timeout=APPLY_TIMEOUT,
            message="the released consumer applied the released producer's refresh",
        )

        # 2. The new producer, while the released consumer runs on.
        pipe.simulate(40)
        gifts = _give_gifts(pipe)
        assert gifts
        _new_producer_refresh(pipe, release, tmp_path)
        wait_for(
            lambda: runtime.stats.refreshes >= 2 or bool(errors),
            timeout=APPLY_TIMEOUT,
            message="the released consumer applied the new producer's refresh",
        )
    finally:
        runtime.stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert pipe.verify("accounting", old_target).ok

    # What each contract decodes: the released one never sees the column, the new one sees
    # it on the new events and its default (None) on the old ones.
    released_codec = AvroCodec.from_url(
        pipe.prefix,
        pipe.settings().schema_registry_url,
        [history] if wire == "single-object" else [],
    )
    old_view = decoded_rows(pipe.bootstrap, pipe.prefix, "orders", released_codec)
    new_view = _decoded_by_release(pipe, release, tmp_path)
    assert old_view.keys() == new_view.keys()
    assert len(old_view) > len(gifts)
    assert len({framing for framing, _ in old_view.values()}) == 2  # two writer schemas
    assert all("GiftMessage" not in after for _, after in old_view.values())
    released_framing = released_codec.header("orders", "value").hex()
    for where, (framing, old_after) in old_view.items():
        new_framing, new_after = new_view[where]
        assert new_framing == framing
        assert {k: v for k, v in new_after.items() if k != "GiftMessage"} == json.loads(
            json.dumps(old_after, default=str)
        )
        if framing == released_framing:
            assert new_after["GiftMessage"] is None  # written before the column existed
        else:
            assert new_after["GiftMessage"] == gifts.get(old_after["OrderID"])
    assert {after["GiftMessage"] for _, after in new_view.values()} >= set(gifts.values())

    if wire == "single-object":
        # Without the new release's history, the released consumer cannot know the new
        # writer schema: it stops on the first such event, naming its fingerprint, or
        # within an error budget sends each one to the dead-letter topic, bytes and all.
        unaware = f"sqlite:///{tmp_path / 'unaware.db'}"
        group = f"{pipe.prefix}-unaware"
        with pytest.raises(QueuestreamError, match="unknown schema fingerprint"):
            pipe.consume("accounting", unaware, consumer_group=group)
        stats = pipe.consume("accounting", unaware, consumer_group=group, max_errors=1000)
        newer = {w: f for w, (f, _) in old_view.items() if f != released_framing}
        letters = committed_messages(pipe.bootstrap, [dlq_topic(f"{pipe.prefix}.orders")])
        assert stats.errors == len(newer) == len(letters) > 0
        (framing,) = set(newer.values())
        for letter in letters:
            headers = message_headers(letter)
            assert headers["queuestream.errors.class"] == "DecodeError"
            assert (
                f"unknown schema fingerprint {framing[4:]}" in headers["queuestream.errors.message"]
            )
            assert (letter.value() or b"").hex().startswith(framing)  # the event as it was

    # 3. A consumer on the new contract reads both versions from the start ...
    _ok(
        _command(
            pipe,
            release,
            [
                "consume",
                "accounting",
                "--until-idle",
                "--target",
                new_target,
                "--group",
                f"{pipe.prefix}-new",
            ],
            tmp_path,
        )
    )
    assert pipe.verify("accounting", new_target).ok
    # ... and the released consumer's group is replayed over both.
    group = pipe.settings().group_for("accounting")
    replay = ["replay", "--group", group, "--to-earliest", "--target", old_target, "--execute"]
    _ok(_command(pipe, None, replay, tmp_path))
    again = pipe.consume("accounting", old_target, **more)
    assert again.rows == 0 and again.stale > 0  # every event read again, none applied twice
    assert pipe.verify("accounting", old_target).ok


def test_the_registry_refuses_a_release_its_consumers_could_not_use(
    sqlite_url: str,
    kafka_bootstrap: str,
    unique: str,
    schema_registry_url: str,
    tmp_path: Path,
) -> None:
    """The producer sets BACKWARD on its subjects: a schema that cannot read the registered
    one (a column without a default) is refused, and nothing of it is published."""
    pipe = Pipeline(sqlite_url, kafka_bootstrap, unique, schema_registry_url=schema_registry_url)
    try:
        with pipe.source.begin() as conn:
            conn.execute(sa.text("ALTER TABLE Orders ADD COLUMN GiftMessage VARCHAR(200)"))
        pipe.simulate(40)
        pipe.refresh()
        registry = SchemaRegistryClient({"url": schema_registry_url})
        subject = f"{pipe.prefix}.orders-value"
        versions = registry.get_versions(subject)
        published = decoded_rows(
            pipe.bootstrap,
            pipe.prefix,
            "orders",
            AvroCodec.from_url(pipe.prefix, schema_registry_url),
        )

        release = release_with_column(
            tmp_path / "release",
            "orders",
            "Order",
            GIFT_REQUIRED,
            GIFT_SQL.replace("str | None", "str"),
            recorded=False,  # record() would refuse it
        )
        _give_gifts(pipe)
        refused = _command(pipe, release, ["refresh"], tmp_path)
        assert refused.returncode == 1
        assert "refuses a schema (HTTP 409" in refused.stderr, refused.stderr[-2000:]
        assert registry.get_versions(subject) == versions
        assert registry.get_compatibility(subject) == "BACKWARD"
        assert (
            decoded_rows(
                pipe.bootstrap,
                pipe.prefix,
                "orders",
                AvroCodec.from_url(pipe.prefix, schema_registry_url),
            )
            == published
        )
    finally:
        pipe.close()
