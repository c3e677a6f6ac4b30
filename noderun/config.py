"""Typed schemas for the Hydra config groups, registered in Hydra's ConfigStore.

Every YAML file in ``conf/<group>/`` starts from one of these schemas (its defaults
list names ``/schema/<group>/<name>``), so a mistyped key (``solver.rtoll=1e-3``) or
a value of the wrong type fails at composition, before any work, with Hydra's message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from noderun.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ClassifierModelConfig:
    """Table 1 models. `name` selects the builder in noderun.models.MODEL_BUILDERS."""

    name: str = MISSING
    hidden: int = 300  # MLP width
    channels: int = 64  # conv models: feature channels
    n_blocks: int = 6  # ResNet: residual blocks (the depth experiment varies it)
    adjoint: bool = True  # ODE block: adjoint (ODE-Net) or backprop through the solver (RK-Net)
    # ODE block: "exact" computes the time channel without concatenation, "concat" as published
    time_channel: str = "exact"
    channels_last: bool = False  # ODE block: solve in NHWC memory order (convolutions, GroupNorm, solver state)
    conv_impl: str = "torch"  # ODE block convolutions: torch (F.conv2d) or nnpack (CPU float32; noderun.models.conv)
    # ANODE (model=anode, beyond the paper): zero channels appended to the ODE state; 0 for every other model
    augment_channels: int = 0
    # Random-crop augmentation (dataset.crop_padding) suits the conv nets, which are translation
    # equivariant; the MLP row (quoted by the paper from LeCun et al. 1998) trains without it.
    augment: bool = True


@dataclass
class SolverConfig:
    """How ODE blocks are solved. Ignored by models without one."""

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: Optional[float] = None  # fixed-step methods only
    adjoint: Optional[bool] = None  # None: the model's own choice (ODE-Net adjoint, RK-Net backprop)
    seminorm: bool = False  # adjoint backward: leave parameter channels out of the error norm
    # adjoint backward (native, adaptive): start from the forward solve's last step (true) or select the
    # first step afresh (false, as torchdiffeq; more backward evaluations, benchmarks/README.md has the
    # gradient accuracy of each)
    reuse_forward_step: bool = True
    # adaptive methods: the forward solve's first step over the unit interval (null: selected by the usual
    # heuristic of Hairer, Norsett and Wanner, as torchdiffeq does); the adjoint's backward solve keeps its own rule
    first_step: Optional[float] = None
    max_num_steps: int = 10_000
    backend: str = "native"  # native: noderun.ode; torchdiffeq: torchdiffeq.odeint(_adjoint) (Table 1 ODE block)


@dataclass
class MNISTDatasetConfig:
    name: str = "mnist"
    crop_padding: int = 4  # random crop 28 from the image zero-padded by this much, per sample
    # The last val_size of the 60,000 training images held out as a validation set (the same images for
    # every seed): never trained on, evaluated after every epoch beside the test set, to choose settings
    # (e.g. regularizer weights) without looking at the test error. 0: no validation set.
    val_size: int = 0


@dataclass
class ProfileConfig:
    """How long to train. smoke: seconds, for tests; quick: minutes on a CPU; paper: the paper's protocol."""

    name: str = MISSING
    epochs: int = 1
    train_size: Optional[int] = None  # None: the whole training set
    test_size: Optional[int] = None  # None: the whole test set
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    # multistep: x lr_gamma at lr_milestones (epochs); cosine or linear: per iteration to 0, after the warm-up
    lr_schedule: str = "multistep"
    lr_milestones: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # cosine / linear: lr rises linearly from 0 over this many epochs first
    nesterov: bool = False  # Nesterov momentum
    label_smoothing: float = 0.0  # of the training loss (the test loss is never smoothed)
    ema_decay: Optional[float] = None  # evaluate an exponential moving average of the weights (per step)
    progress: bool = True


# ------------------------------------------------------------- spirals (Table 2)


