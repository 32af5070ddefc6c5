"""The README's offline demo: digits pixels vs pretrained EfficientNet-Lite0 features."""

import sys

from spec_align import demo


def test_demo_prints_both_directions_with_digit_makeup(monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", ["demo", "--limit", "150", "--image-size", "32", "--top-k", "2"]
    )
    demo.main()
    out = capsys.readouterr().out
    assert "150 digits: pixels (64-d) and EfficientNet-Lite0 features (1280-d)" in out
    assert "SPEC pixels vs efficientnet: n=150" in out
    assert out.count("[pixels - efficientnet] mode") == 2
    assert out.count("[efficientnet - pixels] mode") == 2
    assert "% digit" in out
