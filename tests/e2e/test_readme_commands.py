"""The README's command-line table, run as a user types it.

Every command of the table is a case here (`test_every_readme_command_is_tested` fails when
the README and this module disagree). Commands run in a fresh working directory that holds
the project's entry points, as a clone does, with the environment CI has (offline hub, W&B
offline in a temporary directory) and DATA_ROOT pointing at a data directory shared by the
session, so datasets and reference caches are built once. Commands are shortened only by
appending `trainer.max_epochs=1`-style overrides; `<run>` is replaced by a run's directory.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
ENTRY_POINTS = ("train.py", "eval.py", "compare.py", "conf", "scripts", "spec_align")
NO_GPU = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is present: these commands would train on it"
)


def readme_commands() -> list[str]:
    """The commands of the README's "Command line" table, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    commands = []
    for row in re.findall(r"^\| (?!want|---)[^|]+\| (.+) \|$", section, flags=re.M):
        for cell in row.split(" · "):
            first = re.match(r"\s*`([^`]+)`", cell)
            if first:
                commands.append(first.group(1))
    return commands


def readme_command(start: str) -> str:
    """The README command that starts with `start`."""
    (command,) = [c for c in readme_commands() if c.startswith(start)]
    return command


def argv_of(command: str) -> list[str]:
    """The process a shell would start for `command` (with this venv's console scripts)."""
    argv = shlex.split(command)
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] in ("spec-compare", "spec-align", "torchrun"):
        return [str(BIN / argv[0]), *argv[1:]]
    return [sys.executable, "train.py", *argv]  # a cell of train.py overrides


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A working directory laid out like a clone (entry points link to this checkout)."""
    directory = tmp_path / "project"
    directory.mkdir()
    for name in ENTRY_POINTS:
        (directory / name).symlink_to(ROOT / name)
    return directory


@pytest.fixture
def shell(user_dir: Path, user_env: dict[str, str]):
    """Run a README command (plus appended overrides) in `user_dir`; returns the result."""
    env = user_env

    def _run(
        command: str, *appended: str, ok: bool = True, run: str | None = None, readme=True
    ) -> subprocess.CompletedProcess:
        assert not readme or command in readme_commands(), f"not a README command: {command}"
        if run is not None:
            command = command.replace("<run>", run)
        result = subprocess.run(
            [*argv_of(command), *appended],
            cwd=user_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        result.output = output = result.stdout + result.stderr  # Hydra logs to stdout
        if ok:
            assert result.returncode == 0, output[-4000:]
        else:
            assert result.returncode != 0, output[-4000:]
            assert "Traceback" not in output, output[-4000:]
        return result

    return _run


def _runs(user_dir: Path, task: str = "train") -> list[Path]:
    return sorted((user_dir / "logs" / task / "runs").iterdir())


# ----------------------------------------------------------------- commands that must fail fast


@NO_GPU
def test_pretrained_encoders_offline_report_both_missing_weights(shell):
    result = shell("python train.py encoder=clip ref=dinov2", ok=False)
    assert "2 problems" in result.stderr
    assert "ViT-B-32/openai" in result.stderr and "dinov2" in result.stderr
    assert "pretrained=null" in result.stderr


def test_missing_shards_are_named_with_the_fix(shell):
    result = shell(readme_command("python train.py data=wds"), ok=False)
    assert "128 of 128 shards do not exist: /data/coco/train-00000.tar" in result.stderr
    assert "8 of 8 shards do not exist: /data/coco/val-00000.tar" in result.stderr


@NO_GPU
def test_paper_setting_offline_reports_every_problem_in_one_run(shell):
    result = shell(readme_command("python train.py experiment="), ok=False)
    message = result.stderr
    assert "4 problems" in message, message[-3000:]
    for part in ("shards do not exist", "ViT-B-32/openai", "dinov2", "no CUDA GPU"):
        assert part in message


@NO_GPU
@pytest.mark.parametrize("command", ["trainer=gpu", "trainer=ddp trainer.devices=4"])
def test_gpu_trainers_without_a_gpu_say_so(shell, command):
    result = shell(command, ok=False)
    assert "no CUDA GPU is visible here: use trainer=cpu" in result.stderr


def test_precompute_ref_with_missing_shards_fails_clearly(shell):
    result = shell(readme_command("python scripts/precompute_ref.py"), ok=False)
    assert "/data/coco/train-00000.tar" in result.stderr


def test_every_readme_command_is_tested():
    tested = {
        "python train.py",
        "python train.py encoder=clip ref=dinov2",
        "python train.py -m loss.spectral.weight=0,0.1,1 seed=1,2",
        "python train.py ckpt_path=last",
        "python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt",
        SUBMITIT_LOCAL,
        SLURM,
        OPTUNA,
        TORCHRUN,
        "trainer=gpu",
        "trainer=ddp trainer.devices=4",
        "trainer=ddp_sim",
        *SHORT_RUNS,
        "python compare.py encoder=tiny ref=efficientnet data=digits",
        "spec-compare x.npy y.pt --y-key emb --labels labels.npy --images paths.txt --out report/",
        "torchrun --nproc-per-node 2 -m spec_align.cli x.npy y.npy --rff-dim 1024",
        WANDB_WORKSPACE,
        ABLATION,
        ABLATION_TABLE,
        PROBE_CHECKPOINT,
        "python scripts/make_shards.py --folder images/ --out shards/",
        "python scripts/make_shards.py --csv pairs.csv --out shards/",
    }
    with_shard_paths = {
        readme_command("python train.py data=wds"),
        readme_command("python train.py experiment="),
        readme_command("python scripts/precompute_ref.py"),
    }
    assert set(readme_commands()) == tested | with_shard_paths


# ----------------------------------------------------------------------------------- clusters

SUBMITIT_LOCAL = "python train.py -m hydra/launcher=submitit_local loss.spectral.weight=0,1"
SLURM = (
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=ddp "
    "trainer.devices=4 trainer.num_nodes=2 seed=1,2,3"
)
OPTUNA = "python train.py -m hparams_search=spec_optuna"
TORCHRUN = (
    "torchrun --standalone --nproc-per-node 2 train.py trainer=ddp_sim "
    "hydra.run.dir=logs/train/runs/torchrun"
)
MULTI_NODE_TORCHRUN = (
    "torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE_RANK --master-addr $MASTER_ADDR "
    "--master-port 29500 train.py trainer=ddp trainer.num_nodes=2 "
    "hydra.run.dir=logs/train/runs/my-run"
)


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg
    finally:
        GlobalHydra.instance().clear()


def test_slurm_sweep_composes_with_the_job_size():
    """Submitting needs SLURM; what can be checked here is what would be submitted."""
    argv = shlex.split(SLURM)
    assert argv[:3] == ["python", "train.py", "-m"]
    seeds = [a for a in argv[3:] if a.startswith("seed=")]
    assert seeds == ["seed=1,2,3"]  # the sweep axis: three jobs of the array
    cfg = _compose_with_hydra([a for a in argv[3:] if a not in seeds])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["submitit_folder"].endswith("/.submitit/%j")


def test_cluster_section_commands_are_tested():
    section = (ROOT / "README.md").read_text().split("## On a cluster", 1)[1].split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert commands == [MULTI_NODE_TORCHRUN]
    # Two machines cannot be started here: its config composes for 2 nodes x 4 GPUs.
    cfg = _compose_with_hydra(shlex.split(MULTI_NODE_TORCHRUN.split(" train.py ")[1]))
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_as_its_own_process(shell, user_dir):
    result = shell(SUBMITIT_LOCAL, *SHORT)
    assert "Submitit 'local' sweep output dir" in result.output
    (sweep,) = (user_dir / "logs" / "train" / "multiruns").iterdir()
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    ids = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert "val/spec_diff" in (job / "csv" / "metrics.csv").read_text()
        run_id = (job / "wandb_id.txt").read_text().strip()
        (offline_run,) = (job / "wandb").glob("offline-run-*")
        assert offline_run.name.endswith(run_id)
        ids.add(run_id)
    assert len(ids) == 2
    # Each job ran in a submitit subprocess of its own (one submitit folder per job).
    submitit_logs = list((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(submitit_logs) == 2


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(shell, user_dir):
    shell(OPTUNA, *SHORT, "hydra.sweeper.n_trials=2")
    (sweep,) = (user_dir / "logs" / "train" / "multiruns").iterdir()
    assert len(_jobs(sweep)) == 2
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(results.best_params) == {
        "loss.spectral.weight",
        "model.optimizer.lr",
        "loss.spectral.sigma_scale",
    }
    assert 0.1 <= results.best_params["loss.spectral.weight"] <= 30.0
    values = []
    for job in _jobs(sweep):
        overrides = list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        assert any(o.startswith("model.optimizer.lr=") for o in overrides)
        metrics = (job / "csv" / "metrics.csv").read_text().splitlines()
        column = metrics[0].split(",").index("val/spec_diff")
        values += [float(r.split(",")[column]) for r in metrics[1:] if r.split(",")[column]]
    assert results.best_value == pytest.approx(min(values), abs=1e-6)


@pytest.mark.slow
def test_torchrun_ddp_trains_into_one_run_dir(shell, user_dir):
    result = shell(TORCHRUN, *SHORT)
    assert "run finished" in result.output
    (run,) = _runs(user_dir)
    assert run.name == "torchrun"
    assert (run / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------- user journeys


@pytest.mark.slow
def test_default_run_then_resume_then_evaluate(shell, user_dir):
    trained = shell("python train.py", "trainer.max_epochs=1")
    (first,) = _runs(user_dir)
    assert "run finished at epoch 1, step 32" in trained.output
    assert f"last checkpoint: {first / 'checkpoints' / 'last.ckpt'}" in trained.output
    assert "wandb sync" in trained.output
    spec_diff = float(re.search(r"val/spec_diff \(optimized\): final ([\d.]+)", trained.output)[1])

    resumed = shell("python train.py ckpt_path=last", "trainer.max_epochs=2")
    second = next(r for r in _runs(user_dir) if r != first)
    assert "run finished at epoch 2, step 64" in resumed.output
    assert (second / "resumed_from.txt").read_text().strip() == str(
        (first / "checkpoints" / "last.ckpt").resolve()
    )
    assert (second / "wandb_id.txt").read_text() == (first / "wandb_id.txt").read_text()

    evaluated = shell(
        "python eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt", run=first.name
    )
    values = dict(re.findall(r"^(val/\S+): (\S+)$", evaluated.stdout, flags=re.M))
    assert float(values["val/spec_diff"]) == pytest.approx(spec_diff, abs=1e-4)


@pytest.mark.slow
def test_sweep_gives_one_dir_run_and_name_per_job(shell, user_dir):
    shell("python train.py -m loss.spectral.weight=0,0.1,1 seed=1,2", *SHORT)
    (sweep,) = (user_dir / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == 6
    ids, names = set(), set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        run_id = (job / "wandb_id.txt").read_text().strip()
        (offline_run,) = (job / "wandb").glob("offline-run-*")
        assert offline_run.name.endswith(run_id)
        ids.add(run_id)
        # The resolved config every logger received: the W&B run's name, seed left out.
        names.add(OmegaConf.load(job / "csv" / "hparams.yaml").logger.wandb.name)
    assert len(ids) == 6
    assert names == {
        "loss.spectral.weight=0",
        "loss.spectral.weight=0.1",
        "loss.spectral.weight=1",
    }


@pytest.mark.slow
def test_resumed_sweep_continues_each_job_in_its_own_run(shell, user_dir):
    """The issue's multirun with ckpt_path=last: jobs chained and shared one W&B id."""
    limits = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    sweep = ["-m", "loss.spectral.weight=0,1", *limits]
    shell("python train.py", *sweep, "trainer.max_epochs=1", readme=False)
    shell("python train.py", *sweep, "trainer.max_epochs=2", "ckpt_path=last", readme=False)
    first, second = sorted((user_dir / "logs" / "train" / "multiruns").iterdir())
    ids = set()
    for job in ("0", "1"):
        weight = OmegaConf.load(second / job / ".hydra" / "config.yaml").loss.spectral.weight
        (before,) = [
            j
            for j in first.iterdir()
            if j.is_dir()
            and OmegaConf.load(j / ".hydra" / "config.yaml").loss.spectral.weight == weight
        ]
        resumed = (second / job / "resumed_from.txt").read_text().strip()
        assert resumed == str((before / "checkpoints" / "last.ckpt").resolve())
        run_id = (second / job / "wandb_id.txt").read_text()
        assert run_id == (before / "wandb_id.txt").read_text()
        ids.add(run_id)
        last = torch.load(second / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["global_step"] == 4
    assert len(ids) == 2


@pytest.mark.slow
def test_ddp_sim_trains_on_two_processes(shell, user_dir):
    result = shell("trainer=ddp_sim", *SHORT)
    assert "run finished" in result.output
    assert (_runs(user_dir)[0] / "checkpoints" / "last.ckpt").is_file()


SHORT_RUNS = [
    "logger=many",
    "logger=csv",
    "logger.wandb.offline=false",
    "~callbacks.cluster_log",
    "callbacks=none",
    "callbacks.cluster_log.every_n_steps=50",
    "debug=fdr",
    "debug=limit",
    "debug=overfit",
    "debug=profiler",
    "loss.spectral.frequencies=fixed",
    "loss.spectral.bandwidth=batch",
    "loss.spectral.estimator=exact",
    "loss=kuea",
    "loss=kuea_frobenius",
    "loss.anchor.weight=1",
]


@pytest.mark.slow
@pytest.mark.parametrize("command", SHORT_RUNS)
def test_override_cells_run(shell, user_dir, command):
    if command == "callbacks.cluster_log.every_n_steps=50":
        shell(command, "trainer.max_epochs=2")  # 64 steps: evaluated at 0 and 50
        (run,) = _runs(user_dir)
        assert (run / "clusters" / "step_0000050").is_dir()
        return
    appended = [] if command.startswith("debug=") else SHORT
    shell(command, *appended)
    task = "debug" if command.startswith("debug=") else "train"
    (run,) = _runs(user_dir, task)
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    if command == "debug=fdr":
        assert not (run / "checkpoints").exists() or not checkpoints
    elif command == "callbacks=none":
        assert not checkpoints
    else:
        assert "last.ckpt" in checkpoints


@pytest.mark.slow
def test_compare_two_encoders_on_digits(shell, user_dir):
    shell("python compare.py encoder=tiny ref=efficientnet data=digits")
    (run,) = _runs(user_dir, "compare")
    assert (run / "report" / "index.html").is_file()


def _features(directory: Path, n: int = 300) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    np.save(directory / "x.npy", rng.normal(size=(3, 8))[labels] * 3 + rng.normal(size=(n, 8)))
    torch.save({"emb": torch.randn(n, 6, dtype=torch.float64)}, directory / "y.pt")
    np.save(directory / "labels.npy", labels)
    (directory / "img").mkdir()
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * labels[i], 0, 0)).save(directory / "img" / f"{i}.png")
    (directory / "paths.txt").write_text("".join(f"img/{i}.png\n" for i in range(n)))
    np.save(directory / "y.npy", rng.normal(size=(n, 5)))