@dataclass
class LatentODEModelConfig:
    """Latent ODE (paper: recognition RNN 25 units, latent 4, dynamics and decoder 20 hidden units)."""

    name: str = "latent_ode"
    latent_dim: int = 4
    rec_hidden: int = 25
    dyn_hidden: int = 20
    dyn_layers: int = 1  # hidden layers of the dynamics (the paper: 1; torchdiffeq's public example: 2)
    dec_hidden: int = 20
    cell: str = "gru"  # recognition cell: gru or rnn (tanh)
    obs_std: float = 0.3  # fixed std of the Gaussian likelihood p(x | z)
    gap_scale: float = 10.0  # the time gap enters the recognition cell multiplied by this
    consistency: float = 10.0  # weight of the suffix-consistency term (0: the paper's ELBO alone)
    consistency_fraction: float = 0.5  # the term covers suffixes holding more than 1 - this of the observations
    adjoint: bool = False  # gradients through the solver (False) or the adjoint (True); solver.adjoint overrides
    lr: float = 0.01  # Adam, cosine-annealed to lr_min over the iterations
    lr_min: float = 0.0005
    batch_size: Optional[int] = None  # None: all training trajectories each iteration
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 3, "quick": 2000, "paper": 4000})
    # every this many iterations the loss on the validation split is measured; the run keeps the weights
    # of the lowest one (model selection); iterations must be a multiple of it
    eval_every: int = 100
    restarts: int = 1  # initialisations trained one after the other; the lowest validation loss of all is kept
    kl_warmup: int = 0  # iterations over which the ELBO's KL weight rises linearly from 0 to 1 (0: always 1)
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default


@dataclass
class RNNModelConfig:
    """RNN baseline (paper: 25 hidden units, Gaussian NLL, time gap to the next observation as input)."""

    name: str = "rnn"
    hidden: int = 25
    cell: str = "gru"  # gru or rnn (tanh)
    gap_scale: float = 10.0  # the time gap enters the cell multiplied by this
    lr: float = 0.01
    lr_min: float = 0.0005
    batch_size: Optional[int] = None
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 3, "quick": 2000, "paper": 4000})
    eval_every: int = 100  # validation interval in iterations (model selection, as the latent ODE's)
    restarts: int = 1  # as the latent ODE's
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default


@dataclass
class SpiralsDatasetConfig:
    """The generator's every constant (noderun.data.spirals.generate_spirals)."""

    name: str = "spirals"
    n_obs: int = 100  # observed points per trajectory, drawn without replacement from the observation window
    n_spirals: int = 1000  # half clockwise, half counter-clockwise
    n_train: int = 800  # trajectories for training; the other n_spirals - n_train for testing
    n_val: int = 100  # of the n_train, held out for validation (model selection); 0: none
    n_steps: int = 100  # equally spaced time points of the observation window
    n_extrapolate: int = 100  # time points after it on which RMSE is measured
    a: float = 0.0  # r = a + b * theta
    b: float = 0.3
    theta_min: float = 6 * math.pi * 100 / 499  # where the authors' example starts: away from the centre
    theta_max: float = 6 * math.pi
    n_base: int = 800  # angles discretising [theta_min, theta_max]; a trajectory is a stretch of consecutive ones
    dt: float = 0.01  # time between grid points
    noise_std: float = 0.3  # Gaussian noise of the observations
    # forecast: training windows cover every angle a test forecast reaches; same: drawn as the test ones
    train_coverage: str = "forecast"
    seed: Optional[int] = None  # the data set's seed; null: the run's seed, so that seeds vary the data too


# --------------------------------------------------------- flows (Figures 4, 5)


