"""The `elasticml` command: parses arguments and calls the module that does the work.

Nothing here imports torch: `elasticml --help` and `train --dry-run` stay fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from elasticml.errors import UserError

app = typer.Typer(
    name="elasticml",
    help="Elastic, fault-tolerant PyTorch training from a recipe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="List and show the bundled recipes.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")
rendezvous_app = typer.Typer(help="Rendezvous helpers for multi-node jobs.",
                             no_args_is_help=True)
app.add_typer(rendezvous_app, name="rendezvous")
export_app = typer.Typer(help="Launch files that run a recipe elastically under a scheduler.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
checkpoints_app = typer.Typer(help="Encrypt, decrypt or export a run's checkpoints.",
                              no_args_is_help=True)
app.add_typer(checkpoints_app, name="checkpoints")

Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. "
                                                            "trainer.max_steps=200")]
RecipeArg = Annotated[str, typer.Argument(help="Recipe YAML file, or a bundled recipe name.")]
Nnodes = Annotated[str | None, typer.Option(help="Nodes as N or MIN:MAX.")]
NprocPerNode = Annotated[int | None, typer.Option(help="Workers per node.")]
RdzvEndpoint = Annotated[str | None, typer.Option(help="Rendezvous HOST:PORT.")]
RdzvBackend = Annotated[str | None, typer.Option(
    help="c10d, etcd (etcd's v3 API; production) or etcd-v2.")]
RunId = Annotated[str | None, typer.Option(help="Run id (same on every node).")]
RunDirFlag = Annotated[str | None, typer.Option("--run-dir", help="Run root directory.")]
MaxRestarts = Annotated[int | None, typer.Option(help="Worker-group restarts.")]
KeyFile = Annotated[str | None, typer.Option(
    help="File whose first line is the checkpoint key [default: $ELASTICML_CHECKPOINT_KEY, "
         "else the run recipe's trainer.checkpoint_key_file].")]


@app.command(context_settings={"allow_interspersed_args": True})
def train(
    recipe: RecipeArg,
    overrides: Overrides = None,
    nnodes: Nnodes = None,
    nproc_per_node: NprocPerNode = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_backend: RdzvBackend = None,
    run_id: RunId = None,
    run_dir: RunDirFlag = None,
    max_restarts: MaxRestarts = None,
    local_addr: Annotated[str | None, typer.Option(help="This node's address.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and torchrun line; run "
                                               "nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only failures and the "
                                                              "result.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Every event.")] = False,
) -> None:
    """Train a recipe elastically: survive worker crashes, lost nodes and new nodes."""
    from elasticml.launch.job import TrainRequest
    from elasticml.launch.job import train as run_training

    flags = {"nnodes": nnodes, "nproc_per_node": nproc_per_node, "rdzv_endpoint": rdzv_endpoint,
             "rdzv_backend": rdzv_backend, "run_id": run_id, "run_dir": run_dir,
             "max_restarts": max_restarts, "local_addr": local_addr}
    request = TrainRequest(recipe, overrides or [], flags, dry_run, quiet, verbose)
    raise typer.Exit(run_training(request))


@app.command("eval", context_settings={"allow_interspersed_args": True})
def eval_checkpoint(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint .pt file, or a run directory "
                                                   "(its newest good checkpoint).")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value overrides of data options, e.g. trainer.device=cpu (not model.*)")] = None,
    split: Annotated[str, typer.Option(help="val, test or train.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout: "
                                          "checkpoint, step, split, metrics.")] = False,
    nproc: Annotated[int, typer.Option(help="Score the split in N processes.")] = 1,
    trust_code: Annotated[bool, typer.Option(
        "--trust-code", help="Import the code the checkpoint's recipe names (_target_ modules "
                             "outside elasticml, torch and torchmetrics), from the folder it "
                             "was trained from and PYTHONPATH.")] = False,
    key_file: KeyFile = None,
) -> None:
    """Score a checkpoint on a held-out split with the recipe stored inside it."""
    from elasticml.evaluate.command import EvalRequest, run_eval

    try:
        code = run_eval(EvalRequest(checkpoint, split, overrides or [], as_json, nproc,
                                    trust_code, key_file))
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    raise typer.Exit(code)


@recipes_app.callback()
def recipes(ctx: typer.Context) -> None:
    """List the bundled recipes with their one-line descriptions."""
    if ctx.invoked_subcommand is None:
        from elasticml.recipe.catalogue import print_catalogue

        print_catalogue()


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="Recipe name, e.g. digits.")]) -> None:
    """Print a bundled recipe, ready to copy and edit."""
    from elasticml.recipe.load import find_recipe

    sys.stdout.write(find_recipe(name).read_text())


@recipes_app.command("keys")
def recipes_keys(
    section: Annotated[str | None, typer.Argument(help="Only this section, e.g. trainer.")] = None,
) -> None:
    """Every recipe key with its type, default and meaning."""
    from rich.console import Console
    from rich.table import Table

    from elasticml.recipe.reference import sections

    console = Console()
    found = sections()
    titles = [t for t in found if not section or t.split(" ")[0] == section.strip(".")]
    if not titles:
        names = ", ".join(dict.fromkeys(t.split(" ")[0] for t in found))
        raise UserError(f"no recipe section '{section}' (sections: {names})")
    for title in titles:
        keys = found[title]
        table = Table("key", "type", "default", "meaning", title=title, title_justify="left")
        for k in keys:
            table.add_row(k.key, k.type, k.default, k.doc)
        console.print(table)


RunArgs = Annotated[list[str] | None, typer.Argument(
    help="Run ids (under the run root) or run dirs; default: the latest run. Two or more are "
         "compared side by side.", show_default=False)]
RunRoot = Annotated[str | None, typer.Option("--run-dir", help="Run root [default: runs].")]


@app.command()
def report(
    runs: RunArgs = None,
    run_dir: RunRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead.")] = False,
    html: Annotated[str | None, typer.Option(help="Also write a self-contained HTML page with "
                                                  "plots to this file.")] = None,
    list_runs: Annotated[bool, typer.Option("--list", help="List the runs under the run root "
                                                           "(same as `elasticml runs`).")] = False,
) -> None:
    """What happened in a run: restarts and causes, membership, downtime, throughput, metrics."""
    from elasticml.report import report as build_report
    from elasticml.report import runs_table

    if list_runs:
        print(runs_table(run_dir, as_json))
        return
    print(build_report(runs or [], run_dir, as_json, html))
    if html:
        print(f"wrote {html}", file=sys.stderr)


@app.command()
def runs(
    run_dir: RunRoot = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """List the runs under the run root: status, steps, best metric, when, newest first."""
    from elasticml.report import runs_table

    print(runs_table(run_dir, as_json))


@rendezvous_app.command("serve")
def rendezvous_serve(
    host: Annotated[str, typer.Option(help="Address to listen on (one every node reaches).")],
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 29400,
) -> None:
    """Serve a standalone c10d rendezvous store, so that no training node hosts it."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: not a TCP port")
    from elasticml.launch.store import serve

    try:
        serve(host, port)
    except (RuntimeError, OSError) as err:
        raise UserError(f"cannot serve on {host}:{port}: {err}") from None


