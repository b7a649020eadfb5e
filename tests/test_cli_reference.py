"""`zap --help`, completion and the manual page cover every command and option (generated from
the parser: a command added without help text fails here)."""

import argparse
import shutil
import subprocess

from zapckpt.cli import build_parser
from zapckpt.cli.reference import _commands, bash_script, man_page, zsh_script


def test_every_command_and_option_has_help():
    parser = build_parser()
    commands = _commands(parser)
    assert {"run", "checkpoint", "restore", "branch", "kill", "pause", "unpause", "completion", "man"} <= set(commands)
    missing = [(name, a.option_strings or a.dest) for name, p in commands.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]  # fmt: skip
    assert not missing
    top = parser.format_help()
    assert all(name in top for name in commands)


def _complete(script: str, *words: str) -> list[str]:
    """What bash completes for `zap WORDS...` (the last word being typed)."""
    line = " ".join(["zap", *words])
    prog = (f"{script}\nCOMP_WORDS=(zap {' '.join(words)}); COMP_CWORD={len(words)}; COMP_LINE={line!r}\n"
            "zap() { return 1; }\n_zap\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")  # fmt: skip
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_bash_completion_completes_commands_and_options():
    script = bash_script(build_parser())
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert _complete(script, "pa") == ["pause"]
    assert _complete(script, "un") == ["unpause", "untag", "unwatch"]
    assert set(_complete(script, "kill", "--s")) == {"--signal"}
    assert "--keep-hourly" in _complete(script, "prune", "--keep-")
    assert _complete(script, "exec", "x", "--", "l") == []  # the pod's command is the user's
    assert "bashcompinit" in zsh_script(build_parser())


def test_man_page_lists_every_command_and_renders_cleanly():
    page = man_page(build_parser())
    for name in _commands(build_parser()):
        assert f"\n.B {name.replace('-', chr(92) + '-')}\n" in page, name
    groff = shutil.which("groff")
    assert groff, "groff is missing (groff-base: make install installs it)"
    res = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
