"""`robmon dead-letters list`: production records that could not be scored, and why."""

from __future__ import annotations

import typer

from monitor.cli.base import (
    JSON_OPTION,
    command_group,
    emit_json,
    limit_option,
    print_table,
    say,
    state,
)

dead_letters_app = command_group(
    "dead-letters", help="Production records that could not be scored, with their reasons."
)


@dead_letters_app.command("list")
def list_dead_letters(
    since: str | None = typer.Option(
        None, help="Received after: ISO time or 30m, 24h, 7d (wall-clock time)."
    ),
    source: str | None = typer.Option(None, help="Only records from this source."),
    limit: int = limit_option(50, "At most this many rows, newest first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The newest dead letters with their reasons, and how many there are of each reason."""
    from monitor.ingest.dead_letters import dead_letter_counts, dead_letter_rows
    from monitor.times import parse_since

    db = state.database()
    start = parse_since(since) if since else None
    rows = dead_letter_rows(db, limit=limit, since=start, source=source)
    counts = dead_letter_counts(db, since=start, source=source)
    if as_json:
        emit_json({"dead_letters": rows, "by_reason": counts})
        return
    if not rows:
        say("no dead letters")
        return
    print_table(
        "dead letters (newest first)",
        ("id", "received (UTC)", "from", "source", "reason"),
        [
            (
                r["id"],
                r["received_at"].strftime("%Y-%m-%d %H:%M:%S"),
                r["entry_key"] or f"{r['origin']}:{r['line_number']}",
                r["source"],
                r["reason"],
            )
            for r in rows
        ],
    )
    print_table(
        "by reason",
        ("count", "reason", "last received (UTC)"),
        [
            (c["count"], c["reason"], c["last_received_at"].strftime("%Y-%m-%d %H:%M"))
            for c in counts
        ],
    )
