"""The documentation: the generated CLI and policy references cover the code; README and docs stay in the repo."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "docs" / "hooks" / "reference.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command of the parser, walked independently of the generator."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    return [words for name, child in subs[0].choices.items() for words in leaf_commands(child, (*prefix, name))]


def test_cli_reference_covers_every_command(hook):
    from workbench.cli import build_parser

    parser = build_parser()
    commands = leaf_commands(parser)
    assert len(commands) > 20
    page, missing = hook.cli_markdown(parser, hook.load_outputs())
    assert missing == [], f"describe the output of these commands in docs/hooks/cli_output.toml: {missing}"
    for words in commands:
        heading = re.compile(
            rf"^#+ workbench {re.escape(' '.join(words))} \{{#{re.escape('-'.join(words))}\}}$", re.MULTILINE
        )
        assert heading.search(page), f"workbench {' '.join(words)} has no section in the CLI reference"
        for action in (a for a in _parser_of(parser, words)._actions if a.option_strings):
            if action.help != argparse.SUPPRESS and action.option_strings[0] not in ("-h", "--json", "--home"):
                assert f"`{action.option_strings[0]}" in page, f"{' '.join(words)} {action.option_strings[0]}"
    described = set(hook.load_outputs())
    assert described == {" ".join(w) for w in commands}, "cli_output.toml describes commands the parser lacks"


def _parser_of(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser:
    for word in words:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser


def test_policy_reference_covers_every_field(hook):
    from pydantic import BaseModel

    from workbench.decide import policy as pm

    page = hook.policy_markdown()
    models = [
        m
        for m in vars(pm).values()
        if isinstance(m, type)
        and issubclass(m, BaseModel)
        and m.__module__ == pm.__name__
        and not m.__name__.startswith("_")
    ]
    assert pm.Policy in models and pm.LiveSegment in models
    for model in models:
        assert f"Model `{model.__name__}`" in page, f"{model.__name__} has no section in the policy reference"
        for field in model.model_fields:
            assert f"| `{field}` |" in page, f"{model.__name__}.{field} is not in the policy reference"
    assert (REPO / "workbench" / "decide" / "default_policy.toml").read_text().strip() in page


# -- links ---------------------------------------------------------------------------------------------------
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def prose(text: str) -> str:
    """The text outside fenced code blocks and code spans."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    text = prose(text)
    return INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text)


def check_links(md: Path) -> list[str]:
    problems = []
    text = md.read_text("utf-8")
    if "://" in prose(text) or re.search(r"<(https?|mailto|ftp):", prose(text)):
        problems.append(f"{md.relative_to(REPO)}: an address outside the repository in its prose")
    for target in links(text):
        path = target.split("#", 1)[0]
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            problems.append(f"{md.relative_to(REPO)}: link out of the repository: {target}")
        elif path:
            resolved = (md.parent / path).resolve()
            if not resolved.is_relative_to(REPO):
                problems.append(f"{md.relative_to(REPO)}: link leaves the repository: {target}")
            elif not resolved.exists():
                problems.append(f"{md.relative_to(REPO)}: link to a missing file: {target}")
    return problems


def test_link_checker_catches_what_it_should(tmp_path):
    assert links("see [a](docs/x.md#y), `[b](http://no)`, ![c](img.png)\n```\n[d](http://no)\n```\n[e]: ../f.md") == [
        "docs/x.md#y",
        "img.png",
        "../f.md",
    ]
    assert "://" not in prose("text `http://127.0.0.1:8501` more\n```bash\ncurl http://x\n```\n")


def test_readme_is_short_and_links_only_inside_the_repository():
    readme = REPO / "README.md"
    lines = readme.read_text("utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    assert check_links(readme) == []
    assert links(readme.read_text("utf-8")), "README.md should point into docs/"
    for command in ("make demo", "make test"):
        assert command in readme.read_text("utf-8")


def test_docs_link_only_inside_the_repository():
    pages = sorted((REPO / "docs").rglob("*.md"))
    assert len(pages) > 20
    problems = [p for md in pages for p in check_links(md)]
    assert problems == []
