"""Human output: one line per table row whatever the cells hold (issue 15: a message with a
newline broke `zap list`)."""

from zapckpt.cli.output import table


def test_a_table_row_stays_on_one_line(capsys):
    table(["REF", "MESSAGE"], [["web@1", "two\nlines\tand \x1b[31mcolour"], ["web@2", "plain, ünïcode"]])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[1] == "web@1  two\\nlines\\tand \\x1b[31mcolour"
    assert lines[2].startswith("web@2  plain, ünïcode")


def test_log_tail_is_the_last_lines():
    import io

    from zapckpt.pod.console import seek_to_last_lines

    for data in [b"", b"a\n", b"a\nb\nc\n", b"a\nb\nc", b"x" * 70000 + b"\ny\nz\n", b"\n\n\n", b"l\n" * 50000]:
        for n in (0, 1, 2, 5, 49999, 50000, 50001):
            f = io.BytesIO(data)
            seek_to_last_lines(f, n)
            assert f.read() == (b"".join(data.splitlines(keepends=True)[-n:]) if n else b""), (data[-8:], n)


def test_the_status_line_is_cleared_before_the_result():
    """At a terminal, long work shows a status line; what the command prints next starts on a
    clean line (issue 23: the result was glued to the status line)."""
    import io
    import sys
    import time

    from zapckpt.common.progress import Ticker, step

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = term
    try:
        with Ticker("restore web@3", out=term, after=0):
            step("restoring the processes")
            deadline = time.monotonic() + 10
            while "restoring the processes" not in term.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
            print("restored web@3")
    finally:
        sys.stdout, sys.stderr = saved
    text = term.getvalue()
    assert "zap: restore web@3: restoring the processes (" in text
    assert text.endswith("\r\033[Krestored web@3\n"), repr(text[-80:])
