"""Verify cost model (spiffy_triton/decoding/cost_model.py): verify shapes against the decoder's
real forwards and the one builder of verify inputs, the cost fit, the probe, and the cost
models' cache (memory, disk, keys).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from cost_fixtures import (
    MASK,
    RecordingModel,
    memory_only_cost_cache,
    recording_model,
    sample_prompt,
    verifier,
)

from spiffy_triton.decoding import budget as cm
from spiffy_triton.decoding import cost_model as cost_module
from spiffy_triton.decoding.cost_model import (
    VerifyCostModel,
    VerifyShape,
    cached_cost_model,
    cost_model_key,
    probe_verify_cost,
    verify_shape,
)
from spiffy_triton.models import LLaDAConfig
from spiffy_triton.verify_inputs import verify_inputs

# ----------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def model():
    return recording_model()


@pytest.fixture(scope="module")
def prompt():
    return sample_prompt()


@pytest.fixture(autouse=True)
def fresh_cost_cache(monkeypatch):
    yield from memory_only_cost_cache(monkeypatch)


@pytest.mark.parametrize(
    "cache, verify",
    [(None, "batch"), (None, "packed"), ("dual", "packed"), ("dual", "batch"),
     ("prefix", "packed"), ("prefix", "batch")],
)  # fmt: skip
@pytest.mark.parametrize("num_drafts", [0, 1, 3])
def test_verify_shape_is_the_decoders_forward(model, cache, verify, num_drafts):
    s, length, t = 6, 8, 30
    x = torch.full((1, t), MASK)
    x[0, :s] = 5
    v = verifier(model, cache, verify)
    if cache is not None:
        v.prefill(x, s, s + length)
    model.shapes.clear()
    v(x, s, s + length, x[0, s : s + length].repeat(num_drafts, 1))
    shape = verify_shape(cache, verify, s, length, t, num_drafts)
    assert model.shapes == [(shape.batch, shape.rows, shape.keys)]


def arithmetic_shape(cache, verify, s, length, t, d) -> VerifyShape:
    """The shapes `verify_shape` gave by hand before it read them off the builder."""
    packed = verify == "packed"
    if cache is None:
        return (
            VerifyShape(1, t + d * length, t + d * length) if packed else VerifyShape(1 + d, t, t)
        )
    if cache == "dual":
        return (
            VerifyShape(1, (1 + d) * length, t + d * length)
            if packed
            else VerifyShape(1 + d, length, t)
        )
    real = t - s
    return (
        VerifyShape(1, (1 + d) * real, s + (1 + d) * real)
        if packed
        else VerifyShape(1 + d, real, t)
    )


@pytest.mark.parametrize("verify", ["packed", "batch"])
@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_verify_shape_is_the_builders_shape_over_random_sizes(cache, verify):
    """verify_shape reads its shapes off the one builder (on meta tensors): they equal real
    `verify_inputs` (ids, layout) and the former arithmetic, for random sizes."""
    rng = random.Random(f"{cache}-{verify}")
    for _ in range(25):
        length, s, d = rng.randint(1, 12), rng.randint(0, 20), rng.randint(0, 6)
        t = s + length + rng.randint(0, 15)
        x = torch.randint(0, 50, (1, t))
        inputs = verify_inputs(x, s, s + length, torch.randint(0, 50, (d, length)), cache, verify)
        shape = verify_shape(cache, verify, s, length, t, d)
        assert (shape.batch, shape.rows) == tuple(inputs.input_ids.shape)
        assert (shape.rows, shape.keys) == (inputs.layout.num_q_rows, inputs.layout.num_k_rows)
        assert shape == arithmetic_shape(cache, verify, s, length, t, d)


@pytest.mark.parametrize(
    "args, message",
    [
        ((None, "batch", -1, 8, 30, 0), "prefix_len"),
        ((None, "batch", 0, 0, 30, 0), "block_len"),
        ((None, "batch", 25, 8, 30, 0), "prefix_len \\+ block_len"),
        ((None, "batch", 0, 8, 30, 1.5), "num_drafts"),
        ((None, "tree", 0, 8, 30, 1), "verify"),
        (("full", "packed", 0, 8, 30, 1), "cache"),
    ],
)
def test_verify_shape_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        verify_shape(*args)


# --------------------------------------------------------------------------- cost model


def test_fit_recovers_exact_coefficients():
    truth = VerifyCostModel(3.0, 0.25, 1e-4)
    shapes = [verify_shape("dual", "packed", 40, 32, 160, d) for d in (0, 1, 3, 6)]
    shapes += [verify_shape(None, "batch", 40, 32, 100, d) for d in (0, 2)]
    fit = VerifyCostModel.fit([(s, truth.predict_ms(s)) for s in shapes])
    for got, want in zip(
        (fit.intercept_ms, fit.per_row_ms, fit.per_row_key_ms),
        (truth.intercept_ms, truth.per_row_ms, truth.per_row_key_ms),
    ):
        assert got == pytest.approx(want, rel=1e-6)
    assert fit.residual_pct < 1e-6 and fit.source == "probe"


def test_fit_is_non_negative():
    # Time falls with rows: unconstrained least squares would give a negative slope.
    samples = [(VerifyShape(1, r, 10), ms) for r, ms in ((10, 9.0), (20, 8.0), (40, 7.0))]
    fit = VerifyCostModel.fit(samples)
    assert min(fit.intercept_ms, fit.per_row_ms, fit.per_row_key_ms) >= 0
    assert fit.intercept_ms > 0


def test_cost_model_round_trip_and_bad_input():
    model = VerifyCostModel(1.0, 0.5, 0.01, "given")
    assert VerifyCostModel.from_dict(model.to_dict()) == model
    assert VerifyCostModel.from_dict({"intercept_ms": 1, "per_row_ms": 2}).per_row_key_ms == 0
    with pytest.raises(ValueError, match="intercept_ms"):
        VerifyCostModel(-1.0, 0.5)
    with pytest.raises(ValueError, match="per_row_ms"):
        VerifyCostModel(1.0, math.nan)
    with pytest.raises(ValueError, match="positive"):
        VerifyCostModel(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="per_row_ms"):
        VerifyCostModel.from_dict({"intercept_ms": 1})
    with pytest.raises(ValueError, match="at least 2 samples"):
        VerifyCostModel.fit([(VerifyShape(1, 1, 1), 1.0)])
    with pytest.raises(ValueError, match="positive finite"):
        VerifyCostModel.fit([(VerifyShape(1, 1, 1), 1.0), (VerifyShape(1, 2, 2), 0.0)])


def test_probe_times_the_real_verifier(model):
    calls = []

    class Counting:
        def __init__(self):
            self.inner = verifier(model, "dual", "packed")

        def prefill(self, x, s, e):
            return self.inner.prefill(x, s, e)

        def __call__(self, x, s, e, drafts):
            calls.append((x.shape[1], drafts.shape[0]))
            return self.inner(x, s, e, drafts)

    fit, samples = probe_verify_cost(
        Counting,
        mask_id=MASK,
        device="cpu",
        cache="dual",
        verify="packed",
        block_length=8,
        contexts=[(6, 30), (20, 60)],
        draft_counts=(0, 2, 4),
        repeats=2,
    )
    # one warm-up and two timed runs per (context, draft count)
    assert sorted(set(calls)) == [(30, 0), (30, 2), (30, 4), (60, 0), (60, 2), (60, 4)]
    assert len(calls) == 6 * 3
    assert [s for s, _ in samples][2] == verify_shape("dual", "packed", 6, 8, 30, 4)
    assert fit.source == "probe" and all(ms > 0 for _, ms in samples)
    assert fit.predict_ms(verify_shape("dual", "packed", 6, 8, 30, 0)) > 0


def test_cost_models_are_cached_in_memory_and_on_disk(tmp_path):
    builds = []

    def build():
        builds.append(1)
        return VerifyCostModel(2.0, 0.1, 0.0, "probe")

    first = cached_cost_model("k", build, cache_dir=tmp_path)
    assert cached_cost_model("k", build, cache_dir=tmp_path) is first and len(builds) == 1
    stored = json.loads((tmp_path / cost_module.CACHE_FILE).read_text())
    assert stored["k"]["per_row_ms"] == 0.1
    cm.clear_cost_cache()  # a new process: read back from disk, not measured again
    assert cached_cost_model("k", build, cache_dir=tmp_path) == first and len(builds) == 1
    cm.clear_cost_cache()
    (tmp_path / cost_module.CACHE_FILE).write_text("{not json")  # damaged: measured again
    assert cached_cost_model("k", build, cache_dir=tmp_path) == first and len(builds) == 2


def test_cache_key_separates_dtype_modes_and_configs(model):
    base = cost_model_key(model, "dual", "packed")
    assert base != cost_model_key(model, None, "batch")
    assert base != cost_model_key(model.to(torch.float32), "dual", "packed")
    model.to(torch.float64)
    assert base == cost_model_key(model, "dual", "packed")
    other = RecordingModel(
        LLaDAConfig(d_model=32, n_heads=4, n_layers=1, mlp_hidden_size=64, vocab_size=24,
                    max_sequence_length=96, mask_token_id=MASK, eos_token_id=0, pad_token_id=0),
        backend="torch",
    ).to(torch.float64)  # fmt: skip
    assert base != cost_model_key(other, "dual", "packed")


def test_cost_models_persist_in_the_user_cache_by_default(tmp_path, monkeypatch):
    """issue #21: on disk by default ($XDG_CACHE_HOME/spiffy-triton), overridable by
    SPIFFY_TRITON_COST_CACHE, which 'off' disables; cache_dir=False keeps memory only."""
    builds = []

    def build():
        builds.append(1)
        return VerifyCostModel(2.0, 0.1, 0.0, "probe")

    monkeypatch.delenv(cost_module.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cost_module.default_cache_dir() == tmp_path / "xdg" / "spiffy-triton"
    cm.clear_cost_cache()
    cached_cost_model("k", build)
    assert (tmp_path / "xdg" / "spiffy-triton" / cost_module.CACHE_FILE).is_file()
    cm.clear_cost_cache()  # a new process (a second command-line call): not measured again
    cached_cost_model("k", build)
    assert len(builds) == 1
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cost_module.default_cache_dir() == Path.home() / ".cache" / "spiffy-triton"
    monkeypatch.setenv(cost_module.CACHE_ENV, str(tmp_path / "mine"))
    assert cost_module.default_cache_dir() == tmp_path / "mine"
    for off in ("off", "0", "", "None"):
        monkeypatch.setenv(cost_module.CACHE_ENV, off)
        assert cost_module.default_cache_dir() is None
    cm.clear_cost_cache()
    cached_cost_model("j", build, cache_dir=False)
    monkeypatch.setenv(cost_module.CACHE_ENV, str(tmp_path / "mine"))
    cm.clear_cost_cache()
    cached_cost_model("j", build, cache_dir=False)
    assert len(builds) == 3 and not (tmp_path / "mine").exists()
    with pytest.raises(ValueError, match="cache_dir must be a directory path"):
        cached_cost_model("j", build, cache_dir=3)
    # an unwritable cache directory warns and keeps the model in memory
    blocker = tmp_path / "file"
    blocker.write_text("")
    cm.clear_cost_cache()
    with pytest.warns(UserWarning, match="cannot write the verify cost cache"):
        model = cached_cost_model("u", build, cache_dir=blocker / "sub")
    assert model.per_row_ms == 0.1
    cm.clear_cost_cache()


def test_cache_key_names_the_host_and_version(model):
    import platform

    import spiffy_triton

    key = cost_model_key(model, "dual", "packed")
    assert f"host={platform.node()}" in key and f"version={spiffy_triton.__version__}" in key


def test_fit_of_one_shape_keeps_the_intercept():
    # every sample the same shape: the three features are collinear, one coefficient is left
    shape = VerifyShape(1, 10, 10)
    fit = VerifyCostModel.fit([(shape, 5.0), (shape, 5.2), (shape, 4.9)])
    assert fit.predict_ms(shape) == pytest.approx(5.03, rel=0.01)
    assert (fit.per_row_ms, fit.per_row_key_ms) == (0.0, 0.0)
