"""`elasticml checkpoints encrypt|decrypt` and `elasticml eval` of encrypted checkpoints."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elasticml.cli import app
from elasticml.train.checkpoint import CheckpointManager, encode
from elasticml.train.encryption import ENV
from tests.unit.test_eval_cli import ROOT, make_run

KEY = base64.b64encode(b"\x01" * 32).decode()
NEW_KEY = base64.b64encode(b"\x02" * 32).decode()


def key_file(tmp_path: Path, text: str = KEY, name: str = "key") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def run_with_best(tmp_path: Path) -> Path:
    run = make_run(tmp_path, steps=(5, 10))
    manager = CheckpointManager(run / "checkpoints")
    best = {"metric": "accuracy", "value": 0.5, "step": 5}
    manager.save({**manager.newest()[1], "best": best}, 5, name="best.pt")
    return run


def invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [*map(str, args)], env=env or {ENV: ""})


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".pt",
                                                                                  ".json")}


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_encrypt_to_a_folder_leaves_the_originals_and_decrypt_gives_them_back(tmp_path):
    run = run_with_best(tmp_path)
    before = files(run / "checkpoints")
    key = key_file(tmp_path)
    result = invoke("checkpoints", "encrypt", run, "-o", tmp_path / "sealed", "--key-file", key)
    assert result.exit_code == 0, result.output
    assert "encrypted 3 checkpoint files into" in result.output
    assert files(run / "checkpoints") == before, "the originals are untouched"
    sealed = files(tmp_path / "sealed")
    assert set(sealed) == {"step-5.pt", "step-10.pt", "best.pt", "best.json"}
    assert all(blob.startswith(b"EMLCKPE1") for name, blob in sealed.items() if name != "best.json")
    assert CheckpointManager(tmp_path / "sealed").best_on_disk()["step"] == 5, "record in step"

    result = invoke("checkpoints", "decrypt", tmp_path / "sealed", "-o", tmp_path / "plain",
                    "--key-file", key)
    assert result.exit_code == 0, result.output
    plain = files(tmp_path / "plain")
    assert {n: plain[n] for n in plain if n != "best.json"} == \
        {n: before[n] for n in before if n != "best.json"}, "byte for byte what was there"
    assert json.loads(plain["best.json"]) == json.loads(before["best.json"])


def test_in_place_then_eval_with_the_key_and_one_line_without_it(tmp_path):
    run = run_with_best(tmp_path)
    key = key_file(tmp_path)
    result = invoke("checkpoints", "encrypt", run, "--in-place", env={ENV: KEY})
    assert result.exit_code == 0 and "in place" in result.output, result.output
    assert all(blob.startswith(b"EMLCKPE1") for name, blob in files(run / "checkpoints").items()
               if name.endswith(".pt"))
    assert not list((run / "checkpoints").glob(".*.tmp")), "no temporary file left"

    done = invoke("eval", run, "--json", "--key-file", key)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["step"] == 10
    assert invoke("eval", run / "checkpoints" / "best.pt", "--json", env={ENV: KEY}).exit_code == 0

    parallel = invoke("eval", run / "checkpoints" / "best.pt", "--json", "--nproc", "2",
                      "--key-file", key)
    assert parallel.exit_code == 0, parallel.output
    single = invoke("eval", run / "checkpoints" / "best.pt", "--json", "--key-file", key)
    assert json.loads(parallel.stdout)["metrics"]["confusion_matrix"] == \
        json.loads(single.stdout)["metrics"]["confusion_matrix"], "each process opened the file"

    one_error_line(invoke("eval", run), "step-10.pt is encrypted and no checkpoint key was given")
    one_error_line(invoke("eval", run, env={ENV: NEW_KEY}),
                   f"step-10.pt is encrypted with another key than the one in ${ENV}")


def test_a_run_recipe_naming_its_key_file_needs_nothing_else(tmp_path):
    run = run_with_best(tmp_path)
    key_file(tmp_path)  # `key`, beside the folder the recipe was resolved from
    (run / "recipe.yaml").write_text("run: {name: tiny, recipe_dir: " + str(tmp_path) + "}\n"
                                     "trainer: {checkpoint_key_file: key}\n")
    assert invoke("checkpoints", "encrypt", run, "--in-place").exit_code == 0
    assert invoke("eval", run, "--json").exit_code == 0


def test_re_encrypt_under_another_key(tmp_path):
    run = run_with_best(tmp_path)
    old, new = key_file(tmp_path), key_file(tmp_path, NEW_KEY, "new")
    assert invoke("checkpoints", "encrypt", run, "--in-place", "--key-file", old).exit_code == 0
    result = invoke("checkpoints", "encrypt", run, "--in-place", "--key-file", new,
                    "--from-key-file", old)
    assert result.exit_code == 0, result.output
    assert invoke("eval", run, "--json", "--key-file", new).exit_code == 0
    one_error_line(invoke("eval", run, "--key-file", old), "encrypted with another key")


def test_a_wrong_key_writes_nothing(tmp_path):
    run = run_with_best(tmp_path)
    assert invoke("checkpoints", "encrypt", run, "--in-place", env={ENV: KEY}).exit_code == 0
    before = files(run / "checkpoints")
    one_error_line(invoke("checkpoints", "decrypt", run, "-o", tmp_path / "out",
                          env={ENV: NEW_KEY}), "encrypted with another key")
    one_error_line(invoke("checkpoints", "decrypt", run, "--in-place", env={ENV: NEW_KEY}),
                   "encrypted with another key")
    assert not (tmp_path / "out").exists() and files(run / "checkpoints") == before


def test_a_damaged_file_is_left_out_and_named(tmp_path):
    run = run_with_best(tmp_path)
    step10 = run / "checkpoints" / "step-10.pt"
    step10.write_bytes(step10.read_bytes()[:-50])
    result = invoke("checkpoints", "encrypt", run, "-o", tmp_path / "out", env={ENV: KEY})
    assert result.exit_code == 1
    assert "encrypted 2 checkpoint files" in result.stdout
    assert "left out" in result.stderr and "step-10.pt" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best.json", "best.pt",
                                                                   "step-5.pt"]


@pytest.mark.parametrize("args, message", [
    (["{file}"], "say where the result goes: -o OUT"),
    (["{file}", "-o", "out", "--in-place"], "say where the result goes"),
    (["{file}", "-o", "{file}"], "-o is the file itself: pass --in-place"),
    (["{missing}", "--in-place"], "not found"),
], ids=["nowhere", "both", "onto itself", "missing"])
def test_bad_requests_are_one_line(tmp_path, args, message):
    run = run_with_best(tmp_path)
    names = {"file": run / "checkpoints" / "step-5.pt", "missing": tmp_path / "nope.pt"}
    args = [a.format(**names) for a in args]
    one_error_line(invoke("checkpoints", "encrypt", *args, env={ENV: KEY}), message)


def test_encrypting_needs_a_key_and_never_shows_one(tmp_path):
    run = run_with_best(tmp_path)
    one_error_line(invoke("checkpoints", "encrypt", run, "--in-place"), "no key to encrypt with")
    result = invoke("checkpoints", "encrypt", run, "--in-place", env={ENV: "c2hvcnQ="})
    one_error_line(result, "decodes to 5 bytes")
    assert "c2hvcnQ=" not in result.output


def test_a_wrong_key_is_refused_without_importing_torch(tmp_path):
    path = tmp_path / "step-1.pt"
    path.write_bytes(b"EMLCKPE1" + b"\x00" * 200)  # the header of a file of another key
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from elasticml.cli import app\n"
        f"r = CliRunner().invoke(app, ['eval', {str(path)!r}], env={{'{ENV}': '{KEY}'}})\n"
        "print(r.exit_code, 'torch' in sys.modules, 'another key' in r.output)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "2 False True"


def test_encoding_is_not_needed_to_convert(tmp_path):
    """Conversion neither unpickles nor needs torch: a plain file's bytes are only checked."""
    path = tmp_path / "step-1.pt"
    path.write_bytes(encode({"step": 1}))
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from elasticml.cli import app\n"
        f"r = CliRunner().invoke(app, ['checkpoints', 'encrypt', {str(path)!r}, '--in-place'],"
        f" env={{'{ENV}': '{KEY}'}})\n"
        "print(r.exit_code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "0 False"
