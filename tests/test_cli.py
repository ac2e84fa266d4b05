"""The `spiffy-triton` command line: --help of every subcommand, calibrate -> generate -> draw
on a small random-weight checkpoint, bench delegation, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from utils import save_char_llada

from spiffy_triton import cli
from spiffy_triton.calibration import load_graph, stored_counts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    sizes = dict(n_heads=4, n_kv_heads=2, n_layers=2, max_sequence_length=128)
    return save_char_llada(tmp_path_factory.mktemp("model"), 11, **sizes)


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `spiffy-triton argv`."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize(
    "argv",
    [[], ["calibrate"], ["generate"], ["bench"], ["graph"], ["graph", "draw"]],
    ids=["top", "calibrate", "generate", "bench", "graph", "draw"],
)
def test_every_subcommand_has_help(capsys, argv):
    status, out, _ = run(capsys, *argv, "--help")
    assert status == 0
    assert out.startswith("usage: spiffy-triton")


def test_calibrate_generate_and_draw_end_to_end(capsys, tmp_path, model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"prompt": p}) for p in ["Q: 3+4=?\nA: ", "Q: 9*2=?\nA: "])
    )
    graph_path, png = tmp_path / "graph.json", tmp_path / "graph.png"
    common = ["--model", model_dir, "--gen-length", 16, "--block-length", 8, "--backend", "torch"]
    status, out, err = run(
        capsys,
        "calibrate",
        "--prompts",
        prompts,
        "--budget",
        4,
        "--out",
        graph_path,
        "--draw",
        png,
        *common,
    )
    assert status == 0, err
    assert "calibration traces" in err  # the progress bar
    assert "2 prompts, 32 steps" in out
    graph = load_graph(graph_path)
    assert len(graph) == 4 and graph.name == "calibrated-steps-4"
    assert len(stored_counts(graph_path)) == 4
    assert png.read_bytes()[:8] == PNG_MAGIC

    status, vanilla_out, _ = run(
        capsys, "generate", "--prompt", "Q: 3+4=?\\nA: ", "--json", *common
    )
    assert status == 0
    status, spiffy_out, _ = run(
        capsys,
        "generate",
        "--prompt",
        "Q: 3+4=?\\nA: ",
        "--graph",
        graph_path,
        "--max-drafts",
        "all",
        "--json",
        *common,
    )
    assert status == 0
    vanilla, spiffy = json.loads(vanilla_out), json.loads(spiffy_out)
    assert spiffy["completion"] == vanilla["completion"]
    assert spiffy["nfe"] <= vanilla["nfe"] == 16
    assert spiffy["graph"] == "calibrated-steps-4"

    redrawn = tmp_path / "again.png"
    status, out, _ = run(capsys, "graph", "draw", graph_path, "--out", redrawn)
    assert status == 0 and redrawn.read_bytes()[:8] == PNG_MAGIC


def test_calibrate_per_phase_and_generate_with_it(capsys, tmp_path, model_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q: 3+4=?\\nA: \n")
    graph_path = tmp_path / "phased.json"
    common = ["--model", model_dir, "--gen-length", 8, "--block-length", 8, "--backend", "torch"]
    status, _, err = run(
        capsys,
        "calibrate",
        "--prompts",
        prompts,
        "--budget",
        2,
        "--phases",
        2,
        "--out",
        graph_path,
        "--no-progress",
        *common,
    )
    assert status == 0, err
    assert "calibration traces" not in err
    status, out, err = run(
        capsys,
        "generate",
        "--prompt",
        "Q: 1+1=?\\nA: ",
        "--graph",
        graph_path,
        "--max-drafts",
        "2",
        *common,
    )
    assert status == 0, err
    assert "NFE" in err


def test_draw_default_graph(capsys, tmp_path):
    png = tmp_path / "d.png"
    status, out, _ = run(capsys, "graph", "draw", "--default", 6, "--out", png)
    assert status == 0 and png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "content, message",
    [
        ("{oops", "not valid JSON"),
        ('{"format": "spiffy-draft-graph", "version": 1, "nodes": []}', "at least one node"),
        ('{"format": "spiffy-draft-graph", "version": 1, "nodes": [[[1, 0]]]}', ">= 1"),
        (
            '{"format": "spiffy-draft-graph", "version": 1, "nodes": [[[1, 1]], [[1, 1]]]}',
            "same formula",
        ),
        (
            '{"format": "spiffy-draft-graph", "version": 1, "nodes": [[[1, 1]], [[1, 1], [2, 1]]],'
            ' "parents": [[1], [0]]}',
            "do not match",
        ),
    ],
    ids=["syntax", "empty", "rank0", "duplicate", "cycle"],
)
def test_invalid_graph_files_give_clear_errors(capsys, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    status, _, err = run(capsys, "graph", "draw", bad, "--out", tmp_path / "x.png")
    assert status == 2
    assert err.startswith("spiffy-triton: error:") and message in err
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--graph", bad)
    assert status == 2 and message in err


def test_missing_graph_file(capsys, tmp_path):
    status, _, err = run(
        capsys, "graph", "draw", tmp_path / "none.json", "--out", tmp_path / "x.png"
    )
    assert status == 2 and "cannot read draft graph file" in err


def test_calibrate_bad_input(capsys, tmp_path, model_dir):
    out = tmp_path / "g.json"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    status, _, err = run(capsys, "calibrate", "--prompts", empty, "--budget", 3, "--out", out)
    assert status == 2 and "no prompts in" in err
    status, _, err = run(
        capsys, "calibrate", "--prompts", tmp_path / "absent.txt", "--budget", 3, "--out", out
    )
    assert status == 2 and "cannot read" in err
    bad_json = tmp_path / "p.json"
    bad_json.write_text('{"prompt": "not a list"}')
    status, _, err = run(capsys, "calibrate", "--prompts", bad_json, "--budget", 3, "--out", out)
    assert status == 2 and "JSON list of prompts" in err
    for budget in (0, -2):
        status, _, err = run(
            capsys, "calibrate", "--builtin", "arith", "--budget", budget, "--out", out
        )
        assert status == 2 and "--budget must be >= 1" in err
    status, _, err = run(capsys, "calibrate", "--builtin", "arith", "--budget", 3)
    assert status == 2 and "--out" in err  # argparse: required option
    status, _, err = run(
        capsys,
        "calibrate",
        "--builtin",
        "arith",
        "--budget",
        3,
        "--out",
        out,
        "--model",
        tmp_path / "nope",
    )
    assert status == 2 and "--model" in err
    assert not out.exists()


def test_generate_bad_input(capsys):
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--budget", 3, "--max-drafts", "x")
    assert status == 2 and "expected 'auto', 'all' or an integer >= 1" in err
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--max-drafts", 2)
    assert status == 2 and "--max-drafts needs a draft graph" in err
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--budget", 0)
    assert status == 2 and "budget" in err


def test_generate_says_what_auto_did_and_keeps_the_probe_on_disk(
    capsys, tmp_path, model_dir, monkeypatch
):
    """issue #21: with max_drafts auto the command says how many drafts it verified and why,
    and a second call (a new process: memory cache cleared) reads the probe from the disk
    cache instead of measuring again."""
    from spiffy_triton.decoding import budget, methods

    probes = []
    real_probe = methods.probe_verify_cost
    monkeypatch.setattr(
        methods, "probe_verify_cost", lambda *a, **k: probes.append(1) or real_probe(*a, **k)
    )
    monkeypatch.setenv("SPIFFY_TRITON_COST_CACHE", str(tmp_path / "cache"))
    common = ["--model", model_dir, "--gen-length", 16, "--block-length", 8, "--backend", "torch"]
    for _call in range(2):
        budget.clear_cost_cache()
        status, _, err = run(capsys, "generate", "--prompt", "Q: 1+2=?", "--budget", 4, *common)
        assert status == 0
        line = next(x for x in err.splitlines() if x.startswith("[auto] "))
        assert "auto verified" in line and "root-only forward" in line
        assert "--max-drafts all" in line
    assert len(probes) == 1 and (tmp_path / "cache" / "verify_cost_models.json").is_file()
    status, out, _ = run(capsys, "generate", "--prompt", "Q", "--budget", 4, "--json", *common)
    decision = json.loads(out)["draft_budget"]["decision"]
    assert decision["drafts_verified"] == json.loads(out)["drafts_verified"]
    budget.clear_cost_cache()


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["x\ny", {"prompt": "z"}]))
    assert cli.read_prompts(tmp_path / "a.json") == ["x\ny", "z"]
    (tmp_path / "b.jsonl").write_text('"x"\n\n{"prompt": "y"}\n')
    assert cli.read_prompts(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "c.txt").write_text("Q: 1+1=?\\nA: \nsecond\n")
    assert cli.read_prompts(tmp_path / "c.txt") == ["Q: 1+1=?\nA: ", "second"]
    (tmp_path / "d.jsonl").write_text("[1, 2]\n")
    with pytest.raises(cli.CLIError, match="line 1 must be a string"):
        cli.read_prompts(tmp_path / "d.jsonl")


def test_bench_runs_run_all_from_the_repository(capsys, monkeypatch):
    calls = []

    def fake_call(command, cwd):
        calls.append((command, cwd))
        return 0

    monkeypatch.setattr(subprocess, "call", fake_call)
    status, _, _ = run(capsys, "bench", "--quick", "--only", "calibration")
    assert status == 0
    ((command, cwd),) = calls
    assert command == [
        sys.executable,
        "-m",
        "benchmarks.run_all",
        "--quick",
        "--only",
        "calibration",
    ]
    assert (cwd / "benchmarks" / "run_all.py").is_file()


def test_bench_help_lists_run_all_options_and_study_times(capsys):
    status, out, _ = run(capsys, "bench", "--help")
    assert status == 0 and out.startswith("usage: spiffy-triton bench")
    assert "--out-dir" in out and "--quick" in out and "timeout" in out
    assert "calibration" in out and "user's cache" in out


def test_bench_outside_a_checkout_says_where_benchmarks_are(capsys, monkeypatch):
    monkeypatch.setattr(cli, "repository_root", lambda: None)
    status, _, err = run(capsys, "bench")
    assert status == 2 and "benchmarks ship with the repository" in err


def test_generate_draws_nothing_without_a_model(capsys, tmp_path):
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--model", tmp_path / "none")
    assert status == 2 and "--model" in err


def test_console_entry_point_in_setup_py():
    setup_py = (Path(cli.__file__).resolve().parent.parent / "setup.py").read_text()
    assert "spiffy-triton=spiffy_triton.cli:main" in setup_py


@pytest.fixture(scope="module")
def sdar_dir(tmp_path_factory):
    """A random-weight SDAR checkpoint over the bundled character tokenizer."""
    from benchmarks.simsd import smoke_model
    from spiffy_triton.models import save_checkpoint

    model = smoke_model(seed=5, layers=1)
    path = tmp_path_factory.mktemp("sdar")
    save_checkpoint(model, path)
    model.tokenizer.save(path / "tokenizer.json")
    return path


def test_generate_method_simsd(capsys, sdar_dir, monkeypatch):
    from spiffy_triton.models import CharTokenizer, qwen

    # The SDAR loader reads Hugging Face tokenizers; this checkpoint has the character one.
    monkeypatch.setattr(qwen, "load_hf_tokenizer", CharTokenizer.load)
    common = ["--model", sdar_dir, "--gen-length", 8, "--block-length", 4, "--backend", "torch"]
    outputs = {}
    for method in ("vanilla", "simsd", "simsd-exact"):
        status, out, _ = run(capsys, "generate", "--prompt", "Q: 1+2=?", "--method", method,
                             "--json", *common)  # fmt: skip
        assert status == 0
        outputs[method] = json.loads(out)
    assert outputs["simsd"]["method"] == "simsd" and outputs["simsd"]["draft"] == "self, 1 step"
    assert outputs["simsd-exact"]["completion"] == outputs["vanilla"]["completion"]
    for method in ("simsd", "simsd-exact"):  # every target forward counts (issue #21)
        o = outputs[method]
        assert o["draft_is_target"] and o["draft_forwards"] > 0
        assert o["nfe"] == o["verify_forwards"] + o["draft_forwards"]
        assert o["tokens_per_forward"] == pytest.approx(8 / o["nfe"])
    status, _, err = run(capsys, "generate", "--prompt", "Q: 1+2=?", "--method", "simsd", *common)
    o = outputs["simsd"]
    assert status == 0 and (
        f"NFE {o['nfe']} (target forwards: {o['verify_forwards']} verify + "
        f"{o['draft_forwards']} drafting)" in err
    )
    assert f"tokens/NFE {8 / o['nfe']:.3f}" in err
    status, out, _ = run(capsys, "generate", "--prompt", "Q", "--method", "simsd", "--draft",
                         "previous", "--json", *common)  # fmt: skip
    assert status == 0 and json.loads(out)["draft"] == "previous forward"
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--draft", "self", *common)
    assert status == 2 and "--draft needs --method simsd" in err
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--method", "simsd", "--draft",
                         sdar_dir / "nope", *common)  # fmt: skip
    assert status == 2 and "--draft:" in err
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--method", "simsd", "--model",
                         "tiny", "--gen-length", 8, "--block-length", 4)  # fmt: skip
    assert status == 2 and "method='simsd'" in err


# ------------------------------------------------------------- issue #21: rough edges


def test_help_shows_defaults_models_and_version(capsys):
    from spiffy_triton import __version__
    from spiffy_triton.models import BUNDLED_MODELS

    _, out, _ = run(capsys, "generate", "--help")
    flat = " ".join(out.split())
    for shown in ("tokens to generate (default: 64)", "(default: auto)", "(default: none)"):
        assert shown in flat
    assert all(f"'{name}'" in flat for name in BUNDLED_MODELS)
    assert "LLaDA, Dream or SDAR" in flat and "--factor" in flat
    assert "1.0 commits only certain positions" in flat
    _, out, _ = run(capsys, "calibrate", "--help")
    assert "prompts to use (default: 30)" in " ".join(out.split())
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.strip() == f"spiffy-triton {__version__}"


def test_generate_factor_and_threshold_one(capsys, model_dir):
    common = ["--model", model_dir, "--gen-length", 16, "--block-length", 8, "--backend", "torch"]
    results = {}
    for rule in (["--factor", "4.0"], ["--threshold", "1.0"], []):
        status, out, err = run(capsys, "generate", "--prompt", "Q: 1+2=?", "--json", *rule, *common)
        assert status == 0, err
        results[tuple(rule)] = json.loads(out)
    # factor 4 commits several tokens in some step of this random model; threshold 1.0 one
    assert results[("--factor", "4.0")]["nfe"] < 16
    assert results[("--threshold", "1.0")]["nfe"] == 16
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--factor", 0, *common)
    assert status == 2 and "factor must be > 0" in err
    status, _, err = run(capsys, "generate", "--prompt", "Q", "--threshold", 1.5, *common)
    assert status == 2 and "threshold must be a number in [0, 1]" in err
    status, _, err = run(
        capsys, "generate", "--prompt", "Q", "--threshold", 0.9, "--factor", 1, *common
    )
    assert status == 2 and "not allowed with argument" in err


def test_prompt_file_reads_like_calibrate_prompt_files(capsys, tmp_path, model_dir):
    common = ["--model", model_dir, "--gen-length", 8, "--block-length", 8, "--backend", "torch"]
    cases = {
        "p.txt": ("Q: 1+2=?\\nA: \n", "Q: 1+2=?\nA: "),  # escape, final newline dropped
        "crlf.txt": ("two\nlines\r\n", "two\nlines"),  # the file's own line break kept
        "p.jsonl": ('{"prompt": "Q: 3\\nA: "}\n', "Q: 3\nA: "),
        "p.json": ('["only one"]', "only one"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content.encode())
        status, out, err = run(capsys, "generate", "--prompt-file", path, "--json", *common)
        assert status == 0, err
        assert json.loads(out)["prompt"] == expected, name
    two = tmp_path / "two.json"
    two.write_text('["a", "b"]')
    status, _, err = run(capsys, "generate", "--prompt-file", two, *common)
    assert status == 2 and "holds 2 prompts; give one" in err
    status, _, err = run(capsys, "generate", "--prompt-file", tmp_path / "absent.txt", *common)
    assert status == 2 and "--prompt-file: cannot read" in err


def test_characters_the_tokenizer_cannot_encode_are_reported(capsys, tmp_path, model_dir):
    from spiffy_triton.models import CharTokenizer

    common = ["--model", model_dir, "--gen-length", 8, "--block-length", 8, "--backend", "torch"]
    status, _, err = run(capsys, "generate", "--prompt", "Q: 3€+é=?", *common)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "--prompt: text has characters the tokenizer cannot encode" in err
    assert "'€' (U+20AC), 'é' (U+00E9)" in err
    prompts = tmp_path / "p.txt"
    prompts.write_text("fine\nnaïve\n")
    status, _, err = run(
        capsys, "calibrate", "--prompts", prompts, "--budget", 2, "--out", tmp_path / "g.json",
        *common,
    )  # fmt: skip
    assert status == 2 and "prompt 1" in err and "'ï'" in err
    tok = CharTokenizer()
    assert tok.unknown_characters("aéb€é") == ["é", "€"]
    assert tok.encode("aé") == [tok.piece_to_id["a"], tok.unk_token_id]  # lenient by default
    with pytest.raises(ValueError, match="cannot encode"):
        tok.encode("aé", strict=True)


def test_truncated_or_corrupt_checkpoint_is_one_error_line(capsys, tmp_path, model_dir):
    import shutil

    for keep in (20, 4000):  # header cut, then body cut
        broken = tmp_path / f"cut{keep}"
        shutil.copytree(model_dir, broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:keep])
        status, out, err = run(capsys, "generate", "--prompt", "Q", "--model", broken)
        assert status == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert str(weights) in err and "truncated or corrupt" in err


def test_torch_safetensors_reader_names_a_truncated_file(tmp_path, model_dir):
    from spiffy_triton.models.safetensors_reader import SafetensorsFile

    data = (model_dir / "model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    reader = SafetensorsFile(str(cut))
    with pytest.raises(ValueError, match=r"cut\.safetensors: tensor .* truncated or corrupt"):
        for name in reader.keys():
            reader.get_tensor(name)
    cut.write_bytes(data[:8] + b"{not json" + data[17:200])
    with pytest.raises(ValueError, match=r"cut\.safetensors: (corrupt|header length)"):
        SafetensorsFile(str(cut))


def test_calibrate_checks_its_output_folders_before_the_traces(
    capsys, tmp_path, model_dir, monkeypatch
):
    from spiffy_triton import calibration

    def no_traces(*args, **kwargs):
        raise AssertionError("traces collected before the output folders were checked")

    monkeypatch.setattr(calibration, "collect_traces", no_traces)
    common = ["--builtin", "arith", "--budget", 2, "--model", model_dir]
    status, _, err = run(capsys, "calibrate", *common, "--out", tmp_path / "no" / "g.json")
    assert status == 2 and "--out: the folder" in err and "does not exist" in err
    status, _, err = run(
        capsys, "calibrate", *common, "--out", tmp_path / "g.json", "--draw", tmp_path
    )
    assert status == 2 and "--draw:" in err and "is a folder" in err
    status, _, err = run(
        capsys, "calibrate", *common, "--out", tmp_path / "g.json",
        "--draw", tmp_path / "missing" / "g.png",
    )  # fmt: skip
    assert status == 2 and "--draw: the folder" in err
