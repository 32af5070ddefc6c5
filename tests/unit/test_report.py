"""The report directory: files exist, reference each other, and agree with the result."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from spec_align import compare
from spec_align.explain import label_purity, mode_stability, write_report
from spec_align.explain.stability import mode_members
from tests.helpers import check_report, planted_differential, planted_groups


def test_report_files_reference_each_other(tmp_path):
    a, b, groups = planted_groups()
    result = compare(a, b, sigma_x=3.0, sigma_y=3.0, top_k=2, names=("A", "B"))
    images = []
    for i, g in enumerate(groups):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (16, 12), [(200, 0, 0), (0, 200, 0), (0, 0, 200)][g]).save(path)
        images.append(str(path))
    out = tmp_path / "report"
    index = write_report(
        result,
        out,
        samples_per_mode=6,
        labels=groups.tolist(),
        image_paths=images,
        class_names=["zero", "one", "two"],
        keys=[f"s{i}" for i in range(len(groups))],
    )
    assert index == out / "index.html"
    summary = check_report(out)
    assert summary["num_samples"] == 120 and summary["names"] == ["A", "B"]
    eigenvalues = [m["eigenvalue"] for m in summary["modes"]]
    assert eigenvalues == pytest.approx(result.mode_eigenvalues.tolist(), abs=0)
    for j, mode in enumerate(summary["modes"]):
        assert mode["direction"] == result.mode_direction(j)
        assert [s["index"] for s in mode["top"]] == result.top_samples(j, 6).tolist()
        assert [s["key"] for s in mode["top"]] == [f"s{s['index']}" for s in mode["top"]]
        assert Image.open(out / mode["figure"]).size[0] == 6 * 128
    # A separates 0 from 1 (a contrast mode: one group at each pole), B forms 0 + 1.
    first = summary["modes"][0]
    assert first["contrast"] and first["label_purity"] == 1.0
    poles = {first["majority_label"], label_purity([s["label"] for s in first["bottom"]])[0]}
    assert poles == {0, 1}
    assert (out / first["figure_bottom"]).is_file()
    negative = summary["modes"][summary["num_positive"]]
    assert negative["sign"] == "negative" and {s["label"] for s in negative["top"]} <= {0, 1}


def test_text_data_gets_text_lists(tmp_path):
    a, b, groups = planted_groups(n=60)
    texts = [f"caption of sample {i}\nsecond line" for i in range(60)]
    result = compare(torch.from_numpy(a), torch.from_numpy(b), kernel="cosine", top_k=1)
    write_report(result, tmp_path, samples_per_mode=5, texts=texts)
    summary = check_report(tmp_path)
    for mode in summary["modes"]:
        assert mode["figure"].endswith(".txt")
        lines = (tmp_path / mode["figure"]).read_text().splitlines()
        assert len(lines) == 5 and lines[0].startswith("caption of sample")
        assert "label_purity" not in mode
    assert not list(tmp_path.glob("modes/*.png"))


def test_html_escapes_names(tmp_path):
    a, b, _ = planted_groups(n=30)
    result = compare(a, b, kernel="cosine", top_k=1, names=("<b>x</b>", "y&z"))
    write_report(result, tmp_path, samples_per_mode=3)
    page = (tmp_path / "index.html").read_text()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    check_report(tmp_path)


def test_overview_maps_attributes_and_the_noise_floor(tmp_path):
    x, y, only_x, only_y = planted_differential()
    result = compare(x, y, top_k=3, names=("enc", "ref"))
    result.stability = mode_stability(x, y, result, resamples=6)
    n = len(only_x)
    textures = ["stripes" if g else "plain" for g in only_x]
    attributes = [
        {"texture": t, "side": "left" if s else "right", "cx": 0.123456789}
        for t, s in zip(textures, only_y, strict=True)
    ]
    attributes[5] = None  # a sample without metadata
    texts = [f"caption {i}" for i in range(n)]
    labels = (np.arange(n) % 3).tolist()
    write_report(
        result,
        tmp_path,
        samples_per_mode=4,
        labels=labels,
        texts=texts,
        attributes=attributes,
        embeddings=(x, y),
        provenance={"ref": "EfficientNetEncoder (pretrained weights)"},
    )
    summary = check_report(tmp_path)
    assert summary["maps_figure"] == "maps.png"
    assert Image.open(tmp_path / "maps.png").size[0] == 1000  # one 5-inch panel per embedding
    assert summary["stability"]["noise_floor"] == list(result.stability.noise_floor)
    positive, negative = summary["modes"][0], summary["modes"][summary["num_positive"]]
    # The planted groups win over the (non-enriched) label: texture for x, side for y.
    assert positive["attribute"]["field"] == "texture"
    # Every member with metadata has the one texture (sample 5 has none: counted as other).
    assert positive["attribute"]["share"] > 0.95 and positive["attribute"]["enrichment"] > 0.9
    assert positive["description"].startswith("mostly texture=")
    assert negative["attribute"]["field"] == "side" and negative["description"]
    for mode in summary["modes"]:
        members = mode_members(result.scores[:, mode["mode"]])
        assert mode["members"] == len(members) and mode["share"] == len(members) / n
        assert mode["stability"]["reappearance"] == result.stability.reappearance[mode["mode"]]
    assert positive["stability"]["above_noise_floor"] and positive["stability"]["stable"]
    assert [s["text"] for s in positive["top"]] == [texts[s["index"]] for s in positive["top"]]

    page = (tmp_path / "index.html").read_text()
    overview = page.split('id="overview-table"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="(positive|negative)( below-floor)?">', overview)
    assert len(rows) == result.num_modes
    below = [not m["stability"]["above_noise_floor"] for m in summary["modes"]]
    assert [bool(flag) for _, flag in rows] == below and any(below) and not all(below)
    assert page.count("below noise floor</span>") == 2 * sum(below)  # overview and card
    assert "enc groups samples with mostly texture=" in page
    assert f"<td>{positive['top'][0]['text']}</td>" in page  # captions in the cards
    assert "cx=0.1235" in page and "0.123456789" not in page
    # Sensible numbers: no float shown with more than 6 significant digits (the sort keys
    # in data-value attributes keep theirs).
    shown = re.sub(r'data-value="[^"]*"', "", page.split("<script>", 1)[0])
    assert not re.search(r"\d\.\d{7,}", shown)
    for anchor in ("overview", "maps", "spectrum", "settings", "modes-positive", "reading"):
        assert f'href="#{anchor}"' in page and f'id="{anchor}"' in page