Output = Annotated[str | None, typer.Option("--output", "-o", help="Write to this file "
                                                                  "instead of stdout.")]


def _export_request(recipe: str, overrides: list[str] | None, **flags: object):
    from elasticml.export.launch import ExportRequest

    return ExportRequest(recipe, overrides or [], flags)


@export_app.command("slurm", context_settings={"allow_interspersed_args": True})
def export_slurm(
    recipe: RecipeArg,
    overrides: Overrides = None,
    output: Output = None,
    nnodes: Nnodes = None,
    nproc_per_node: NprocPerNode = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_backend: RdzvBackend = None,
    run_id: RunId = None,
    run_dir: RunDirFlag = None,
    max_restarts: MaxRestarts = None,
    python: Annotated[str | None, typer.Option(help="Python on the nodes, with elasticml "
                                                    "installed [default: this one].")] = None,
) -> None:
    """An sbatch script: one task per node, rendezvous on the allocation's head node."""
    from elasticml.export.launch import write_output
    from elasticml.export.slurm import export_slurm as render

    request = _export_request(recipe, overrides, nnodes=nnodes, nproc_per_node=nproc_per_node,
                              rdzv_endpoint=rdzv_endpoint, rdzv_backend=rdzv_backend,
                              run_id=run_id, run_dir=run_dir, max_restarts=max_restarts)
    write_output(render(request, python), output)


