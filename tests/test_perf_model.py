"""Unit tests of the analytic performance model's arithmetic (benchmarks/perf_model.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks import perf_model as pm
from spiffy_triton import SegmentLayout

H100 = pm.HARDWARE["H100-SXM"]
H200 = pm.HARDWARE["H200-SXM"]
L8B = pm.LLADA_8B


def test_llada_parameter_counts_by_hand():
    layer = 4 * 4096 * 4096 + 3 * 4096 * 12288
    assert L8B.layer_params == layer == 218_103_808
    assert L8B.lm_head_params == 4096 * 126464
    assert L8B.total_params == 32 * layer + 2 * 4096 * 126464 == 8_015_314_944
    # every forward streams the layers and the LM head once: ~15 GB in bf16
    assert L8B.streamed_weight_bytes == 2 * (32 * layer + 4096 * 126464)
    assert 14.9e9 < L8B.streamed_weight_bytes < 15.1e9


def test_flops_of_a_known_shape_by_hand():
    # dual cache, no context, no drafts: 32 query rows, 32 keys
    step = pm.StepShape(context=0, block=32, drafts=0, cached=True)
    groups = pm.group_totals(pm.forward_ops(L8B, step))
    linear = 32 * (2 * 32 * 218_103_808)  # layers * 2 * rows * params
    attention = 32 * 32 * (4 * 32 * 32 * 128)  # layers * heads * 4 * pairs * head_dim
    lm_head = 2 * 32 * 4096 * 126464
    assert groups["linear"][1] == linear
    assert groups["attention"][1] == attention
    assert groups["lm_head"][1] == lm_head
    assert groups["elementwise"][1] == 0 and groups["marginals"][1] == 0


def test_kv_cache_bytes_by_hand():
    with_ctx = pm.forward_ops(L8B, pm.StepShape(1000, 32, 2, cached=True))
    without_ctx = pm.forward_ops(L8B, pm.StepShape(0, 32, 2, cached=True))
    extra = pm.group_totals(with_ctx)["attention"][0] - pm.group_totals(without_ctx)["attention"][0]
    # K and V of 1000 cached rows, 32 KV heads x 128, bf16, 32 layers
    assert extra == 32 * 2 * 1000 * 32 * 128 * 2


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("prefix,suffix", [(0, 0), (6, 4), (17, 0), (0, 9)])
@pytest.mark.parametrize("drafts", [0, 1, 3])
def test_pair_counts_match_the_layout_contract(cached, prefix, suffix, drafts):
    block = 5
    step = pm.StepShape(prefix + suffix, block, drafts, cached)
    dense = SegmentLayout.spiffy(prefix, block, suffix, drafts, cached=cached).to_dense()
    assert step.query_rows == dense.shape[0]
    assert step.key_rows == dense.shape[1]
    assert step.dense_pairs == dense.numel()
    assert step.visible_pairs == int(dense.sum())


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("sampling", [False, True])
def test_bytes_and_flops_grow_with_drafts(cached, sampling):
    previous = None
    for drafts in range(0, 17):
        ops = pm.forward_ops(L8B, pm.StepShape(1024, 32, drafts, cached), sampling=sampling)
        pred = pm.predict(ops, H100)
        if previous is not None:
            assert pred.bytes > previous.bytes
            assert pred.flops > previous.flops
            assert pred.t_step_ms >= previous.t_step_ms
        previous = pred


def test_per_operator_time_is_at_least_the_whole_forward_roofline():
    for drafts in (0, 5, 10, 16):
        for cached in (True, False):
            ops = pm.forward_ops(L8B, pm.StepShape(1024, 32, drafts, cached))
            pred = pm.predict(ops, H100)
            assert pred.t_step_ms >= pred.t_roofline_ms * (1 - 1e-12)
            assert pred.t_roofline_ms == max(pred.t_memory_ms, pred.t_compute_ms)
            assert pred.t_memory_ms == pytest.approx(pred.bytes / H100.bytes_per_s * 1e3)


def test_launch_overhead_adds_per_operator():
    ops = pm.forward_ops(L8B, pm.StepShape(512, 32, 3))
    base = pm.predict(ops, H200)
    launched = pm.predict(ops, H200, launch_us=5.0)
    assert launched.launches == sum(op.count for op in ops)
    assert launched.t_step_ms - base.t_step_ms == pytest.approx(launched.launches * 5e-3)


@pytest.mark.parametrize("hw", [H100, H200], ids=lambda h: h.name)
@pytest.mark.parametrize("context", [0, 1024, 2048])
def test_crossover_is_where_intensity_crosses_the_ridge(hw, context):
    crossover = pm.crossover_drafts(L8B, hw, context=context, block=32, cached=True)
    assert crossover is not None and crossover > 0

    def intensity(drafts):
        pred = pm.predict(pm.forward_ops(L8B, pm.StepShape(context, 32, drafts, True)), hw)
        return pred.flops / pred.bytes

    assert intensity(crossover) > hw.ridge >= intensity(crossover - 1)


def test_crossover_near_the_weight_gemm_ridge_and_earlier_on_h200():
    # Weight GEMMs dominate: intensity ~ rows FLOP/byte in bf16, so compute-bound from about
    # ridge rows on; extra bytes (activations, logits) push it a little later, never earlier.
    for hw in (H100, H200):
        crossover = pm.crossover_drafts(L8B, hw, context=0, block=32, cached=True)
        rows = (1 + crossover) * 32
        assert hw.ridge <= rows <= hw.ridge * 1.4
    h100 = pm.crossover_drafts(L8B, H100, context=1024, block=32)
    h200 = pm.crossover_drafts(L8B, H200, context=1024, block=32)
    assert h200 < h100  # more bandwidth, same compute: compute-bound sooner
    # without cache the whole-sequence forward is compute-bound already at D = 0
    assert pm.crossover_drafts(L8B, H100, context=1024, block=32, cached=False) == 0


def test_marginals_bytes_by_hand():
    rows, vocab = 32, 126464
    assert pm.marginals_bytes(rows, vocab) == rows * vocab * 2
    # greedy composition from bf16 logits: 2+4 upcast, 8 log_softmax, 8 exp, 4 lse, 4 topk,
    # 12 product, 4 sum, 4 argmax = 50 bytes per logit
    assert pm.marginals_bytes(rows, vocab, fused=False) == rows * vocab * 50
    sampled = pm.marginals_bytes(rows, vocab, fused=False, sampling=True)
    assert sampled > pm.marginals_bytes(rows, vocab, fused=False)


def test_fused_kernels_move_fewer_bytes_and_flops():
    for cached in (True, False):
        step = pm.StepShape(1024, 32, 8, cached)
        fused = pm.predict(pm.forward_ops(L8B, step), H100)
        composed = pm.predict(pm.forward_ops(L8B, step, fused=False), H100)
        assert fused.bytes < composed.bytes
        assert fused.flops < composed.flops  # dense-mask SDPA computes masked pairs too
        assert fused.t_step_ms < composed.t_step_ms


def test_speedup_is_one_without_drafts_and_grows_with_acceptance():
    kwargs = dict(context=1024, block=32, vanilla_steps=32, cached=True)
    vanilla = pm.block_time_ms(L8B, H100, drafts=0, steps_per_forward=1.0, **kwargs)
    faster = pm.block_time_ms(L8B, H100, drafts=5, steps_per_forward=2.5, **kwargs)
    fastest = pm.block_time_ms(L8B, H100, drafts=5, steps_per_forward=3.0, **kwargs)
    assert vanilla > faster > fastest
    # cached vanilla block: one prefill forward + 31 cached steps
    prefill = pm.predict(pm.forward_ops(L8B, pm.StepShape(1024, 32, 0, False)), H100)
    step = pm.predict(pm.forward_ops(L8B, pm.StepShape(1024, 32, 0, True)), H100)
    assert vanilla == pytest.approx(prefill.t_step_ms + 31 * step.t_step_ms)
    with pytest.raises(ValueError, match="steps_per_forward"):
        pm.block_time_ms(L8B, H100, drafts=5, steps_per_forward=0.5, **kwargs)


def test_load_steps_per_forward(tmp_path):
    path = tmp_path / "nfe.json"
    rows = [
        {"drafts": 3, "steps_per_forward": 2.0},
        {"drafts": 3, "steps_per_forward": 2.4},
        {"num_drafts": 5, "nfe_speedup": 2.8},
        {"budget": 8, "note": "no value"},
    ]
    path.write_text(json.dumps({"benchmark": "nfe", "rows": rows}))
    assert pm.load_steps_per_forward(path) == {3: pytest.approx(2.2), 5: 2.8}
    # only the modelled configuration (dual cache, greedy) when the rows say which they are
    rows = [
        {"D": 3, "cache": "dual", "temperature": 0.0, "steps_per_nfe": 2.0},
        {"D": 3, "cache": None, "temperature": 0.0, "steps_per_nfe": 9.0},
        {"D": 3, "cache": "dual", "temperature": 0.7, "steps_per_nfe": 9.0},
        {"D": 5, "cache": "dual", "temperature": 0.0, "steps_per_nfe": 2.5},
    ]
    path.write_text(json.dumps({"rows": rows}))
    assert pm.load_steps_per_forward(path) == {3: 2.0, 5: 2.5}


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="context"):
        pm.StepShape(-1, 32, 0)
    with pytest.raises(ValueError, match="block"):
        pm.StepShape(0, 0, 0)
    with pytest.raises(ValueError, match="drafts"):
        pm.StepShape(0, 32, -2)
    with pytest.raises(ValueError, match="memory_eff"):
        pm.Hardware("x", 1.0, 1.0, compute_eff=0.5, memory_eff=1.5, source="")
    with pytest.raises(ValueError, match="n_kv_heads"):
        pm.ModelShape("x", 64, 1, 4, 3, 16, 128, 100)
    with pytest.raises(ValueError, match="--gpus"):
        pm.build_hardware(["A100"], 0.7, 0.85)
    with pytest.raises(ValueError, match="--steps-per-forward"):
        pm.parse_steps_per_forward("3=2.0")
    with pytest.raises(ValueError, match="--contexts"):
        pm.parse_ints("a,b", "--contexts")


def test_script_writes_labelled_json_and_plot(tmp_path, capsys):
    assert (
        pm.main(
            [
                "--quick",
                "--out-dir",
                str(tmp_path),
                "--steps-per-forward",
                "3:2.0,5:2.5",
                "--acceptance-json",
                str(tmp_path / "absent.json"),
            ]
        )
        == 0
    )
    payload = json.loads((tmp_path / "perf_model.json").read_text())
    assert payload["meta"]["label"].startswith("MODELED")
    assert "PLACEHOLDER" in payload["meta"]["acceptance"]
    by_d = {(r["gpu"], r["cached"], r["D"]): r for r in payload["rows"]}
    assert by_d[("H100-SXM", True, 0)]["speedup_per_block"] == pytest.approx(1.0)
    assert by_d[("H100-SXM", True, 3)]["speedup_per_block"] > 1.0
    vanilla, drafted = by_d[("H100-SXM", True, 0)], by_d[("H100-SXM", True, 3)]
    assert drafted["tokens_per_s"] / vanilla["tokens_per_s"] == pytest.approx(
        drafted["speedup_per_block"]
    )
    # vanilla, dual cache: a 32-token block is one prefill forward + 31 cached steps
    prefill = pm.predict(pm.forward_ops(L8B, pm.StepShape(1024, 32, 0, False)), H100)
    t_block_ms = prefill.t_step_ms + 31 * vanilla["t_step_ms"]
    assert vanilla["tokens_per_s"] == pytest.approx(32e3 / t_block_ms)
    assert by_d[("H100-SXM", True, 8)]["speedup_per_block"] is None  # no acceptance given
    for row in payload["rows"]:  # the byte split is additive
        parts = ("weights", "kv_cache", "activations", "logits", "marginals")
        assert sum(row[f"{p}_GB"] for p in parts) == pytest.approx(row["total_GB"])
        assert row["activations_GB"] > 0 and row["weights_GB"] == pytest.approx(14.9947, abs=1e-4)
    for name in ("perf_model_crossover", "perf_model_marginals", "perf_model_attention"):
        assert (tmp_path / f"{name}.json").is_file()
    assert (tmp_path / "perf_model.png").stat().st_size > 0
    assert "MODELED" in capsys.readouterr().out


def test_script_uses_measured_acceptance_first(tmp_path):
    measured = tmp_path / "wallclock.json"
    rows = [{"config": "vanilla", "D": None, "steps_per_forward": 1.0}]
    rows += [{"config": f"spiffy D={d}", "D": d, "steps_per_forward": s} for d, s in ((4, 1.8),)]
    measured.write_text(json.dumps({"rows": rows}))
    argv = ["--quick", "--no-plot", "--out-dir", str(tmp_path), "--steps-per-forward", "3:9.0"]
    argv += ["--acceptance-json", f"{tmp_path / 'absent.json'},{measured}"]
    assert pm.main(argv) == 0
    payload = json.loads((tmp_path / "perf_model.json").read_text())
    assert payload["meta"]["acceptance"] == "measured on the bundled model: wallclock.json"
    by_d = {(r["gpu"], r["cached"], r["D"]): r for r in payload["rows"]}
    row = by_d[("H100-SXM", True, 4)]  # D = 4 added to the quick sweep because it was measured
    assert row["steps_per_forward"] == 1.8
    assert row["speedup_per_step"] == pytest.approx(1.8 / row["step_cost_vs_D0"])
    assert by_d[("H100-SXM", True, 3)]["speedup_per_step"] is None  # placeholder not used


def test_script_reads_acceptance_per_cache_mode(tmp_path):
    nfe = tmp_path / "nfe.json"
    rows = [
        {"section": "spiffy", "cache": c, "temperature": 0, "threshold": None, "drafts": 5,
         "steps_per_nfe": s}
        for c, s in (("dual", 2.0), ("none", 3.0))
    ]  # fmt: skip
    rows.append({"cache": "dual", "temperature": 0, "threshold": 0.9, "drafts": 5, "nfe": 9.0})
    nfe.write_text(json.dumps({"rows": rows}))
    argv = ["--quick", "--no-plot", "--out-dir", str(tmp_path), "--acceptance-json", str(nfe)]
    assert pm.main(argv) == 0
    payload = json.loads((tmp_path / "perf_model.json").read_text())
    by_key = {(r["gpu"], r["cached"], r["D"]): r for r in payload["rows"]}
    assert by_key[("H200-SXM", True, 5)]["steps_per_forward"] == 2.0
    assert by_key[("H200-SXM", False, 5)]["steps_per_forward"] == 3.0
    assert payload["meta"]["acceptance"] == "measured on the bundled model: nfe.json"
