"""The core CLI as a user runs it: a real subprocess, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from mnas import zoo
from mnas.arch_strings import to_tf_string, to_timm_string


def mnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnas", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_arch_show_json_reports_exact_params():
    r = mnas("arch", "show", "mnasnet_a1", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == 3887038 and info["macs"] == 311579072
    assert info["name"] == "mnasnet_a1" and info["id"] == zoo.get("mnasnet_a1").id
    assert info["resolution"] == 224 and len(info["blocks"]) == 7
    assert info["blocks"][-1]["output_shape"] == [7, 7, 320]


@pytest.mark.slow
def test_arch_show_table_with_width_and_resolution():
    r = mnas("arch", "show", "mnasnet_b1", "--width-mult", "0.5", "--resolution", "160")
    assert r.returncode == 0, r.stderr
    assert "2,218,512" in r.stdout and "5x5x160" in r.stdout


@pytest.mark.slow
def test_arch_show_reads_strings_and_files(tmp_path):
    a1 = zoo.get("mnasnet_a1")
    for text in (to_timm_string(a1), to_tf_string(a1)):
        info = json.loads(mnas("arch", "show", text, "--json").stdout)
        assert info["id"] == a1.id
    f = tmp_path / "a1.json"
    f.write_text(a1.to_json())
    info = json.loads(mnas("arch", "show", str(f), "--json").stdout)
    assert info["params"] == 3887038


@pytest.mark.slow
def test_arch_sample_and_space_info():
    r = mnas("arch", "sample", "--seed", "5", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert len(s["tokens"]) == 42 and s["id"] == json.loads(mnas("arch", "sample", "--seed", "5", "--json").stdout)["id"]
    info = json.loads(mnas("space", "info", "--json").stdout)
    assert info["size"] == 432 ** 7 and info["choices_per_block"] == [432] * 7
    cifar = json.loads(mnas("space", "info", "--space", "mnasnet_cifar", "--json").stdout)
    assert cifar["space"]["stem_stride"] == 1


@pytest.mark.slow
def test_zoo_table_lists_every_model():
    r = mnas("zoo", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(zoo.list())
    assert rows["mnasnet_small"]["params"] == 2030264


@pytest.mark.parametrize("args,needle", [
    (("arch", "show", "mnasnet_z9"), "not a zoo model"),
    (("arch", "show", "ir_r2_k3_s7_e6_c24"), "block stride must lie in 1..2"),
    (("arch", "show", "mnasnet_a1", "--resolution", "8"), "out of range"),
    (("arch", "show", "mnasnet_a1", "--width-mult", "9"), "out of range"),
    (("arch", "sample", "--space", "no/such/space.yaml"), "neither a known space"),
    (("space", "info", "--space", "BADFILE"), "neither a known space"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    r = mnas(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_malformed_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"blocks": [{"op": "ds"}]}')
    r = mnas("arch", "show", str(bad))
    assert r.returncode == 2 and "block 1: expected exactly the keys" in r.stderr and "Traceback" not in r.stderr
    space = tmp_path / "space.yaml"
    space.write_text("name: x\nbase_filters: [16]\nwat: 3\n")
    r = mnas("space", "info", "--space", str(space))
    assert r.returncode == 2 and "unknown key" in r.stderr
