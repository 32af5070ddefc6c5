"""`spec-compare` on precomputed features: planted clusters, safe loading, clear errors."""

import json
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
    np.save(tmp_path / "a.npy", a.astype(np.float32))
    torch.save({"emb": torch.from_numpy(b)}, tmp_path / "b.pt")
    np.save(tmp_path / "labels.npy", groups)
    (tmp_path / "texts.txt").write_text("".join(f"text {i}\n" for i in range(150)))
    return tmp_path


def test_cli_recovers_planted_clusters(features, capsys):
    out = features / "report"
    status = main(
        [
            str(features / "a.npy"),
            str(features / "b.pt"),
            "--b-key",
            "emb",
            "--labels",
            str(features / "labels.npy"),
            "--texts",
            str(features / "texts.txt"),
            "--sigma-a",
            "3",
            "--sigma-b",
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
    np.savez(features / "both.npz", a=a, b=b)
    out = features / "r"
    main(
        [
            str(features / "both.npz"),
            str(features / "both.npz"),
            "--a-key",
            "a",
            "--b-key",
            "b",
            "--rff-dim",
            "64",
            "--top-k",
            "3",
            "--out",
            str(out),
        ]
    )
    summary = json.loads((out / "modes.json").read_text())
    expected = compare_embeddings(a, b, rff_dim=64, top_k=3)
    assert summary["rff_dim"] == 64 and summary["names"] == ["a", "b"]
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
    a = str(features / "a.npy")
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
    assert "has no array 'nope'" in _error(capsys, [a, str(features / "b.pt"), "--b-key", "nope"])
    np.save(features / "labels_short.npy", np.zeros(3, dtype=int))
    message = _error(capsys, [a, a, "--labels", str(features / "labels_short.npy"), "--out", "x"])
    assert "3 entries but the embeddings have 150 rows" in message
    (features / "x.csv").write_text("1,2\n")
    assert "unknown embedding format '.csv'" in _error(capsys, [a, str(features / "x.csv")])


def test_load_embedding_keeps_npy_memory_mapped(features):
    assert isinstance(load_embedding(features / "a.npy"), np.memmap)


@pytest.mark.slow
def test_module_entry_point_runs(features):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "spec_align.cli",
            str(features / "a.npy"),
            str(features / "a.npy"),
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
