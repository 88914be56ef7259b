"""Dead-letter rows: plain one-sentence reasons, whatever error they came from."""

from monitor.ingest.dead_letters import dead_letter, undecodable
from monitor.ingest.sources import RawLine


def test_a_reason_never_shows_a_python_object_repr() -> None:
    """Pentest 17, F5: Pillow's message named its buffer, "<_io.BytesIO object at 0x7f...>"."""
    import io

    buffer = io.BytesIO()
    err = OSError(f"cannot identify image file {buffer!r}")
    row = dead_letter(RawLine("f", 1, 0, 1, b"x", 1), None, undecodable(err))
    assert row["reason"] == (
        "the record could not be decoded (OSError: 'cannot identify image file an object')."
    )
    assert " at 0x" not in row["reason"]
