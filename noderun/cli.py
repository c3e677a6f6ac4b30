"""Console entry point: `noderun train|table|data [Hydra overrides]`.

Each subcommand is a thin `@hydra.main` wrapper around a plain function
(`noderun.runner.train`, `noderun.report.render_all` and `write_figures`,
`noderun.data.mnist.ensure_mnist`), so the tests call the functions and the CLI only
composes configs and reports errors. One line and a non-zero exit for a user's error
(a config value, a missing file) or a run failure the run has recorded as a failed row;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from noderun.config import CONF_DIR, register_configs

USAGE = """usage: noderun <command> [hydra overrides]

commands:
  train   train one model (or a sweep with -m) and append its result row
          e.g. noderun train model=odenet solver=tsit5 solver.rtol=1e-4
  table   render Table 1 and the depth table from the result CSVs
          e.g. noderun table results_dir=results
  data    fetch and verify MNIST into data_dir (default data/)
  plot    render every task's figures (PNG) under results_dir/figures

`noderun <command> --help` lists the config groups and options."""

TRAIN_USAGE = """usage: noderun train [-m] [GROUP=OPTION ...] [KEY=VALUE ...]

Train one model and append its result row to <results_dir>/<experiment_name>.csv. With -m
(--multirun), a Hydra sweep over comma-separated values: noderun train -m model=mlp,resnet seed=0,1,2"""

# The config file each command composes (under conf/).
CONFIG_NAMES = {"train": "config", "table": "table", "data": "data", "plot": "table"}
# The configs of table, plot and data live apart from train's groups, so that `noderun table
# profile=paper` sets the table's `profile` key instead of naming train's profile group.
COMMANDS_CONF_DIR = CONF_DIR / "commands"
CONFIG_DIRS = {"train": CONF_DIR, "table": COMMANDS_CONF_DIR, "data": COMMANDS_CONF_DIR, "plot": COMMANDS_CONF_DIR}
# Hydra's flags that print something and run nothing: no default profile is added, no override check.
HYDRA_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


# ------------------------------------------------------------------ help from conf/


def describe(path: Path) -> str:
    """A config file's one-line description: the first line of its leading comment block (Hydra's
    `# @package` directive left out), marked `...` where the sentence goes on in the next line."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            lines.append(text)
    if not lines:
        return ""
    first = lines[0]
    if len(lines) > 1 and not first.endswith((".", "!", "?")):
        first = first.rstrip(",;:") + " ..."
    return first


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Every config group under conf_dir (`model`, `hydra/launcher`, ...) with its options, sorted."""
    groups: dict[str, list[str]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        if path.parent == conf_dir:
            continue  # the primary configs (config, table, data), not a group's options
        group = path.parent.relative_to(conf_dir).as_posix()
        groups.setdefault(group, []).append(path.stem)
    return groups


def group_defaults(conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """The option each group takes in conf/config.yaml's defaults list when none is given."""
    from omegaconf import OmegaConf

    defaults = {}
    for entry in OmegaConf.load(conf_dir / "config.yaml").get("defaults", []):
        if isinstance(entry, str) or not hasattr(entry, "items"):
            continue
        for key, value in entry.items():
            group = str(key).split()[-1]  # "optional experiment" -> "experiment"
            if value is not None:
                defaults[group] = str(value)
    return defaults


def _described(group: str, conf_dir: Path) -> list[str]:
    paths = sorted((conf_dir / group).glob("*.yaml"))
    width = max((len(path.stem) for path in paths), default=0)
    return [f"  {path.stem:<{width}}  {describe(path)}".rstrip() for path in paths]


def listing(conf_dir: Path = CONF_DIR) -> str:
    """The experiments and profiles under conf_dir, one line each with its description."""
    return "\n".join([
        "experiments (noderun train experiment=NAME; -m where the experiment is a sweep):",
        *_described("experiment", conf_dir),
        "",
        "profiles (profile=NAME; without one: paper when the run is on CUDA, quick otherwise):",
        *_described("profile", conf_dir),
    ])


def usage(conf_dir: Path = CONF_DIR) -> str:
    """`noderun --help`: the commands, then the experiments and profiles that conf_dir holds."""
    return f"{USAGE}\n\n{listing(conf_dir)}"


