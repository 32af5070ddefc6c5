"""`spec-compare` on precomputed features: planted clusters, safe loading, clear errors."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from spec_align.cli import main
from spec_align.explain import compare_embeddings, load_embedding
from tests.helpers import check_report, planted_groups

# The planted data and the report checker live with the report's unit tests.


@pytest.fixture
def features(tmp_path):
    a, b, groups = planted_groups(n=150)
    np.save(tmp_path / "x.npy", a.astype(np.float32))
    torch.save({"emb": torch.from_numpy(b)}, tmp_path / "y.pt")
    np.save(tmp_path / "labels.npy", groups)
    (tmp_path / "texts.txt").write_text("".join(f"text {i}\n" for i in range(150)))
    return tmp_path


def test_cli_recovers_planted_clusters(features, capsys):
    out = features / "report"
    status = main(
        [
            str(features / "x.npy"),
            str(features / "y.pt"),
            "--y-key",
            "emb",
            "--labels",
            str(features / "labels.npy"),
            "--texts",
            str(features / "texts.txt"),
            "--sigma-x",
            "3",
            "--sigma-y",
            "3",
            "--top-k",
            "2",
            "--samples-per-mode",
            "10",
            "--names",
            "A",
            "B",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    assert "report:" in capsys.readouterr().out
    summary = check_report(out)
    modes = summary["modes"]
    assert summary["names"] == ["A", "B"] and summary["num_positive"] == 2
    # The default stability analysis: the planted modes reappear in every half.
    assert summary["stability"]["resamples"] == 10
    assert modes[0]["stability"]["reappearance"] == 1.0 and modes[0]["stability"]["stable"]
    # A - B: A separates group 0 from group 1 (contrast mode), both poles pure.
    assert modes[0]["direction"] == "A - B" and modes[0]["label_purity"] == 1.0
    assert modes[0]["majority_label"] in (0, 1) and modes[0]["contrast"]
    # B - A: the strongest negative mode is the merged group {0, 1}; group 2 is in neither.
    merged = modes[2]
    assert merged["direction"] == "B - A" and merged["eigenvalue"] < -0.1
    assert {s["label"] for s in merged["top"]} == {0, 1}
    assert abs(merged["eigenvalue"]) > 2 * abs(modes[1]["eigenvalue"])


def test_cli_rff_and_npz_match_library(features):
    a, b, _ = planted_groups(n=150)
    np.savez(features / "both.npz", x=a, y=b)
    out = features / "r"
    main(
        [
            str(features / "both.npz"),
            str(features / "both.npz"),
            "--x-key",
            "x",
            "--y-key",
            "y",
            "--rff-dim",
            "64",
            "--top-k",
            "3",
            "--stability",
            "0",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "modes.json").read_text())
    assert summary["stability"] is None and "stability" not in summary["modes"][0]
    expected = compare_embeddings(a, b, rff_dim=64, top_k=3)
    assert summary["rff_dim"] == 64 and summary["names"] == ["x", "y"]
    assert [m["eigenvalue"] for m in summary["modes"]] == pytest.approx(
        expected.mode_eigenvalues.tolist(), rel=1e-9
    )


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# torch warns about the pickle protocol before its weights-only loader refuses the file.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_cli_errors_are_clear(features, capsys):
    a = str(features / "x.npy")
    np.save(features / "short.npy", np.zeros((10, 3)))
    assert "150 rows but" in _error(capsys, [a, str(features / "short.npy")])

    bad = np.load(a)
    bad[7, 2] = np.nan
    np.save(features / "nan.npy", bad)
    assert "NaN or inf (first at row 7)" in _error(capsys, [a, str(features / "nan.npy")])

    with open(features / "evil.pkl", "wb") as f:
        pickle.dump({"x": np.zeros((3, 3))}, f)
    assert "pickle files are not loaded" in _error(capsys, [a, str(features / "evil.pkl")])
    # A pickle behind an allowed suffix is refused by the safe loaders too.
    for suffix in (".npy", ".pt"):
        (features / f"evil{suffix}").write_bytes((features / "evil.pkl").read_bytes())
        message = _error(capsys, [a, str(features / f"evil{suffix}")])
        assert "pickled objects are refused" in message

    np.save(features / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "pickled objects are refused" in _error(capsys, [a, str(features / "obj.npy")])
    assert "no such file" in _error(capsys, [a, str(features / "missing.npy")])
    assert "has no array 'nope'" in _error(capsys, [a, str(features / "y.pt"), "--y-key", "nope"])
    np.save(features / "labels_short.npy", np.zeros(3, dtype=int))
    message = _error(capsys, [a, a, "--labels", str(features / "labels_short.npy"), "--out", "x"])
    assert "3 entries but the embeddings have 150 rows" in message
    (features / "x.csv").write_text("1,2\n")
    assert "unknown embedding format '.csv'" in _error(capsys, [a, str(features / "x.csv")])


def test_load_embedding_keeps_npy_memory_mapped(features):
    assert isinstance(load_embedding(features / "x.npy"), np.memmap)


@pytest.mark.slow
def test_module_entry_point_runs(features):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "spec_align.cli",
            str(features / "x.npy"),
            str(features / "x.npy"),
            "--kernel",
            "cosine",
            "--top-k",
            "1",
            "--out",
            str(features / "same"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # Identical embeddings: no eigenvalue beyond rounding, an empty but valid report.
    assert completed.returncode == 0, completed.stderr
    assert json.loads((features / "same" / "modes.json").read_text())["modes"] == []


# the report directory: checked first, never half-written, never silently overwritten
def _argv(features, out, *extra):
    return [
        str(features / "x.npy"),
        str(features / "y.pt"),
        "--y-key",
        "emb",
        "--texts",
        str(features / "texts.txt"),
        "--top-k",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def _no_compute(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the comparison ran before the report directory was checked")

    monkeypatch.setattr("spec_align.explain.comparison.compare_embeddings", fail)


def test_cli_checks_the_report_dir_before_computing(features, capsys, monkeypatch):
    _no_compute(monkeypatch)
    message = _error(capsys, _argv(features, features / "x.npy" / "report"))
    assert "cannot be created" in message and "is not a directory" in message
    (features / "old").mkdir()
    (features / "old" / "index.html").write_text("<html></html>")
    message = _error(capsys, _argv(features, features / "old"))
    assert "is not empty" in message and "pass --overwrite" in message
    (features / "notes").mkdir()
    (features / "notes" / "todo.txt").write_text("mine")
    message = _error(capsys, _argv(features, features / "notes", "--overwrite"))
    assert "holds no SPEC report" in message
    assert (features / "notes" / "todo.txt").read_text() == "mine"

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("spec_align.explain.report_dir.tempfile.mkdtemp", denied)
    message = _error(capsys, _argv(features, features / "new" / "report"))
    assert "cannot be written (Permission denied" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_cli_refuses_a_read_only_parent_before_computing(features, capsys, monkeypatch):
    _no_compute(monkeypatch)
    locked = features / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "cannot be written" in _error(capsys, _argv(features, locked / "report"))
    finally:
        locked.chmod(0o700)


def test_cli_prints_the_result_when_the_report_cannot_be_written(features, capsys, monkeypatch):
    def full_disk(result, out_dir, **kwargs):
        (out_dir / "modes.json").write_text("{")  # a partial report, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("spec_align.explain.report.write_report", full_disk)
    out = features / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(features, out))
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "SPEC-diff" in captured.out  # printed before writing
    assert "No space left on device" in captured.err and "result above is complete" in captured.err
    assert not out.exists()
    assert [p.name for p in features.iterdir() if p.name.startswith(".")] == []


def test_cli_overwrite_replaces_the_whole_report(features, capsys, monkeypatch):
    out = features / "report"
    assert main(_argv(features, out)) == 0
    stale = out / "modes" / "mode_99.txt"
    stale.write_text("from an older run with more modes")
    first = (out / "modes.json").read_text()

    assert "pass --overwrite" in _error(capsys, _argv(features, out, "--kernel", "cosine"))
    assert stale.exists() and (out / "modes.json").read_text() == first

    def broken(result, out_dir, **kwargs):
        (out_dir / "modes.json").write_text("{")
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr("spec_align.explain.report.write_report", broken)
        with pytest.raises(SystemExit):
            main(_argv(features, out, "--kernel", "cosine", "--overwrite"))
    assert stale.exists() and (out / "modes.json").read_text() == first  # old report intact

    assert main(_argv(features, out, "--kernel", "cosine", "--overwrite")) == 0
    assert not stale.exists()
    summary = check_report(out)
    assert summary["kernel"] == "cosine"
    assert sorted(p.name for p in (out / "modes").iterdir()) == [
        f"mode_{m['mode']:02d}.txt" for m in summary["modes"]
    ]
    assert [p.name for p in features.iterdir() if p.name.startswith(".")] == []
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_cli_shows_progress_unless_told_not_to(features, capsys):
    assert main(_argv(features, features / "r1", "--rff-dim", "8")) == 0
    err = capsys.readouterr().err
    assert "SPEC pass 1/2 (covariance): 100%" in err and "150/150" in err
    assert "SPEC pass 2/2 (scores): 100%" in err
    assert main(_argv(features, features / "r2", "--rff-dim", "8", "--no-progress")) == 0
    assert "SPEC pass" not in capsys.readouterr().err