@dataclass
class FlowModelConfig:
    """Planar NF (width = K layers) or planar CNF (width = M hidden units)."""

    name: str = MISSING  # planar_nf or planar_cnf
    width: int = 8
    hidden: int = 32  # CNF hypernetwork hidden units
    t_end: float = 1.0  # CNF flow time
    trace: str = "exact"  # CNF divergence: exact (Σ of M terms) or hutchinson (one Rademacher probe per solve)
    batch_size: int = 256  # samples per iteration (of q for density matching, of data for max likelihood)
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 3, "quick": 100, "paper": 10_000})
    lr: Dict[str, float] = field(default_factory=lambda: {"smoke": 1e-2, "quick": 1e-2, "paper": 1e-3})
    # constant, or cosine: lr annealed to 0 over the iterations (the paper does not say; at a constant
    # lr of 1e-2 the CNF's loss still jumped between iterations at the end of a quick run)
    lr_schedule: str = "cosine"
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default
    # Per-profile solver tolerance; an experiment uses it as the default of solver.rtol/atol by
    # interpolation (conf/experiment/density_cnf.yaml), so a command-line solver.rtol still wins.
    tolerance: Dict[str, float] = field(default_factory=dict)
    eval_samples: int = 10_000  # samples for the final loss / the NLL test set


@dataclass
class EnergyDatasetConfig:
    """Density matching target p ∝ exp(-U)."""

    name: str = "energy"
    target: str = "u1"  # u1, u2, u3 (Rezende & Mohamed 2015)


@dataclass
class Toy2DDatasetConfig:
    """Maximum likelihood data: fresh training samples every iteration, a fixed test sample."""

    name: str = MISSING  # two_circles or two_moons
    noise: float = 0.08
    test_seed: int = 12345  # the test sample's seed (training samples use the run's seed)


# ------------------------------------------------------ Figure 3 (tolerance sweep)


@dataclass
class SweepDatasetConfig:
    """The MNIST test images the sweep measures on, in which batches, and the reference solve."""

    name: str = "mnist"
    test_size: Dict[str, Optional[int]] = field(
        default_factory=lambda: {"smoke": 64, "quick": 256, "fast": 1000, "paper": None})  # per profile; None: all 10,000
    batch_size: int = 128  # the training batch size: NFE per batch as in training
    reference_method: str = "dopri5"
    reference_rtol: float = 1e-8
    reference_atol: float = 1e-8
    reference_dtype: str = "float64"  # float64 makes a 1e-8 tolerance reachable


# ------------------------------------- crossing (beyond the paper: Dupont et al. 2019)


@dataclass
class CrossingModelConfig:
    """ODE (augment_dim = 0) or ANODE on a low-dimensional regression task: a time-dependent MLP dynamics
    on the data dimensions plus augment_dim zero-initialised ones, solved over [0, 1] (Dupont et al. 2019)."""

    name: str = MISSING  # crossing_ode or crossing_anode
    augment_dim: int = 0  # zero dimensions appended to the ODE state; 0: the plain ODE
    hidden: int = 32  # units of each of the dynamics' two hidden layers
    adjoint: bool = True  # adjoint gradients (the ODE-Net's); solver.adjoint overrides
    batch_size: int = 64
    iterations: Dict[str, int] = field(default_factory=lambda: {"smoke": 5, "quick": 600, "paper": 960})
    lr: Dict[str, float] = field(default_factory=lambda: {"smoke": 1e-3, "quick": 1e-3, "paper": 1e-3})  # Adam
    threads: Optional[int] = 1  # torch CPU threads during the run (tiny tensors: 1 is fastest); None: torch's default


@dataclass
class Crossing1DDatasetConfig:
    """g(-1) = 1, g(1) = -1: inputs drawn uniformly from [-1 - w, -1 + w] (target +1) and [1 - w, 1 + w]
    (target -1), half and half, w = half_width (0: the two points of Dupont et al.'s g_1d)."""

    name: str = "crossing_1d"
    half_width: float = 0.25
    n_train: int = 1000
    n_test: int = 1000
    readout: str = "state"  # the output: state (the flow's own x(1)) or linear (a linear map of the whole state)
    anode_augment_dim: int = 1  # the augmented dimensions model=crossing_anode uses on this data set
    seed: int = 0  # the training set's seed: the same data whatever the training seed
    test_seed: int = 1


