"""``--help`` is plain text: what a person reads in a terminal, no reStructuredText."""

from __future__ import annotations

import re

import pytest

from watcher.cli import main, plugin_main

MARKUP = re.compile(r"``|`[^`\s]+`|::\s*$|\*\*|^\.\. ", re.M)


def help_text(entry: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        entry(argv)  # type: ignore[operator]
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_help_is_plain_text_and_each_command_says_what_it_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    top = help_text(main, ["--help"], capsys)
    commands = re.search(r"\{([a-z,]+)\}", top)
    assert commands is not None
    texts = {"k8s-watcher": top}
    for command in commands[1].split(","):
        texts[command] = help_text(main, [command, "--help"], capsys)
    texts["k8s-watcher-plugin"] = help_text(plugin_main, ["--help"], capsys)
    texts["k8s-watcher-plugin serve"] = help_text(plugin_main, ["serve", "--help"], capsys)
    assert {"serve", "status", "check", "report", "stream"} <= texts.keys()
    for name, text in texts.items():
        assert not MARKUP.search(text), f"{name}: {MARKUP.search(text)}"
    assert "run the daemon" in texts["serve"].split("options:")[0]
