"""The pieces of jobs.optimize that need no model: the int8 instruction set read from the CPU's
flags, the student's layers, the choice of the fastest variant within the accuracy budget, and
the config's errors for variants and settings it does not support."""

from __future__ import annotations

import pandas as pd
import pytest

from jobs.optimize import OptimizeConfig
from slipway.config import ConfigError, load_config
from slipway.errors import SlipwayError
from slipway.models.onnx import detect_isa
from slipway.optimize.distill import kept_layers
from slipway.optimize.measure import choose

FLAGS = "processor\t: 0\nflags\t\t: fpu sse4_2 {}\nbogomips\t: 4000\n"


def test_int8_instruction_set_is_the_best_the_cpu_flags_offer():
    assert detect_isa(FLAGS.format("avx avx2 avx512f avx512bw avx512_vnni"), "x86_64") == \
        "avx512_vnni"
    assert detect_isa(FLAGS.format("avx avx2 avx512f avx512bw"), "x86_64") == "avx512"
    assert detect_isa(FLAGS.format("avx avx2"), "x86_64") == "avx2"
    assert detect_isa("", "aarch64") == detect_isa("", "arm64") == "arm64"
    with pytest.raises(SlipwayError, match="leave onnx_int8 and distilled_int8 out"):
        detect_isa(FLAGS.format("avx"), "x86_64")


def test_student_layers_are_spread_over_the_teacher_first_and_last_kept():
    assert kept_layers(6, 3) == [0, 2, 5]
    assert kept_layers(6, 2) == [0, 5]
    assert kept_layers(12, 4) == [0, 4, 7, 11]
    assert kept_layers(6, 1) == [0]


def test_the_fastest_variant_within_the_macro_f1_budget_is_chosen():
    table = pd.DataFrame({"macro_f1": [0.90, 0.895, 0.85, 0.91],
                          "texts_per_s_b32": [100.0, 300.0, 900.0, 150.0],
                          "p50_ms_b1": [20.0, 8.0, 2.0, 12.0]},
                         index=["fp32", "onnx_int8", "distilled_int8", "onnx"])
    assert choose(table, 0.01, "texts_per_s_b32") == "onnx_int8"
    assert choose(table, 0.10, "texts_per_s_b32") == "distilled_int8"
    assert choose(table, 0.01, "p50_ms_b1") == "onnx_int8"
    assert choose(table, 0.0, "texts_per_s_b32") == "onnx"  # better than the parent counts
    slow = table.assign(macro_f1=[0.9, 0.5, 0.5, 0.5])
    assert choose(slow, 0.01, "texts_per_s_b32") == "fp32"  # nothing within budget


@pytest.mark.parametrize("override, field", [
    ("variants=[onnx, tensorrt]", "variants.1"),
    ("isa=sse4", "isa"),
    ("distill.layers=0", "distill.layers"),
    ("max_f1_loss=-0.1", "max_f1_loss"),
])
def test_unsupported_settings_get_an_error_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(OptimizeConfig, "configs/optimize.yaml", [override])
    line = next(ln.strip() for ln in str(err.value).splitlines()[1:])
    assert line.startswith(f"{field}: ") and line.endswith("fix the value"), str(err.value)