@dataclass
class Crossing2DDatasetConfig:
    """Points uniform (by area) in the disc r < inner_radius (target -1) and in the ring
    outer_min < r < outer_max (target +1): Dupont et al.'s concentric spheres in 2-D."""

    name: str = "crossing_2d"
    inner_radius: float = 0.5
    outer_min: float = 1.0
    outer_max: float = 1.5
    inner_fraction: float = 0.25  # of the points in the disc (Dupont et al.: 500 of 2000)
    n_train: int = 2000
    n_test: int = 1000
    readout: str = "linear"
    anode_augment_dim: int = 5
    seed: int = 0
    test_seed: int = 1


@dataclass
class RegularizerConfig:
    """RNODE regularisation of every ODE solve in training (Finlay et al. 2020; noderun.models.regularization).

    none: no regularisation; rnode: `kinetic` x ∫‖f‖² dt + `jacobian` x ∫‖∂f/∂z‖²_F dt added to the loss,
    the second by Hutchinson's estimator with one `probe` (rademacher or gaussian) per sample."""

    name: str = "none"
    kinetic: float = 0.0
    jacobian: float = 0.0
    probe: str = "rademacher"


@dataclass
class LoggerConfig:
    """Experiment trackers the runner logs to (noderun.loggers): none, tensorboard, mlflow or both."""

    backends: list[str] = field(default_factory=list)  # of tensorboard, mlflow
    tensorboard_dir: str = "${results_dir}/tensorboard"  # event files: <this>/<experiment_name>/<run_id>
    mlflow_uri: Optional[str] = None  # MLflow tracking URI; null: a local file store, <results_dir>/mlflow


