"""The main job (`python -m spiffy_triton.demo`, README's first command) on a short run."""

from __future__ import annotations

import pytest

from spiffy_triton import demo


def test_demo_decodes_vanilla_spiffy_and_auto_identically(capsys):
    assert demo.main(["--prompts", "2", "--gen-length", "32", "--drafts", "3"]) == 0
    out = capsys.readouterr().out
    assert "auto: cost probe and warm-up" in out
    for name in ("vanilla:", "spiffy :", "auto   :"):
        assert out.count(name) == 2
    assert out.count("\nidentical: True") == 2  # per prompt
    assert "all outputs identical: True (verification mode exact: True)" in out
    assert "total on cpu: vanilla NFE 64" in out and "auto NFE" in out
    # the auto row says what it verified and why, once per prompt (issue #21)
    assert out.count("auto verified ") == 2 and "max_drafts=None" in out


def test_demo_with_auto_as_the_spiffy_row(capsys):
    argv = ["--prompts", "1", "--gen-length", "32", "--max-drafts", "auto", "--cache", "none"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "auto   :" not in out and "auto: cost probe" not in out
    assert "all outputs identical: True" in out


@pytest.mark.parametrize("bad", ["0", "x", "-2"])
def test_demo_rejects_bad_max_drafts(bad, capsys):
    with pytest.raises(SystemExit):
        demo.main(["--max-drafts", bad])
    assert "--max-drafts must be 'all', 'auto' or an int >= 1" in capsys.readouterr().err