@export_app.command("kubernetes", context_settings={"allow_interspersed_args": True})
def export_kubernetes(
    recipe: RecipeArg,
    overrides: Overrides = None,
    output: Output = None,
    image: Annotated[str | None, typer.Option(help="Container image with elasticml "
                                                   "installed (required).")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU request per pod, e.g. 4 or 500m.")] = None,
    hpa_cpu_utilization: Annotated[int | None, typer.Option(
        help="Let an autoscaler resize the job between the node bounds to keep this CPU "
             "utilization (percent; needs --cpu).")] = None,
    nnodes: Nnodes = None,
    nproc_per_node: NprocPerNode = None,
    rdzv_endpoint: RdzvEndpoint = None,
    rdzv_backend: RdzvBackend = None,
    run_id: RunId = None,
    run_dir: RunDirFlag = None,
    max_restarts: MaxRestarts = None,
) -> None:
    """A Kubeflow Training Operator PyTorchJob (elasticPolicy) and the recipe's ConfigMap."""
    from elasticml.export.kubernetes import export_kubernetes as render
    from elasticml.export.launch import write_output

    request = _export_request(recipe, overrides, nnodes=nnodes, nproc_per_node=nproc_per_node,
                              rdzv_endpoint=rdzv_endpoint, rdzv_backend=rdzv_backend,
                              run_id=run_id, run_dir=run_dir, max_restarts=max_restarts)
    write_output(render(request, image, cpu, hpa_cpu_utilization), output)


CheckpointTarget = Annotated[str, typer.Argument(help="A checkpoint file, a run directory or "
                                                      "a checkpoints folder.")]
ConvertOutput = Annotated[str | None, typer.Option(
    "--output", "-o", help="Write here (a file, or a folder for several files); the "
                           "originals stay as they are.")]
InPlace = Annotated[bool, typer.Option("--in-place", help="Replace the files themselves.")]


@checkpoints_app.command("encrypt")
def checkpoints_encrypt(
    target: CheckpointTarget,
    output: ConvertOutput = None,
    in_place: InPlace = False,
    key_file: KeyFile = None,
    from_key_file: Annotated[str | None, typer.Option(
        help="The key already-encrypted files are encrypted with now, to re-encrypt them "
             "under --key-file [default: the key found as for --key-file].")] = None,
) -> None:
    """Encrypt (or re-encrypt under another key) a run's checkpoints, atomically."""
    from elasticml.checkpoint_files import Conversion

    raise typer.Exit(_converted(Conversion(target, True, output, in_place, key_file,
                                           from_key_file)))


@checkpoints_app.command("decrypt")
def checkpoints_decrypt(
    target: CheckpointTarget,
    output: ConvertOutput = None,
    in_place: InPlace = False,
    key_file: KeyFile = None,
) -> None:
    """Write a run's encrypted checkpoints as plain files (for export), atomically."""
    from elasticml.checkpoint_files import Conversion

    raise typer.Exit(_converted(Conversion(target, False, output, in_place, key_file)))


@checkpoints_app.command("export")
def checkpoints_export(
    target: CheckpointTarget,
    output: Annotated[str, typer.Option("--output", "-o", help="The file to write.")],
    key_file: KeyFile = None,
) -> None:
    """Write a checkpoint's model (a step-N.pt file, a sharded step-N.dcp folder, or a run's
    newest) as one plain torch.save state dict."""
    from elasticml.export.weights import export_weights

    try:
        export_weights(target, output, key_file)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None


def _converted(request) -> int:
    from elasticml.checkpoint_files import convert

    try:
        return convert(request)
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        return err.exit_code


def main() -> None:
    try:
        app()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