@dataclass
class Config:
    model: Any = MISSING
    solver: SolverConfig = field(default_factory=SolverConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    dataset: Any = MISSING
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    task: str = "classification"
    experiment_name: str = "table1"  # names the result CSV: <results_dir>/<experiment_name>.csv
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    results_dir: str = "results"
    data_dir: str = "data"
    # Re-running a command continues its run from the last checkpoint (resume=false starts over);
    # a run that already finished is skipped unless force=true (noderun.checkpoint).
    resume: bool = True
    force: bool = False
    # Seconds between the checkpoints written at step boundaries (besides every epoch's end and
    # Ctrl-C): a killed run loses at most this much work. 0: after every step.
    checkpoint_every_s: float = 300.0
    # 32: float32 throughout (on CUDA also without TF32). bf16-mixed: convolutions and matrix products
    # in bfloat16 under autocast, ODE states, solver error control, adjoint, loss and optimiser in
    # float32 (the classification task; needs native bfloat16 hardware).
    precision: str = "32"


@dataclass
class TableConfig:
    results_dir: str = "results"
    profile: Optional[str] = None  # only rows of this profile; None: one table per profile
    write: bool = True  # also write the rendered tables under results_dir


@dataclass
class DataConfig:
    data_dir: str = "data"


# The schemas of the config files that belong to one task: (task, group, name, schema).
TASK_SCHEMAS = (
    ("spirals", "model", "latent_ode", LatentODEModelConfig),
    ("spirals", "model", "rnn", RNNModelConfig),
    ("spirals", "dataset", "spirals", SpiralsDatasetConfig),
    ("flows", "model", "flow", FlowModelConfig),
    ("flows", "dataset", "energy", EnergyDatasetConfig),
    ("flows", "dataset", "toy2d", Toy2DDatasetConfig),
    ("figure3", "dataset", "mnist_sweep", SweepDatasetConfig),
    ("crossing", "model", "crossing", CrossingModelConfig),
    ("crossing", "dataset", "crossing_1d", Crossing1DDatasetConfig),
    ("crossing", "dataset", "crossing_2d", Crossing2DDatasetConfig),
)


def register_configs() -> None:
    """Put the schemas where the YAML files' defaults lists find them."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(name="table_schema", node=TableConfig)
    store.store(name="data_schema", node=DataConfig)
    store.store(group="schema/model", name="classifier", node=ClassifierModelConfig, package="model")
    store.store(group="schema/solver", name="solver", node=SolverConfig, package="solver")
    store.store(group="schema/regularizer", name="regularizer", node=RegularizerConfig, package="regularizer")
    store.store(group="schema/logger", name="logger", node=LoggerConfig, package="logger")
    store.store(group="schema/dataset", name="mnist", node=MNISTDatasetConfig, package="dataset")
    store.store(group="schema/profile", name="profile", node=ProfileConfig, package="profile")
    for _, group, name, node in TASK_SCHEMAS:
        # conf/<group>/<file>.yaml extends it with `- /schema/<group>/<name>@_here_`
        store.store(group=f"schema/{group}", name=name, node=node, package=group)


# ------------------------------------------------ keys a run does not read

# The schema of each `/schema/<group>/<name>` a file of conf/ extends; the solver and profile
# files extend none (Config types them), nor do the top-level keys ("" below).
SCHEMAS: dict = {
    ("model", "classifier"): ClassifierModelConfig,
    ("solver", "solver"): SolverConfig,
    ("dataset", "mnist"): MNISTDatasetConfig,
    ("profile", "profile"): ProfileConfig,
    **{(group, name): node for _, group, name, node in TASK_SCHEMAS},
}
ROOT_SCHEMAS: dict = {"solver": SolverConfig, "profile": ProfileConfig, "regularizer": RegularizerConfig,
                      "logger": LoggerConfig, "": Config}


def option_defaults(group: str, option: Optional[str]) -> DictConfig:
    """What `<group>=<option>` composes to with nothing overridden: conf/<group>/<option>.yaml over the
    schema and files its defaults list names, interpolations unresolved. option None (or a name with no
    file): the group's schema alone."""
    path = CONF_DIR / group / f"{option}.yaml"
    if option is None or not path.is_file():
        return OmegaConf.structured(ROOT_SCHEMAS[group])
    data = OmegaConf.load(path)
    defaults = list(data.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    node = OmegaConf.structured(ROOT_SCHEMAS[group]) if group in ROOT_SCHEMAS else OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            node = OmegaConf.merge(node, data)
        elif entry.startswith("/schema/"):
            schema_group, name = entry[len("/schema/"):].split("@")[0].split("/")
            node = OmegaConf.merge(node, OmegaConf.structured(SCHEMAS[(schema_group, name)]))
        else:
            node = OmegaConf.merge(node, option_defaults(group, entry))
    return node


@dataclass(frozen=True)
class Unread:
    """Keys of one config group that a run does not read: left at their file's values they are
    harmless, changed they would say in the row something the run did not do."""

    group: str  # model, solver, dataset, profile; "" for top-level keys
    keys: tuple  # keys of that group
    reason: str  # completes "<group>.<key>=<value> has no effect ..."; ends with what to set instead
    option: Optional[str] = None  # conf/<group>/<option>.yaml holds the values they keep; None: the schema's


def refuse_unread(cfg: DictConfig, unread: list) -> None:
    """Raise ConfigError, in one line, for the first unread key whose value is not its file's."""
    for entry in unread:
        node = cfg[entry.group] if entry.group else cfg
        defaults = OmegaConf.to_container(option_defaults(entry.group, entry.option), resolve=False)
        values = OmegaConf.to_container(node, resolve=True)
        for key in entry.keys:
            default = defaults.get(key)
            if isinstance(default, str) and "${" in default:
                continue  # set by interpolation from another key: that key is the one to check
            if values.get(key) != default:
                path = f"{entry.group}.{key}" if entry.group else key
                raise ConfigError(f"{path}={values.get(key)!r} has no effect {entry.reason}")


def schema_keys(group: str, option: Optional[str] = None) -> tuple:
    """Every key of `<group>=<option>` (its schema's and its file's)."""
    return tuple(option_defaults(group, option).keys())