def train_help(conf_dir: Path = CONF_DIR) -> str:
    """`noderun train --help`: usage, every config group with its options, the experiments and
    profiles with their descriptions, read from conf_dir when asked (a new file is listed at once)."""
    groups, defaults = config_groups(conf_dir), group_defaults(conf_dir)
    shown = [group for group in groups if group not in ("experiment", "profile")]
    width = max((len(group) for group in shown), default=0)
    lines = [TRAIN_USAGE, "", "config groups (GROUP=OPTION; the default is marked *):"]
    for group in shown:
        options = ", ".join(option + ("*" if defaults.get(group) == option else "") for option in groups[group])
        note = "  (with -m; Hydra's launcher plugins add more)" if group.startswith("hydra/") else ""
        lines.append(f"  {group:<{width}}  {options}{note}")
    lines += ["", listing(conf_dir), "",
              "Any value of the composed config is set as KEY=VALUE, e.g. solver.rtol=1e-4 seed=1 device=cpu.",
              "  noderun train --cfg job [overrides]   print the composed config (all keys and their values)",
              "  noderun train --hydra-help            Hydra's own flags"]
    return "\n".join(lines)


# Errors whose message is the whole story: print one line, exit 2.
def _user_errors() -> tuple[type[BaseException], ...]:
    from noderun.checkpoint import CheckpointError
    from noderun.data.mnist import MNISTDataError
    from noderun.errors import ConfigError
    from noderun.results import ResultsError

    return ConfigError, MNISTDataError, ResultsError, CheckpointError


def _fail(error: BaseException, code: int = 2) -> None:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"noderun: error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=CONFIG_NAMES["train"])
def train_command(cfg: DictConfig) -> None:
    from tqdm import tqdm

    from noderun.checkpoint import RunInterrupted
    from noderun.runner import RunFailed, train

    try:
        train(cfg, log=tqdm.write)  # tqdm.write: lines print above the progress bar, not through it
    except _user_errors() as error:
        _fail(error)
    except RunInterrupted:
        sys.exit(130)  # Ctrl-C: the checkpoint is saved and the run said how to resume
    except RunFailed as error:
        # Solver failures (step underflow, max_num_steps), divergence, out of memory: one line.
        # The run has recorded a failed row and kept its checkpoint and log.
        _fail(error, code=1)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIRS["table"]), config_name=CONFIG_NAMES["table"])
