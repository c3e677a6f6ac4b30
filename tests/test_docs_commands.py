"""Every `noderun ...` command the documentation shows is a command that works.

The commands are read from README.md, every Markdown file under docs/ and benchmarks/README.md:
from fenced shell code blocks (one command a line, `$ ` prompts, trailing comments, lines joined
at a trailing backslash, shell variables set in the same block, `a && b`) and from inline `code`
spans in the prose (which may run over a line break). Each one is checked the way the CLI would
take it, without running anything:

- `noderun train [-m] overrides...`: Hydra's flags parsed by Hydra's own argument parser, then the
  config composed from conf/ with Hydra's compose API (as tests/conftest.py's `compose_config`
  does) for every value of every swept key, and validated by `noderun.runner.validate`, so an
  unknown key, option or experiment and an invalid value are all caught;
- `noderun table|plot|data ...`: the config that subcommand composes (noderun.cli.CONFIG_NAMES),
  with the given overrides.

A command holding a placeholder (`<profile>`, `...`, an undefined `$VAR`, `KEY=NAME`) is skipped,
and test_most_documented_commands_are_checked keeps that a small share. A failure names the
document and line (the test id) and says what is wrong.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import math
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from unittest.mock import patch

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from noderun import cli
from noderun.config import CONF_DIR, register_configs
from noderun.errors import ConfigError
from noderun.profiling import resolve_device

REPO = Path(__file__).resolve().parent.parent


def doc_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "benchmarks" / "README.md"]
    return [path for path in files if path.is_file()]


# ------------------------------------------------------------------ extraction

SHELL_FENCES = {"", "bash", "sh", "shell", "console", "shell-session", "shellsession", "zsh"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
PLACEHOLDER = "NODERUN_DOC_PLACEHOLDER"
ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z_][^<>\n]*>")  # <profile>, <results dir>
VARIABLE = re.compile(r"\$(\w+|\{\w+\})")
ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(.*)")
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}


@dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository
    line: int  # where the command starts
    text: str  # as the doc shows it, from `noderun` on
    args: tuple[str, ...] = ()  # after `noderun`
    skip: str | None = None  # why it is not checked (a placeholder)
    error: str | None = None  # the line could not be read as a shell command

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def strip_comment(line: str) -> str:
    """The line without a shell comment: a `#` outside quotes at the start of a word."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def commands_in(text: str, file: str = "<text>", line: int = 1, variables: dict | None = None) -> list[DocCommand]:
    """The noderun commands of one shell line: `noderun ...`, `.venv/bin/noderun ...`,
    `python -m noderun ...` or `torchrun ... -m noderun ...`, split at `&&`, `;` and `|`."""
    text = strip_comment(text).strip()
    if text.startswith("$ "):
        text = text[2:]
    if "noderun" not in text:
        return []
    for name, value in (variables or {}).items():
        text = re.sub(rf"\$(\{{{name}\}}|{name}\b)", lambda _: value, text)
    text = ANGLE_PLACEHOLDER.sub(PLACEHOLDER, text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError as error:  # an unclosed quote
        return [DocCommand(file, line, text, error=f"not a shell command line: {error}")]
    commands, segment = [], []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        for position, word in enumerate(segment):
            at_start = position == 0 and (word == "noderun" or word.endswith("/noderun"))
            after_m = word == "noderun" and position > 0 and segment[position - 1] == "-m"
            if at_start or after_m:
                args = segment[position + 1 :]
                redirect = next((i for i, arg in enumerate(args) if arg and set(arg) <= set("<>&")), len(args))
                if redirect and args[redirect - 1].isdigit() and redirect < len(args):
                    redirect -= 1  # 2> log.txt
                args = args[:redirect]
                shown = " ".join(["noderun", *args]).replace(PLACEHOLDER, "<...>")
                commands.append(DocCommand(file, line, shown, tuple(args), skip=placeholder(args)))
                break
        segment = []
    return commands


def placeholder(args) -> str | None:
    for arg in args:
        if PLACEHOLDER in arg:
            return f"placeholder <...> in {arg.replace(PLACEHOLDER, '<...>')!r}"
        if "..." in arg or "\u2026" in arg:
            return f"placeholder ... in {arg!r}"
        if VARIABLE.search(arg):
            return f"shell variable not set in the same code block: {arg!r}"
        if re.fullmatch(r"[+~]*[\w.]+=[A-Z][A-Z0-9_]*", arg):  # profile=NAME
            return f"placeholder value in {arg!r}"
    return None


def extract(path: Path, root: Path = REPO) -> list[DocCommand]:
    """Every noderun command of one Markdown file, in the order of its lines."""
    name = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: list[DocCommand] = []
    prose: list[tuple[int, str]] = []  # (line number, text); fenced blocks blanked (they end a paragraph)
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            prose.append((index + 1, lines[index]))
            index += 1
            continue
        marker, language = fence.group(1), fence.group(2).lower()
        end = index + 1
        while end < len(lines) and not re.fullmatch(rf"\s*{re.escape(marker[0])}{{{len(marker)},}}\s*", lines[end]):
            end += 1
        if language in SHELL_FENCES:
            commands += block_commands(name, [(number + 1, lines[number]) for number in range(index + 1, end)])
        prose += [(number + 1, "") for number in range(index, min(end + 1, len(lines)))]
        index = end + 1
    commands += inline_commands(name, prose)
    return sorted(commands, key=lambda command: command.line)


def block_commands(file: str, block: list[tuple[int, str]]) -> list[DocCommand]:
    """A fenced block: one command a line (a trailing backslash continues it); with `$ ` prompts
    only the prompted lines are commands (the others are output); `NAME=value` lines set variables."""
    if any(text.lstrip().startswith("$ ") for _, text in block):
        prompted, continued = [], False
        for number, text in block:
            if text.lstrip().startswith("$ ") or continued:
                prompted.append((number, text.lstrip()[2:] if not continued else text))
            continued = (text.lstrip().startswith("$ ") or continued) and text.rstrip().endswith("\\")
        block = prompted
    logical, pending, start = [], "", None
    for number, text in block:
        start = number if start is None else start
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        logical.append((start, pending + text))
        pending, start = "", None
    if pending:
        logical.append((start, pending))
    variables: dict[str, str] = {}
    commands = []
    for number, text in logical:
        try:
            words = shlex.split(strip_comment(text))
        except ValueError:
            words = []
        words = words[1:] if words[:1] == ["export"] else words
        assignment = ASSIGNMENT.fullmatch(words[0]) if len(words) == 1 else None
        if assignment:  # L="hydra/launcher=slurm": $L in the next lines
            variables[assignment.group(1)] = assignment.group(2)
            continue
        commands += commands_in(text, file, number, variables)
    return commands


def inline_commands(file: str, prose: list[tuple[int, str]]) -> list[DocCommand]:
    """Inline `code` spans of the prose, paragraph by paragraph (a span may run over a line break)."""
    commands = []
    paragraphs, current = [], []
    for number, text in [*prose, (0, "")]:
        if text.strip():
            current.append((number, text))
        elif current:
            paragraphs.append(current)
            current = []
    for paragraph in paragraphs:
        text = "\n".join(line for _, line in paragraph)
        for match in INLINE_CODE.finditer(text):
            span = " ".join(match.group(2).split())
            number = paragraph[text.count("\n", 0, match.start(2))][0]
            commands += commands_in(span, file, number)
    return commands


def all_doc_commands() -> list[DocCommand]:
    return [command for path in doc_files() for command in extract(path)]


def test_ids(commands: list[DocCommand]) -> list[str]:
    """file:line, with #2, #3 for further commands on one line (`noderun table && noderun plot`)."""
    seen: dict[str, int] = {}
    ids = []
    for command in commands:
        seen[command.where] = seen.get(command.where, 0) + 1
        ids.append(command.where + (f"#{seen[command.where]}" if seen[command.where] > 1 else ""))
    return ids


test_ids.__test__ = False  # a helper, not a test

# -------------------------------------------------------------------- checking


class DocCommandError(AssertionError):
    """A documented command that would fail: the message says why, in one line."""


# Launchers the docs select. `my_cluster` is the docs' name for the user's own copy of
# conf/hydra/launcher/slurm.yaml ("Copy it (e.g. to conf/hydra/launcher/my_cluster.yaml)"): checked as slurm.
USER_LAUNCHERS = {"my_cluster": "slurm"}
# hydra/launcher=... and hydra.launcher.* compose (with return_hydra_config) when the launcher plugins
# of noderun's `cluster` extra are installed; without them Hydra cannot compose those options at all,
# so they are left out and the rest of the command is still checked.
LAUNCHER_PLUGINS = all(importlib.util.find_spec(f"hydra_plugins.{name}") is not None
                       for name in ("hydra_joblib_launcher", "hydra_submitit_launcher"))
MAX_CELLS = 16  # a larger sweep is checked as `expand` says, not every combination


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_hydra(override: str) -> bool:
    return _key(override) == "hydra" or _key(override).startswith(("hydra.", "hydra/"))


def _hydra_override(override: str) -> str | None:
    """The override to compose (None: left out, see LAUNCHER_PLUGINS)."""
    key = _key(override)
    if key.startswith(("hydra/launcher", "hydra.launcher")) and not LAUNCHER_PLUGINS:
        return None
    if key == "hydra/launcher" and "=" in override:
        value = override.split("=", 1)[1]
        return f"{override.split('=', 1)[0]}={USER_LAUNCHERS.get(value, value)}"
    return override


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists of a command's jobs. For a multirun: every combination of the swept values
    when there are at most MAX_CELLS; otherwise every combination of the swept config groups (which
    decide the config's keys: experiment=a,b model=c,d), each with every value of the other swept keys
    once (seed=0,1,2 dataset.n_obs=30,50), the rest at their first value."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:
        raise DocCommandError(f"override syntax: {cli.one_line(error)}") from None
    if not multirun:
        return [list(overrides)]  # a sweep without -m is Hydra's error, which compose reports
    choices = []
    for override, text in zip(parsed, overrides):
        if override.is_sweep_override():
            key = text.split("=", 1)[0]
            try:
                values = list(override.sweep_string_iterator())
            except Exception as error:  # glob() and the like: only Hydra's launcher expands them
                raise DocCommandError(f"cannot expand the sweep {text!r}: {cli.one_line(error)}") from None
            choices.append([f"{key}={value}" for value in values])
        else:
            choices.append([text])
    if math.prod(len(values) for values in choices) <= MAX_CELLS:
        return [list(cell) for cell in itertools.product(*choices)]
    groups = set(cli.config_groups())
    structural = [values if _key(values[0]) in groups else values[:1] for values in choices]
    jobs = []
    for cell in itertools.product(*structural):
        jobs.append(list(cell))
        for index, values in enumerate(choices):
            if _key(values[0]) not in groups:
                jobs += [list(cell[:index]) + [value] + list(cell[index + 1 :]) for value in values[1:]]
    return jobs


def _device_anywhere(name: str):
    """resolve_device as on a machine with CUDA devices: `device=cuda` in a doc is a GPU machine's
    command, not an error on the CPU this test runs on; a name that is no device still fails."""
    with patch("torch.cuda.is_available", return_value=True), patch("torch.cuda.device_count", return_value=8):
        return resolve_device(name)


@lru_cache(maxsize=None)
def check_composition(command: str, overrides: tuple[str, ...], validate: bool) -> str | None:
    """None when the config composes (and validates); otherwise the one-line reason."""
    from noderun.runner import validate as validate_config

    register_configs()
    for override in overrides:  # an optional group (experiment) ignores a missing option: noderun.cli refuses it
        if not _is_hydra(override) and cli.unknown_option(override):
            return cli.unknown_option(override)
    hydra = [override for override in overrides if _is_hydra(override)]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(cli.CONFIG_DIRS[command]), version_base="1.3"):
            cfg = compose(config_name=cli.CONFIG_NAMES[command], overrides=list(overrides), return_hydra_config=bool(hydra))
    except Exception as error:
        return cli.one_line(error)
    finally:
        GlobalHydra.instance().clear()
    if not validate:
        return None
    if "hydra" in cfg:
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        # bf16 hardware is the machine's, not the doc's: precision=bf16-mixed is checked for the task only.
        with patch("noderun.runner.resolve_device", _device_anywhere), \
                patch("noderun.runner.bf16_supported", return_value=True):
            validate_config(cfg)
    except ConfigError as error:
        return str(error).strip().splitlines()[0]
    return None


def check_command(args: list[str] | tuple[str, ...]) -> None:
    """Raise DocCommandError unless `noderun *args` would start: a known command, Hydra flags it
    takes, and for every job of a sweep a config that composes and, for train, validates."""
    args = list(args)
    if not args or args[0] in ("-h", "--help"):
        return  # `noderun`, `noderun --help`: the usage
    command, rest = args[0], args[1:]
    shown = " ".join(["noderun", *args])
    if command not in cli.COMMANDS:
        raise DocCommandError(f"`{shown}`: unknown command {command!r}; valid commands: {', '.join(cli.COMMANDS)}")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            flags = get_args_parser().parse_args(rest)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        raise DocCommandError(f"`{shown}`: {message[-1] if message else 'bad arguments'}") from None
    if command == "train" and flags.help:
        assert cli.train_help().startswith("usage: noderun train")
    overrides = [override for override in flags.overrides if not _is_hydra(override)]
    hydra = [o for o in (_hydra_override(override) for override in flags.overrides if _is_hydra(override)) if o]
    jobs = expand(overrides, flags.multirun)
    if command == "train" and not any(_key(override) == "profile" for override in overrides):
        # noderun.cli adds profile=paper when the run is on CUDA, profile=quick otherwise: check both.
        jobs = [job + [f"profile={profile}"] for job in jobs for profile in ("quick", "paper")]
    for job in jobs:
        reason = check_composition(command, tuple(job + hydra), command == "train")
        if reason:
            raise DocCommandError(f"`{shown}` fails for the job {' '.join(job + hydra)}: {reason}")


# ----------------------------------------------------------------------- tests

DOC_COMMANDS = all_doc_commands()


@pytest.mark.parametrize("doc", DOC_COMMANDS, ids=test_ids(DOC_COMMANDS))
def test_documented_command_composes_and_validates(doc: DocCommand):
    if doc.skip:
        pytest.skip(f"{doc.where}: {doc.skip}")
    if doc.error:
        pytest.fail(f"{doc.where}: `{doc.text}`: {doc.error}", pytrace=False)
    try:
        check_command(doc.args)
    except DocCommandError as error:
        pytest.fail(f"{doc.where}: stale documented command: {error}", pytrace=False)


def test_most_documented_commands_are_checked():
    assert len(DOC_COMMANDS) >= 10, f"only {len(DOC_COMMANDS)} noderun commands found in {doc_files()}"
    skipped = [command for command in DOC_COMMANDS if command.skip]
    checked = len(DOC_COMMANDS) - len(skipped)
    assert checked >= 0.8 * len(DOC_COMMANDS), (
        f"{len(skipped)} of {len(DOC_COMMANDS)} documented commands are skipped as placeholders: "
        + "; ".join(f"{command.where} {command.skip}" for command in skipped))
    for subcommand in ("train", "table", "plot", "data"):
        assert any(command.args[:1] == (subcommand,) for command in DOC_COMMANDS), f"no `noderun {subcommand}` found"


def test_every_cli_command_has_its_config():
    assert set(cli.CONFIG_NAMES) == set(cli.COMMANDS)
    for command, name in cli.CONFIG_NAMES.items():
        assert (cli.CONFIG_DIRS[command] / f"{name}.yaml").is_file()


@pytest.mark.parametrize("command, expected", [
    ("noderun train model=odenet solver.rtoll=1e-3", "Key 'rtoll' not in 'SolverConfig'"),
    ("noderun train experiment=latent_odee", "Could not find 'experiment/latent_odee'"),
    ("noderun train -m experiment=latent_ode,rnn_spiral", "Could not find 'experiment/rnn_spiral'"),
    ("noderun train -m model=mlp,resnett seed=0,1", "Available options in 'model'"),
    ("noderun train -m experiment=latent_ode,rnn_spirals dataset.n_obss=30,50", "Key 'n_obss' not in"),
    ("noderun train model=odenet solver.rtol=0", "solver.rtol"),  # composes; validate refuses the value
    ("noderun train model=latent_ode", "experiment=latent_ode"),  # the model of another task
    ("noderun train seed=0,1", "multirun"),  # a sweep without -m
    ("noderun train --cfgg job", "unrecognized arguments: --cfgg"),
    ("noderun train device=gpu", "device='gpu'"),
    ("noderun tabel", "unknown command 'tabel'"),
    ("noderun table write=maybe", "write"),
    ("noderun data data_dirr=x", "data_dirr"),
])
def test_a_misspelt_command_fails_with_a_clear_message(command, expected):
    [doc] = commands_in(command)
    with pytest.raises(DocCommandError, match=re.escape(expected)) as failure:
        check_command(doc.args)
    assert "\n" not in str(failure.value) and command in str(failure.value)


def test_extraction_reads_blocks_and_inline_spans(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("\n".join([
        "Train with `noderun train model=odenet` or, for a sweep, `noderun train -m",  # 1
        "model=mlp,resnet seed=0,1`; pick `profile=NAME` and `noderun train profile=<profile>`.",  # 2
        "",  # 3
        "```bash",  # 4
        "$ noderun data   # a comment with a quote: it's fine",  # 5
        "[noderun] MNIST ready in data",  # 6: output
        "$ noderun train model=rknet \\",  # 7
        "    solver=rk4",  # 8
        "$ noderun table && noderun plot 2> /dev/null",  # 9
        "```",  # 10
        "```",  # 11
        "L=\"hydra/launcher=slurm\"",  # 12
        "noderun train -m $L seed=0,1 $UNSET",  # 13
        "torchrun --nproc_per_node=2 -m noderun train model=odenet",  # 14
        "pip install noderun  # not a noderun command",  # 15
        "noderun train ...",  # 16
        "```",  # 17
        "```python",  # 18
        "subprocess.run('noderun train')",  # 19
        "```",  # 20
    ]) + "\n")
    found = [(command.line, command.args, command.skip is not None) for command in extract(doc, root=tmp_path)]
    assert found == [
        (1, ("train", "model=odenet"), False),
        (1, ("train", "-m", "model=mlp,resnet", "seed=0,1"), False),
        (2, ("train", f"profile={PLACEHOLDER}"), True),
        (5, ("data",), False),
        (7, ("train", "model=rknet", "solver=rk4"), False),
        (9, ("table",), False),
        (9, ("plot",), False),
        (13, ("train", "-m", "hydra/launcher=slurm", "seed=0,1", "$UNSET"), True),
        (14, ("train", "model=odenet"), False),
        (16, ("train", "..."), True),
    ]


def test_a_sweep_is_expanded_into_its_jobs():
    assert expand(["model=mlp,resnet", "seed=0,1,2"], multirun=True) == [
        [f"model={model}", f"seed={seed}"] for model in ("mlp", "resnet") for seed in (0, 1, 2)]
    # past MAX_CELLS: every model, each with every seed and every n_obs once
    jobs = expand(["model=mlp,resnet", "seed=0,1,2", "dataset.n_obs=1,2,3", "device=cpu"], multirun=True)
    assert len(jobs) == 2 * (1 + 2 + 2) and all(job[-1] == "device=cpu" for job in jobs)
    assert {job[0] for job in jobs} == {"model=mlp", "model=resnet"}
    assert {job[1] for job in jobs} == {"seed=0", "seed=1", "seed=2"}
    assert {job[2] for job in jobs} == {"dataset.n_obs=1", "dataset.n_obs=2", "dataset.n_obs=3"}
    assert expand(["seed=0,1"], multirun=False) == [["seed=0,1"]]


@pytest.mark.parametrize("group", ["model", "solver", "regularizer", "logger", "dataset", "profile", "experiment"])
def test_readme_configuration_table_lists_every_option(group):
    """The README's config-group table is complete: every file of conf/<group> is named in its row."""
    readme = (CONF_DIR.parent / "README.md").read_text()
    row = next((line for line in readme.splitlines() if line.startswith(f"| `{group}` |")), None)
    assert row is not None, f"README.md has no configuration row for the group {group!r}"
    missing = [path.stem for path in sorted((CONF_DIR / group).glob("*.yaml")) if f"`{path.stem}`" not in row]
    assert not missing, f"README.md's `{group}` row leaves out {missing}"