@pytest.mark.slow
def test_spec_compare_writes_a_report(shell, user_dir):
    _features(user_dir)
    shell(
        "spec-compare x.npy y.pt --y-key emb --labels labels.npy --images paths.txt --out report/"
    )
    summary = json.loads((user_dir / "report" / "modes.json").read_text())
    assert summary["modes"]


@pytest.mark.slow
def test_torchrun_compare(shell, user_dir):
    _features(user_dir)
    result = shell("torchrun --nproc-per-node 2 -m spec_align.cli x.npy y.npy --rff-dim 1024")
    assert "SPEC-diff" in result.output


WANDB_WORKSPACE = "spec-align wandb-workspace --entity E --project P --dry-run"


def test_wandb_workspace_dry_run_builds_the_cluster_panels(shell):
    result = shell(WANDB_WORKSPACE)
    assert "workspace 'SPEC clusters' for E/P" in result.stdout
    assert "clusters/tracked/\\d+/eigenvalue" in result.stdout  # one chart of all ids
    assert "clusters/mode/0/grid" in result.stdout and "clusters/modes" in result.stdout
    assert "not saved (--dry-run)" in result.stdout


@pytest.mark.slow
def test_make_shards_from_a_folder_and_from_a_csv(shell, user_dir):
    for i in range(12):
        cls = user_dir / "images" / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(cls / f"{i}.png")
    shell("python scripts/make_shards.py --folder images/ --out shards/")
    sizes = json.loads((user_dir / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 12

    rows = [f"images/dog/{i}.png,a red square number {i}" for i in range(0, 12, 2)]
    (user_dir / "pairs.csv").write_text("filepath,caption\n" + "\n".join(rows) + "\n")
    for old in (user_dir / "shards").iterdir():
        old.unlink()
    shell("python scripts/make_shards.py --csv pairs.csv --out shards/")
    sizes = json.loads((user_dir / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 6


# ----------------------------------------------------------------------- the demo's ablation

ABLATION = readme_command("python train.py -m experiment=demo/")
ABLATION_TABLE = "python scripts/ablation_table.py <sweep>"
PROBE_CHECKPOINT = "python scripts/probe_checkpoint.py <run>"


@pytest.mark.slow
def test_ablation_sweep_table_and_independent_probe(shell, user_dir):
    """The README's ablation line (shortened), its table script, and scikit-learn's probes of
    a job's checkpoint against the values the job logged."""
    shell(ABLATION, *SHORT)
    (sweep,) = (user_dir / "logs" / "train" / "multiruns").iterdir()
    variants = re.search(r"experiment=(\S+)", ABLATION)[1].split(",")

    table = shell(ABLATION_TABLE.replace("<sweep>", str(sweep)), readme=False).stdout
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.search(r"experiment=([\w/]+)", row)[1] for row in rows] == variants
    assert all(row.split(" | ")[1] == "3" for row in rows), table  # seeds per row
    assert all("±" in row for row in rows), table  # mean ± spread in every cell

    job = sweep / "3"  # demo/spec_align, seed 0: the default run
    probes = shell(PROBE_CHECKPOINT.replace("<run>", str(job)), readme=False).stdout
    lines = {line.split()[0]: line.split()[1:] for line in probes.splitlines()[2:]}
    assert set(lines) >= {"texture", "shape", "colour", "side", "label"}, probes
    for name in ("texture", "shape", "colour", "side"):
        knn, logged_knn, linear, logged_linear = map(float, lines[name])
        assert knn == pytest.approx(logged_knn, abs=1e-3), probes  # the same vote, 3 decimals
        assert linear == pytest.approx(logged_linear, abs=1 / 64 + 1e-3), probes  # 1 row of 64
