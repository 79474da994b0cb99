"""The recipe format: every key a user may write, its type, its default and what it means.

A recipe is YAML on disk and these dataclasses in code (OmegaConf structured config). The
`task` and `model` sections change shape with their `name`: each name has its own dataclass,
registered in `TASKS` / `MODELS`, so a key that belongs to another task is still an error.

Your own code comes in as components: a section (or a value inside `data`, `loss`,
`metrics`) with a `_target_` key is a free-form mapping for `elasticml.components`, not a
dataclass. A recipe names its data either with `task` (a bundled task) or with `data.train`
/ `data.val` / `data.test` (or `data.splits`); `model`, `optimizer` and `schedule` may be
components with either.

This module imports nothing heavy: `elasticml --help` and `train --dry-run` load recipes
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunConfig:
    name: str = "run"
    """Human name of the run; also the default run id."""
    id: str | None = None
    """Run id: the run directory's name and the rendezvous id. Defaults to `name`, so running
    the same recipe again resumes it; every node of one job must use the same id."""
    dir: str = "runs"
    """Run root: the run lives in `<dir>/<id>/`."""
    seed: int = 0
    """Seed for data split, initialisation, data order and sampling."""
    description: str = ""
    """One line shown by `elasticml recipes`."""
    recipe_dir: str | None = None
    """Set by elasticml to the recipe file's folder: `_target_` modules are imported from it
    (and `PYTHONPATH`), and relative paths in the recipe resolve against it."""


# --- tasks -------------------------------------------------------------------------------


@dataclass
class DigitsTask:
    """8x8 handwritten digits bundled with scikit-learn (1797 images, 10 classes)."""

    name: str = "digits"
    val_fraction: float = 0.15
    """Share of the images held out for validation."""
    test_fraction: float = 0.2
    """Share of the images held out for the final test report."""


@dataclass
class RecsysTask:
    """Implicit feedback generated with planted user/item structure (see tasks/recsys_data.py)."""

    name: str = "recsys"
    users: int = 2000
    items: int = 1000
    clusters: int = 20
    """Latent taste groups: users mostly interact with items of their own group."""
    interactions_per_user: int = 40
    """Distinct items per user; one goes to validation, one to test, the rest to training."""
    affinity: float = 0.8
    """Probability that an interaction falls in the user's own group (the rest is popularity)."""
    popularity: float = 1.0
    """Zipf exponent of item popularity (0 = all items equally popular)."""
    negatives: int = 16
    """Sampled negative items per training interaction (fixed per interaction and seed)."""
    loss: str = "softmax"
    """softmax (sampled softmax over the positive and its negatives) | bpr"""
    top_k: int = 10
    """k of recall@k, NDCG@k and hit rate@k."""


