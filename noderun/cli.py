"""Console entry point: `noderun train|table|data [Hydra overrides]`.

Each subcommand is a thin `@hydra.main` wrapper around a plain function
(`noderun.train.train`, `noderun.results.render_all`, `noderun.data.mnist.ensure_mnist`),
so the tests call the functions and the CLI only composes configs and reports errors.
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

# Errors whose message is the whole story: print one line, exit 2.
def _user_errors() -> tuple[type[BaseException], ...]:
    from noderun.data.mnist import MNISTDataError
    from noderun.errors import ConfigError
    from noderun.results import ResultsError

    return ConfigError, MNISTDataError, ResultsError


def _fail(error: BaseException, code: int = 2) -> None:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    print(f"noderun: error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def train_command(cfg: DictConfig) -> None:
    from noderun.train import train

    try:
        train(cfg)
    except _user_errors() as error:
        _fail(error)
    except (FloatingPointError, RuntimeError) as error:
        # Solver failures (step underflow, max_num_steps) and divergence: say so in one line.
        _fail(error, code=1)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="table")
def table_command(cfg: DictConfig) -> None:
    from noderun.results import read_results, render_all

    frame = read_results(cfg.results_dir)
    text = render_all(frame, cfg.profile)
    print(text)
    if cfg.write and len(frame):
        out = Path(cfg.results_dir) / "tables.md"
        tmp = out.with_suffix(".md.tmp")
        tmp.write_text("# Result tables (rendered by `noderun table`)\n\n" + text)
        tmp.replace(out)
        print(f"[noderun] wrote {out}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="data")
def data_command(cfg: DictConfig) -> None:
    from noderun.data.mnist import ensure_mnist

    try:
        folder = ensure_mnist(cfg.data_dir)
    except _user_errors() as error:
        _fail(error)
    print(f"[noderun] MNIST ready in {folder}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="table")
def plot_command(cfg: DictConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from noderun.tasks import TASKS

    written = []
    for task in TASKS.values():
        if task.figures is not None:
            written += task.figures(Path(cfg.results_dir))
    for path in written:
        print(f"[noderun] wrote {path}")
    if not written:
        print(f"[noderun] nothing to plot yet under {cfg.results_dir}")


COMMANDS = {"train": train_command, "table": table_command, "data": data_command, "plot": plot_command}


def _default_profile(overrides: list[str]) -> list[str]:
    """Add profile=paper on CUDA, profile=quick otherwise, unless the user chose one."""
    if any(arg.lstrip("+~").startswith("profile=") for arg in overrides):
        return overrides
    import torch

    profile = "paper" if torch.cuda.is_available() else "quick"
    print(f"[noderun] no profile given: using profile={profile} "
          f"({'CUDA available' if profile == 'paper' else 'no CUDA'})", file=sys.stderr)
    return overrides + [f"profile={profile}"]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"noderun: error: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if command == "train" and not any(a in ("--help", "-h", "--cfg", "-c", "--info", "-i") for a in overrides):
        overrides = _default_profile(overrides)
    register_configs()
    sys.argv = [f"noderun-{command}", *overrides]
    COMMANDS[command]()


if __name__ == "__main__":
    main()