def table_command(cfg: DictConfig) -> None:
    from noderun.report import render_all
    from noderun.results import read_results

    frame = read_results(cfg.results_dir)
    text = render_all(frame, cfg.profile)
    print(text)
    if cfg.write and len(frame):
        out = Path(cfg.results_dir) / "tables.md"
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text("# Result tables (rendered by `noderun table`)\n\n" + text)
        tmp.replace(out)
        print(f"[noderun] wrote {out}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIRS["data"]), config_name=CONFIG_NAMES["data"])
def data_command(cfg: DictConfig) -> None:
    from noderun.data.mnist import ensure_mnist

    try:
        folder = ensure_mnist(cfg.data_dir)
    except _user_errors() as error:
        _fail(error)
    print(f"[noderun] MNIST ready in {folder}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIRS["plot"]), config_name=CONFIG_NAMES["plot"])
def plot_command(cfg: DictConfig) -> None:
    from noderun.report import write_figures

    written = write_figures(cfg.results_dir)
    for path in written:
        print(f"[noderun] wrote {path}")
    if not written:
        print(f"[noderun] nothing to plot yet under {cfg.results_dir}")


def one_line(error: BaseException) -> str:
    """Hydra's multi-line composition messages as one line: the message lines joined, the option
    lists comma-separated, the internal detail (full_key, reference_type, ...) left out."""
    skip = ("full_key:", "reference_type", "object_type", "To append", "Set the environment variable",
            "Config search path", "provider=", "See https://hydra.cc")
    texts, cause = [], error
    while cause is not None:  # Hydra wraps the useful detail (the type error) as the cause
        texts.append(str(cause))
        cause = cause.__cause__
    parts, options = [], []
    for raw in "\n".join(texts).splitlines():
        line = raw.strip()
        if not line or line.startswith(skip):
            continue
        if raw.startswith("\t"):
            options.append(line)
            continue
        if options:
            parts[-1] += ": " + ", ".join(options)
            options = []
        line = line.rstrip(".:")
        if line not in parts:
            parts.append(line)
    if options:
        parts[-1] += ": " + ", ".join(options)
    return "; ".join(parts) or type(error).__name__


def unknown_option(override: str, conf_dir: Path = CONF_DIR) -> str | None:
    """The reason `group=option` names no conf/<group>/<option>.yaml, else None. Hydra says nothing for
    an optional group (`optional experiment` in conf/config.yaml): without this, a misspelt
    experiment=latent_odee would compose the defaults and silently train the MLP into table1.csv."""
    if override.startswith("~") or "=" not in override:
        return None
    key, value = override.lstrip("+").split("=", 1)
    key = key.split("@", 1)[0]  # group@package=option
    options = config_groups(conf_dir).get(key)
    if options is None or value in ("null", "") or value in options:
        return None
    return f"Could not find '{key}/{value}'; Available options in '{key}': {', '.join(options)}"


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose the config for every value of every sweep before Hydra starts, so a bad override
    (unknown key or option, wrong type) gets one `noderun: error:` line and exit 2, before any job runs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    user = [o for o in overrides if not o.startswith("-") and not o.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(user)
    except Exception as error:  # a syntax error in an override
        _fail(RuntimeError(one_line(error)))
    first = list(user)
    variants = []
    for index, (override, text) in enumerate(zip(parsed, user)):
        if not override.is_sweep_override():
            continue
        key = text.split("=", 1)[0]
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # e.g. glob(): left to Hydra
            continue
        first[index] = f"{key}={values[0]}"
        variants += [(index, f"{key}={value}") for value in values[1:]]
    candidates = [first]
    for index, text in variants:
        candidates.append(first[:index] + [text] + first[index + 1 :])
    for candidate in candidates:
        for override in candidate:
            if unknown_option(override):
                _fail(RuntimeError(unknown_option(override)))
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                compose(config_name=config_name, overrides=candidate)
        except Exception as error:
            _fail(RuntimeError(one_line(error)))
        finally:
            GlobalHydra.instance().clear()


def sweep_fixed_values(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """With -m and a swept config group (experiment=a,b), each plain `key=value` becomes `key=choice(value)`.

    Hydra composes a multirun's base config from the overrides that are not sweeps, without the swept
    groups; a key that only the swept experiment brings (dataset.n_obs, which experiment=latent_ode's
    dataset has and the default MNIST's has not) then fails there, although every job would compose.
    A one-value sweep is left out of that base config and gives each job the same override. Values
    Hydra would parse as more than a plain word (quoted, lists, dicts, interpolations) stay as they are.
    """
    if not any(flag in overrides for flag in ("-m", "--multirun")):
        return overrides
    from hydra.core.override_parser.overrides_parser import OverridesParser

    user = [(i, o) for i, o in enumerate(overrides) if not o.startswith("-") and not o.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides([o for _, o in user])
    except Exception:  # a syntax error: check_overrides reports it
        return overrides
    groups = config_groups(conf_dir)
    group_sweeps = [p for p in parsed if p.is_sweep_override() and p.key_or_group.split("@")[0] in groups]
    if not group_sweeps:
        return overrides
    out = list(overrides)
    for (index, text), override in zip(user, parsed):
        key, _, value = text.partition("=")
        plain = all(c.isalnum() or c in "._-/:" for c in value) and value not in ("", "null")
        if (override.is_sweep_override() or text[0] in "+~" or key.split("@")[0] in groups or not plain):
            continue
        out[index] = f"{key}=choice({value})"
    return out


COMMANDS = {"train": train_command, "table": table_command, "data": data_command, "plot": plot_command}


def _default_profile(overrides: list[str]) -> list[str]:
    """Add profile=paper when the run resolves to CUDA, profile=quick otherwise, unless the user chose one."""
    if any(arg.lstrip("+~").startswith("profile=") for arg in overrides):
        return overrides
    import torch

    device = next((arg.split("=", 1)[1] for arg in overrides if arg.lstrip("+~").startswith("device=")), "auto")
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    profile = "paper" if on_cuda else "quick"
    print(f"[noderun] no profile given: using profile={profile} "
          f"({'the run is on CUDA' if on_cuda else 'the run is on the CPU'})", file=sys.stderr)
    return overrides + [f"profile={profile}"]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"noderun: error: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if command == "train" and any(arg in ("-h", "--help") for arg in overrides):
        # Our own help instead of Hydra's (which prints the whole default config): what conf/ offers.
        # Hydra's own flags stay: --hydra-help, --cfg job, --info.
        print(train_help())
        return
    register_configs()
    if command == "train" and not any(a in HYDRA_INFO_FLAGS for a in overrides):
        overrides = _default_profile(overrides)
        check_overrides(CONFIG_NAMES["train"], overrides)
        overrides = sweep_fixed_values(overrides)
    sys.argv = [f"noderun-{command}", *overrides]
    COMMANDS[command]()


if __name__ == "__main__":
    main()