@dataclass
class SequenceTask:
    """Next-token prediction on generated sequences with a learnable rule (throughput workload).

    Token t is `perm[token t - lag]` for a fixed random permutation `perm`, except with
    probability `noise` where it is drawn uniformly: a model must learn the permutation and to
    look `lag` positions back; the best possible accuracy is about `1 - noise`.
    """

    name: str = "sequence"
    vocab: int = 256
    length: int = 64
    samples: int = 20000
    lag: int = 2
    """How far back the token that decides the next one is."""
    noise: float = 0.1
    """Share of tokens drawn at random instead of by the rule."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class MovieLensTask:
    """MovieLens-100k ratings as implicit feedback (943 users, 1682 items, 100,000 ratings).

    The file ships inside the `recbole` wheel (`pip install --no-deps recbole`); elasticml
    reads it from there and never copies it. Per user, the last item rated (by time) is the
    test item and the one before it the validation item; the rest is training data."""

    name: str = "movielens"
    path: str | None = None
    """An `ml-100k.inter` file (tab-separated user, item, rating, timestamp); default: the
    one inside the installed recbole package."""
    min_rating: float = 0.0
    """Ratings below this are left out (0 keeps every rating as an interaction)."""
    negatives: int = 16
    """Sampled negative items per training interaction (fixed per interaction and seed)."""
    loss: str = "softmax"
    """softmax (sampled softmax over the positive and its negatives) | bpr"""
    top_k: int = 10
    """k of recall@k, NDCG@k and hit rate@k."""


@dataclass
class CustomTask:
    """Your own table: a CSV or NPZ file of features and labels (classification)."""

    name: str = "custom"
    path: str = ""
    """CSV (last column = label unless `label` is set) or NPZ (arrays `x` and `y`), relative
    to the recipe's folder."""
    label: str | None = None
    """Name of the label column in a CSV file."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15


TASKS: dict[str, type] = {
    "digits": DigitsTask,
    "recsys": RecsysTask,
    "movielens": MovieLensTask,
    "sequence": SequenceTask,
    "custom": CustomTask,
}


# --- models ------------------------------------------------------------------------------


@dataclass
class MLPModel:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0


@dataclass
class CNNModel:
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    hidden: int = 128
    dropout: float = 0.1


@dataclass
class MatrixFactorizationModel:
    name: str = "mf"
    dim: int = 32


@dataclass
class TransformerModel:
    name: str = "transformer"
    dim: int = 128
    layers: int = 2
    heads: int = 4
    ff_mult: int = 4


MODELS: dict[str, type] = {
    "mlp": MLPModel,
    "cnn": CNNModel,
    "mf": MatrixFactorizationModel,
    "transformer": TransformerModel,
}


# --- your own data -----------------------------------------------------------------------


@dataclass
class LoaderConfig:
    """How `torch.utils.data.DataLoader` reads the datasets (training and evaluation)."""

    num_workers: int = 0
    """Loader worker processes per training process (0: read in the training process)."""
    pin_memory: bool = False
    """Page-locked host memory for faster copies to a GPU (ignored on CPU)."""
    persistent_workers: bool = False
    """Keep loader workers alive between epochs (with num_workers > 0)."""
    prefetch_factor: int | None = None
    """Batches each loader worker reads ahead (torch's default: 2)."""
    eval_batch_size: int = 256
    """Samples per batch when a split is evaluated."""


@dataclass
class DataConfig:
    """Your own datasets as components (see docs/bring-your-own.md). Each is a map-style
    `torch.utils.data.Dataset`: `__len__` and `__getitem__`, returning `(input, target)` pairs
    or dicts."""

    train: Any = None
    """`{_target_: ...}` building the training Dataset."""
    val: Any = None
    """`{_target_: ...}` building the validation Dataset."""
    test: Any = None
    """`{_target_: ...}` building the test Dataset."""
    splits: Any = None
    """Instead of train/val/test: one `{_target_: ...}` returning all three (a dict with
    those keys, or a 3-tuple in that order)."""
    collate_fn: Any = None
    """`{_target_: mymodule.collate, _partial_: true}` (the function itself, not its result);
    default: torch's `default_collate`."""
    target_key: str = "target"
    """For dict samples: the entry holding the target; the other entries are the model's
    keyword arguments."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)



# --- optimisation ------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    """sgd | adam | adamw"""
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    """SGD only."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = None
    """Clip the global gradient norm to this value."""


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    """constant | cosine | linear"""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    """Final learning rate as a share of `optimizer.lr` (cosine and linear)."""


@dataclass
class EarlyStoppingConfig:
    """Stop training once validation stops improving (checked at every `trainer.eval_every`);
    the run ends as completed, and its final reports score the `best` checkpoint's model."""

    patience: int = 0
    """Validations in a row without improvement after which training stops (0 = off)."""
    min_delta: float = 0.0
    """An improvement must beat the best value counted so far by more than this."""
    metric: str | None = None
    """Validation metric watched; default: `trainer.best_metric`, i.e. the task's main metric
    unless the recipe names another."""
    mode: str = "auto"
    """auto | max | min: whether higher is better; auto: lower for a metric named loss, the
    task's own direction for its main metric, higher for any other."""


@dataclass
class TrainerConfig:
    max_steps: int | None = None
    """Optimizer steps to train; exactly one of `max_steps` and `epochs` is set."""
    epochs: float | None = None
    """Passes over the training split (may be fractional): training ends once that many
    epochs of samples are consumed, whatever the world sizes on the way."""
    global_batch_size: int = 64
    """Samples per optimizer step across all ranks, whatever the world size."""
    micro_batch_size: int | None = None
    """Most samples one rank puts through the model at once; more are accumulated."""
    batch_policy: str = "fixed"
    """fixed: keep the global batch when the world size changes (same math). linear: global
    batch = global_batch_size x world size / min world size, lr scaled linearly."""
    eval_every: int = 100
    """Validate every N steps (0 = only at the end)."""
    checkpoint_every: int = 100
    """Write a checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 3
    """Newest periodic checkpoints kept on disk."""
    async_checkpoint: bool = True
    """Write checkpoints in a background thread; the loop only waits for an in-memory copy."""
    log_every: int = 10
    """Write a step event every N steps."""
    device: str = "auto"
    """auto | cpu | cuda"""
    precision: str = "fp32"
    """fp32 | bf16 (autocast; with fsdp/hsdp also bf16 parameters in compute, fp32 gradient
    reduction)"""
    strategy: str = "ddp"
    """ddp: every rank holds the whole model. fsdp: parameters, gradients and optimizer state
    sharded over all ranks (FSDP2). hsdp: sharded within a node, replicated across nodes.
    fsdp/hsdp write sharded checkpoints (torch.distributed.checkpoint) that resume at any world
    size; see docs/sharding.md for what a failure costs under each."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them (the
    blocks are the ones fsdp shards: the members of the model's ModuleLists/Sequentials)."""
    checkpoint_dir: str | None = None
    """Where checkpoints are written; default `<run dir>/checkpoints`. With fsdp/hsdp every
    rank writes its shards into it, so on more than one node it must be a folder every node
    reaches (a shared filesystem): a start where it is not says so in one line."""
    compile: bool = False
    """torch.compile the model."""
    threads: int | None = None
    """Intra-op threads per worker; default: CPU cores / local workers."""
    best_metric: str | None = None
    """Validation metric that picks the `best` checkpoint; default: the task's main metric."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    encrypt_checkpoints: bool = False
    """Encrypt every checkpoint file and the training state the ranks exchange (AES-256-GCM)
    with the key in `ELASTICML_CHECKPOINT_KEY` or `checkpoint_key_file`; a file that does not
    authenticate is skipped like a corrupt one."""
    checkpoint_key_file: str | None = None
    """File whose first line is the checkpoint key, 32 random bytes in base64 (`openssl rand
    -base64 32`), relative to the recipe's folder; `ELASTICML_CHECKPOINT_KEY` wins. Only the
    path is kept: the key is never printed or written anywhere."""


# --- elasticity --------------------------------------------------------------------------


@dataclass
class RendezvousConfig:
    backend: str = "c10d"
    """c10d (store in an agent or a standalone store) | etcd (an etcd cluster, its v3 API:
    etcd 3.4 and later; for production) | etcd-v2 (etcd's v2 API, up to etcd 3.5 with
    `--enable-v2`)."""
    endpoint: str = ""
    """host:port of the store or etcd; empty = a private store on this machine (one node).
    etcd: every member, comma-separated (`h1:2379,h2:2379,h3:2379`), so a node moves on to
    another when one does not answer."""
    join_timeout: float = 600.0
    """Give up when the minimum number of nodes has not joined within this many seconds."""
    last_call: float = 0.5
    """When no group is training (the job's start): once the minimum is there, wait this
    long for more nodes before starting. Short on purpose: a node that comes later is taken
    in at the next step boundary, losing no steps."""
    regroup_wait: float = 0.3
    """After a failure: once the first node of the training group is back at the
    rendezvous, wait this long for the members that have not said they are coming back
    (lost or cut off); the round then starts without them. It starts at once when the whole
    group is back."""
    group_timeout: float = 60.0
    """After a failure or a join: how long to wait for members that said they are coming
    back (they are stopping their workers, which save first). Keep it above
    `elastic.stop_grace`."""
    node_timeout: float = 3.0
    """A node whose agent has not beaten for this long is lost: a node that died while it
    joined a round, a group gone while a spare waits, a store left by a job that no longer
    runs. (A node lost while training is noticed sooner, by its peers' failed collectives.)"""
    standalone_store: bool = False
    """c10d only: the store at `endpoint` is served by `elasticml rendezvous serve` (or another
    process), never by an agent, so losing any training node leaves the rendezvous intact."""
    ca_cert: str | None = None
    """etcd: the CA certificate (PEM file) that signed the etcd servers' certificates; turns
    on TLS (https). Default: $ELASTICML_ETCD_CA_CERT."""
    client_cert: str | None = None
    """etcd: this node's client certificate (PEM file), for an etcd that checks clients
    (`--client-cert-auth`). Default: $ELASTICML_ETCD_CLIENT_CERT."""
    client_key: str | None = None
    """etcd: the unencrypted private key of `client_cert` (PEM file, readable by this user
    only). Default: $ELASTICML_ETCD_CLIENT_KEY."""
    user: str | None = None
    """etcd (v3) with authentication on: the etcd user to log in as. Default:
    $ELASTICML_ETCD_USER. Its password comes from $ELASTICML_ETCD_PASSWORD or
    `password_file`, never from the recipe."""
    password_file: str | None = None
    """etcd: file whose first line is `user`'s password (used when $ELASTICML_ETCD_PASSWORD
    is not set); never printed or written into the run dir."""
    job_key_file: str | None = None
    """File whose first line is the job key every node shares (or set `ELASTICML_JOB_KEY`):
    rendezvous values and the training state broadcast are signed with it, so a process
    without it cannot join or feed the workers. Needed when the endpoint is reachable from
    other machines; never printed or written into the run dir."""


@dataclass
class ElasticConfig:
    nnodes: str = "1"
    """Nodes as `N` or `MIN:MAX`."""
    nproc_per_node: int = 1
    """Workers per node."""
    max_restarts: int = 10
    """Worker-group restarts before the job gives up."""
    rdzv: RendezvousConfig = field(default_factory=RendezvousConfig)
    hang_timeout: float = 300.0
    """A worker with no progress for this many seconds is a failure (stacks are saved)."""
    collective_timeout: float = 30.0
    """Timeout of one collective: how long workers wait for a silent peer (a machine cut off
    without closing its sockets). A dead peer is noticed sooner, through its closed socket.
    Must stay below `stop_grace`, so that a worker stopped inside a collective still saves."""
    stop_grace: float = 45.0
    """Seconds a worker has after SIGTERM (a regroup, a preemption) to save the state of its
    last completed step before the agent SIGKILLs it. Keep it above
    `collective_timeout` + the time a checkpoint write takes."""
    local_addr: str | None = None
    """Address this node announces to the others; default: its hostname."""
    warm_workers: bool = True
    """Fork workers from a process that imported torch and elasticml once per node, instead of
    starting a fresh interpreter per worker at every start, restart and regroup (Linux; the
    `--dry-run` torchrun line starts them fresh). Off: every worker is a fresh interpreter."""


@dataclass
class FaultsConfig:
    """Injected failures, to rehearse what a job does when things break (off by default)."""

    kill_rank: int | None = None
    """Rank that SIGKILLs itself at `kill_step`."""
    kill_step: int | None = None
    hang_rank: int | None = None
    """Rank that stops making progress at `hang_step`."""
    hang_step: int | None = None
    once: bool = True
    """Fire each fault only in the first attempt (restart 0)."""
    step_delay: float = 0.0
    """Seconds every rank sleeps before each step: a slow job (stragglers, or time for a
    rehearsal to kill or add a node while it trains)."""
    hold_file: str | None = None
    """While this file exists on a node, its ranks wait before each step (a stop request ends
    the wait): a rehearsal pauses training at a step of its choosing, adds or removes a node,
    and deletes the file to go on. Every node of the job must see the file (a shared folder):
    ranks that go on alone wait in their next collective, up to `elastic.collective_timeout`.
    An absolute path, or relative to where the node started."""
    die_in_rendezvous: bool = False
    """This node's agent SIGKILLs itself right after it put its card in a round, before the
    round is decided: a node lost in the middle of a rendezvous (set it on one node only)."""


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    task: Any = field(default_factory=DigitsTask)
    """A bundled task; None when the recipe names its own datasets under `data`."""
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=CNNModel)
    """A bundled model by `name`, or your own as `{_target_: ...}`."""
    loss: Any = None
    """With your own data: `{_target_: ...}` called as `loss(outputs, target)`; None: the
    model returns its own loss (`outputs.loss` or `outputs["loss"]`)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """With your own data: name -> `{_target_: ...}` torchmetrics objects, updated with
    `(outputs, target)` on val and test."""
    optimizer: Any = field(default_factory=OptimizerConfig)
    """A named optimizer, or `{_target_: ..., _partial_: true}` built with the parameters."""
    schedule: Any = field(default_factory=ScheduleConfig)
    """A named schedule, or `{_target_: ..., _partial_: true}` built with the optimizer."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    @property
    def run_id(self) -> str:
        return self.run.id or self.run.name

    @property
    def own_data(self) -> bool:
        """The recipe names its own datasets (`data`) rather than a bundled `task`."""
        return self.task is None
