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
