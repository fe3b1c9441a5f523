"""benchmark_model output: every form its versions print, including C++ exponent notation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnas.errors import UserError
from mnas.latency.backends.android_output import parse_benchmark_output

FIXTURES = Path(__file__).parent / "fixtures" / "adb"


def test_newer_stats_line_with_percentiles() -> None:
    out = parse_benchmark_output((FIXTURES / "benchmark_new.txt").read_text())
    assert out.count == 60  # the timed run, not the 30-iteration warm-up line
    assert out.median_us == 58016 and out.p5_us == 57511 and out.p95_us == 59322
    assert out.avg_us == 58132.8 and out.std_us == 498
    assert out.init_us == 29114 and out.first_us == 65321 and out.warmup_avg_us == 58650.3
    assert out.typical_us == 58016


def test_summary_line_without_percentiles() -> None:
    out = parse_benchmark_output((FIXTURES / "benchmark_summary.txt").read_text())
    assert out.avg_us == 61802.4 and out.median_us is None and out.count == 60
    assert out.min_us == 60955 and out.max_us == 64012
    assert out.init_us == 34876 and out.first_us == 72158 and out.warmup_avg_us == 62873.1
    assert out.typical_us == 61802.4


def test_old_average_line_with_exponent_values() -> None:
    out = parse_benchmark_output((FIXTURES / "benchmark_old.txt").read_text())
    assert out.avg_us == pytest.approx(1.20327e6)
    assert out.warmup_avg_us == pytest.approx(1.21744e6) and out.init_us == 91200


def test_old_average_line_with_inference_key() -> None:
    out = parse_benchmark_output((FIXTURES / "benchmark_old_inference.txt").read_text())
    assert out.avg_us == 70390.2 and out.warmup_avg_us == 70822.6 and out.init_us == 41200


@pytest.mark.parametrize("line, avg", [
    ("Inference timings in us: Init: 1.5e+04, First inference: 1.3e+06, Warmup (avg): 1.23457e+06, "
     "Inference (avg): 1.23457e+06", 1.23457e6),
    ("Average inference timings in us: Warmup: 2.5e+05, Init: 100, Inference: 2.4E+05", 2.4e5),
    ("count=60 first=1.3e+06 curr=1.2e+06 min=1.1e+06 max=1.4e+06 avg=1.23457e+06 std=1.2e+04 "
     "p5=1.15e+06 median=1.2e+06 p95=1.35e+06", 1.23457e6),
])
def test_exponent_notation_everywhere(line: str, avg: float) -> None:
    assert parse_benchmark_output(line).avg_us == pytest.approx(avg)


def test_output_without_timings_is_a_user_error() -> None:
    with pytest.raises(UserError, match="could not find inference timings"):
        parse_benchmark_output("/system/bin/sh: benchmark_model: not found\n")
