"""MkDocs hook: generates the CLI and policy reference pages from the code at build time.

* ``reference/cli.md`` from the argparse parser ``workbench.cli.build_parser()``: every command with its
  usage, arguments, defaults and choices; the JSON each command prints comes from ``cli_output.toml``
  next to this file (a command missing there is a build warning, so ``mkdocs build --strict`` fails).
* ``reference/policy.md`` from the pydantic models in ``workbench.decide.policy`` (keys, types, defaults,
  constraints, the validators' messages), the metric registry, and the shipped default policy.

Nothing heavy is imported at module import: the workbench is imported inside the functions (its CLI
module imports lazily; the policy module brings numpy, pydantic and cryptography).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import logging
import sys
import textwrap
import tomllib
import types
import typing
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.reference")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLI_OUTPUT = HERE / "cli_output.toml"
COMMON_OPTIONS = ("--json", "--home")


# -- the command line --------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def iter_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every leaf command of ``parser`` as (words, parser, help), in the parser's order."""
    sub = _subparsers(parser)
    if sub is None:
        return
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, child in sub.choices.items():
        words = (*prefix, name)
        if _subparsers(child) is None:
            yield words, child, helps.get(name) or ""
        else:
            yield from iter_commands(child, words)


def command_groups(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Help of the commands that only group actions (``keys``, ``canary``, ...)."""
    sub = _subparsers(parser)
    helps = {a.dest: a.help for a in sub._choices_actions}
    return {name: helps.get(name) or "" for name, child in sub.choices.items() if _subparsers(child) is not None}


def anchor(words: tuple[str, ...]) -> str:
    return "-".join(words)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _sentence(text: str) -> str:
    text = _cell(text)
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def _usage(p: argparse.ArgumentParser) -> str:
    formatter = p.formatter_class(prog=p.prog, width=100)  # fixed width: the page does not depend on a terminal
    formatter.add_usage(p.usage, p._actions, p._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument_rows(p: argparse.ArgumentParser) -> list[tuple[str, str, str, str]]:
    formatter = p.formatter_class(prog=p.prog)
    rows = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
            continue
        if any(o in COMMON_OPTIONS for o in a.option_strings):
            continue
        if a.option_strings:
            if isinstance(a, argparse.BooleanOptionalAction):
                name = " / ".join(f"`{o}`" for o in a.option_strings)
            else:
                value = "" if a.nargs == 0 else " " + (a.metavar or a.dest.upper())
                name = ", ".join(f"`{o}{value}`" for o in a.option_strings)
        else:
            name = f"`{a.metavar or a.dest.upper()}`" + (" ..." if a.nargs in ("+", "*") else "")
        if a.required or not a.option_strings:
            need = "required"
        elif isinstance(a, argparse._AppendAction):
            need = "repeatable"
        else:
            need = "optional"
        default = ""
        if (
            not (a.default is None or a.default is False or a.default == [] or a.default == argparse.SUPPRESS)
            and a.nargs != 0
        ):
            default = f"`{a.default}`"
        elif isinstance(a, argparse.BooleanOptionalAction) and a.default is not None:
            default = f"`{a.option_strings[0] if a.default else a.option_strings[1]}`"
        text = formatter._expand_help(a) if a.help else ""
        if a.choices:
            text = (text + " " if text else "") + "One of " + ", ".join(f"`{c}`" for c in a.choices) + "."
        rows.append((name, need, default, _cell(text)))
    return rows


def load_outputs(path: Path = CLI_OUTPUT) -> dict[str, str]:
    """What each command prints, by its words (``"canary status"``), as markdown."""
    return tomllib.loads(path.read_text("utf-8"))["output"]


def cli_markdown(parser: argparse.ArgumentParser, outputs: dict[str, str]) -> tuple[str, list[str]]:
    """The CLI reference page, and the commands that have no entry in ``outputs``."""
    commands = list(iter_commands(parser))
    missing = [" ".join(w) for w, _, _ in commands if " ".join(w) not in outputs]
    groups = command_groups(parser)
    out = [
        "# Command line reference",
        "",
        "<!-- generated at build time by docs/hooks/reference.py from workbench.cli.build_parser();"
        " edit the parser or docs/hooks/cli_output.toml, not this page -->",
        "",
        f"`{parser.prog}`: {_cell(parser.description or '')}",
        "",
        "Every command takes `--json` (print exactly one JSON object on stdout; logs, progress and warnings "
        "go to stderr) and `--home DIR` (the workbench home; default `$WORKBENCH_HOME` or `./.workbench`). "
        "Success exits 0; an error prints one line `error: ...` on stderr and exits non-zero (2 for errors "
        "the user can act on, 1 for internal errors; `WORKBENCH_DEBUG=1` shows the traceback). Weights are "
        "percents (0-100), model versions are strings, times are ISO-8601 UTC.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for words, _, help_ in commands:
        out.append(f"| [`workbench {' '.join(words)}`](#{anchor(words)}) | {_cell(help_)} |")
    shown_groups = set()
    for words, p, help_ in commands:
        if len(words) > 1 and words[0] not in shown_groups:
            shown_groups.add(words[0])
            out += ["", f"## workbench {words[0]} {{#{words[0]}}}", "", _sentence(groups.get(words[0], ""))]
        level = "###" if len(words) > 1 else "##"
        out += [
            "",
            f"{level} workbench {' '.join(words)} {{#{anchor(words)}}}",
            "",
            _sentence(help_),
            "",
            "```text",
            _usage(p),
            "```",
            "",
        ]
        rows = _argument_rows(p)
        if rows:
            out += ["| argument | | default | meaning |", "|---|---|---|---|"]
            out += [f"| {n} | {need} | {d} | {t} |" for n, need, d, t in rows]
            out.append("")
        if any(o in p._option_string_actions for o in COMMON_OPTIONS):
            out += ["Also `--json` and `--home DIR`.", ""]
        text = outputs.get(" ".join(words))
        out += ["**Output**", "", textwrap.dedent(text).strip() if text else "*Not documented yet.*"]
    unused = sorted(set(outputs) - {" ".join(w) for w, _, _ in commands})
    if unused:
        log.warning("docs/hooks/cli_output.toml describes commands the parser lacks: %s", ", ".join(unused))
    return "\n".join(out) + "\n", missing


# -- the policy file ------------------------------------------------------------------------------------
_SCALARS = {str: "string", float: "number", int: "integer", bool: "boolean"}


def _models(annotation) -> list[type]:
    """The pydantic models inside an annotation (``X``, ``X | None``, ``tuple[X, ...]``)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _type_text(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin is typing.Literal:
        return "one of " + ", ".join(f'`"{a}"`' for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in rest)
        return text + (" or null" if len(rest) < len(args) else "")
    if origin is tuple:
        return f"array of {_type_text(args[0])}s" if args else "array"
    if _models(annotation):
        return "table"
    return f"`{getattr(annotation, '__name__', annotation)}`"


def _constraints(field) -> str:
    words = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = []
    for m in field.metadata:
        for attr, sign in words.items():
            if getattr(m, attr, None) is not None:
                parts.append(f"{sign} {getattr(m, attr)}")
        if getattr(m, "min_length", None) is not None:
            parts.append(f"at least {m.min_length} item(s)")
    return ", ".join(parts)


def _default_text(field, key: str) -> str:
    from pydantic import BaseModel

    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return f"see `[{key}]`"
    if isinstance(value, tuple) and not value:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def _validator_messages(model: type) -> list[str]:
    """The messages of the model's validators, read from their source (e.g. "set max_ratio and/or max_ms")."""
    decorators = model.__pydantic_decorators__
    messages = []
    for dec in [*decorators.field_validators.values(), *decorators.model_validators.values()]:
        func = getattr(dec.func, "__func__", dec.func)
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                arg = node.exc.args[0]
                if isinstance(arg, ast.Constant):
                    messages.append(str(arg.value))
                elif isinstance(arg, ast.JoinedStr):
                    messages.append("".join(v.value if isinstance(v, ast.Constant) else "…" for v in arg.values))
    return messages


def _model_sections(model: type, key: str, array: bool, seen: list) -> None:
    """Depth-first list of (model, TOML header, is array of tables), the root first."""
    seen.append((model, key, array))
    for name, field in model.model_fields.items():
        for sub in _models(field.annotation):
            child_key = f"{key}.{name}" if key else name
            _model_sections(sub, child_key, typing.get_origin(field.annotation) is tuple, seen)


def policy_markdown() -> str:
    """The policy reference page: every key of every table, the metric registry and the shipped default."""
    from importlib import resources

    from workbench.decide import policy as pol
    from workbench.evaluate.metrics import METRICS
    from workbench.evaluate.multiclass import GATE_AVERAGES, GATE_PER_CLASS

    sections: list = []
    _model_sections(pol.Policy, "", False, sections)
    out = [
        "# Policy file reference",
        "",
        "<!-- generated at build time by docs/hooks/reference.py from the pydantic models in"
        " workbench/decide/policy.py and the shipped default_policy.toml; edit those, not this page -->",
        "",
        "A policy is a TOML, YAML or JSON file with the keys below, validated strictly: an unknown key or a "
        "value of the wrong type or range is an error that names it (for example "
        "`policy p.toml: metrics[0].thresold: unknown key`). `workbench decide RUN_ID` without `--policy` uses "
        "the [shipped default](#shipped-default). What the gates mean and how the verdict follows from them: "
        "[Policy and decision rule](../concepts/policy.md).",
        "",
    ]
    for model, key, array in sections:
        title = "top-level keys" if not key else (f"`[[{key}]]`" if array else f"`[{key}]`")
        out += [
            f"## {title} {{#{key.replace('.', '-') or 'top-level'}}}",
            "",
            f"Model `{model.__name__}`" + (" (a list: one table per entry)" if array else "") + ".",
            "",
        ]
        doc = inspect.getdoc(model)
        if doc and model.__doc__ and "__doc__" in vars(model):
            out += [doc, ""]
        out += ["| key | type | default | constraint |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            child = f"{key}.{name}" if key else name
            out.append(
                f"| `{name}` | {_cell(_type_text(field.annotation))} | {_default_text(field, child)} | "
                f"{_cell(_constraints(field))} |"
            )
        checks = _validator_messages(model)
        if checks:
            out += ["", "Also checked: " + "; ".join(f"*{_cell(m)}*" for m in checks) + "."]
        out.append("")
    out += [
        "## Metric names {#metric-names}",
        "",
        "The names a `metric` key accepts (the evaluation's metric registry) and their direction, which "
        "`higher_is_better` may override:",
        "",
        "| metric | higher is better |",
        "|---|---|",
    ]
    out += [f"| `{name}` | {'yes' if m.higher_is_better else 'no'} |" for name, m in METRICS.items()]
    out += [
        "",
        "### Multi-class runs {#multiclass-metrics}",
        "",
        "A multi-class run (`replay --task multiclass`, or a classifier with more than two classes) is gated on "
        "`accuracy` and `log_loss` (as binary runs are), on the macro averages "
        + ", ".join(f"`{m}`" for m in GATE_AVERAGES)
        + " (higher is better; the mean over the classes with a value), and on one class's "
        + ", ".join(f"`{m}[CLASS]`" for m in GATE_PER_CLASS)
        + " (`recall[late]`: the recall of class `late`, named as in the run's classes; a class the run lacks is "
        "an error that lists them). Each is judged on anytime-valid bounds of its per-request influence, like "
        f"every other gate. Runs without `--policy` use the shipped `{pol.DEFAULT_POLICIES['multiclass']}`.",
    ]
    text = resources.files("workbench.decide").joinpath(pol.DEFAULT_POLICY).read_text("utf-8")
    shipped = pol.load_policy()
    out += [
        "",
        "## Shipped default {#shipped-default}",
        "",
        f"`workbench/decide/{pol.DEFAULT_POLICY}`, as shipped with this version; its `policy_hash` (SHA-256 of "
        f"the validated policy's canonical JSON, the value a signed record carries) is `{shipped.hash}`.",
        "",
        "```toml",
        text.rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(out)


# -- MkDocs events ------------------------------------------------------------------------------------------
def on_config(config):
    # document the checked-out code, not some other installed copy of the package
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    # files included with --8<-- resolve against the repository root, wherever mkdocs runs from
    snippets = config.mdx_configs.get("pymdownx.snippets")
    if snippets is not None:
        snippets["base_path"] = [root]
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    from workbench.cli import build_parser

    page, missing = cli_markdown(build_parser(), load_outputs())
    for command in missing:
        log.warning("workbench %s: no output described in docs/hooks/cli_output.toml", command)
    # the committed pages of the same name only point here; the generated ones replace them
    for uri, content in (("reference/cli.md", page), ("reference/policy.md", policy_markdown())):
        placeholder = files.get_file_from_path(uri)
        if placeholder is not None:
            files.remove(placeholder)
        files.append(File.generated(config, uri, content=content))
    return files
