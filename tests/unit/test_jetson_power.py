"""tegrastats parsing on recorded lines of AGX Orin, Orin Nano and JetPack 4 boards, energy integration,
the background sampler (a real subprocess printing recorded lines), tools/jetson_power.py, and the
Jetson environment probe on a fake filesystem root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lappdeploy.bench.jetson import (
    PowerSampler,
    TegrastatsSample,
    energy_joules,
    jetson_environment,
    parse_tegrastats_line,
    total_power_mw,
)

AGX_ORIN = (
    "11-22-2026 10:15:02 RAM 2829/30536MB (lfb 6520x4MB) SWAP 0/15268MB (cached 0MB) CPU [3%@729,0%@729,0%@729,"
    "0%@729,1%@729,0%@729,0%@729,0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 87%@[1300,1300] VIC_FREQ 729 "
    "APE 174 CV0@-256C CPU@44.468C Tboard@33C SOC2@41.281C Tdiode@34.5C SOC0@41.968C CV1@-256C GPU@46.8C tj@46.8C "
    "SOC1@41.062C CV2@-256C VDD_GPU_SOC 9787mW/8120mW VDD_CPU_CV 1198mW/1003mW VIN_SYS_5V0 4223mW/4101mW NC "
    "0mW/0mW VDDQ_VDD2_1V8AO 903mW/850mW NC 0mW/0mW"
)
ORIN_NANO = (
    "RAM 2253/7620MB (lfb 1138x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@1510,0%@1510,0%@1510,0%@1510,0%@1510,"
    "0%@1510] EMC_FREQ 0%@2133 GR3D_FREQ 99%@[624] VIC_FREQ 115 APE 200 CV0@-256C CPU@46.218C SOC2@44.406C "
    "SOC0@45.281C CV1@-256C GPU@47.1C tj@47.1C SOC1@44.375C CV2@-256C VDD_IN 7893mW/6012mW VDD_CPU_GPU_CV "
    "2524mW/1830mW VDD_SOC 1935mW/1702mW"
)
JETPACK4 = (
    "RAM 1845/3964MB (lfb 81x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [12%@1479,6%@1479,"
    "9%@1479,4%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 76%@921 APE 25 PLL@31C CPU@33.5C PMIC@100C GPU@32C AO@40.5C "
    "thermal@32.75C POM_5V_IN 4512/3914 POM_5V_GPU 1450/1102 POM_5V_CPU 603/540"
)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "jetson_power.py"


def test_agx_orin_line():
    s = parse_tegrastats_line(AGX_ORIN, 1.5)
    assert s.clock == "11-22-2026 10:15:02" and s.time_s == 1.5 and s.gpu_load == 87.0
    assert s.rails == {
        "VDD_GPU_SOC": (9787, 8120),
        "VDD_CPU_CV": (1198, 1003),
        "VIN_SYS_5V0": (4223, 4101),
        "VDDQ_VDD2_1V8AO": (903, 850),
    }  # NC dropped; temperatures (CPU@44.468C) and RAM/SWAP are not rails
    assert total_power_mw(s) == ("sum(VDDQ_VDD2_1V8AO,VDD_CPU_CV,VDD_GPU_SOC,VIN_SYS_5V0)", 9787 + 1198 + 4223 + 903)


def test_orin_nano_and_jetpack4_lines_use_the_input_rail():
    nano = parse_tegrastats_line(ORIN_NANO)
    assert nano.clock is None and nano.gpu_load == 99.0 and len(nano.rails) == 3
    assert total_power_mw(nano) == ("VDD_IN", 7893)
    old = parse_tegrastats_line(JETPACK4)
    assert old.rails == {"POM_5V_IN": (4512, 3914), "POM_5V_GPU": (1450, 1102), "POM_5V_CPU": (603, 540)}
    assert old.gpu_load == 76.0 and total_power_mw(old) == ("POM_5V_IN", 4512)


@pytest.mark.parametrize("line", ["", "hello world", "Traceback (most recent call last):", "12 34"])
def test_lines_that_are_not_tegrastats(line):
    assert parse_tegrastats_line(line) is None


def _samples(powers_mw, step_s=0.5):
    return [TegrastatsSample(time_s=i * step_s, rails={"VDD_IN": (p, p)}) for i, p in enumerate(powers_mw)]


def test_energy_integration_is_exact_for_constant_and_ramp():
    constant = energy_joules(_samples([5000] * 5), 0.0, 2.0)  # 5 W for 2 s
    assert constant["energy_j"] == pytest.approx(10.0) and constant["mean_power_w"] == pytest.approx(5.0)
    assert constant["rail"] == "VDD_IN"
    ramp = _samples([1000, 2000, 3000, 4000, 5000])  # +2 W/s from 1 W at t = 0
    assert energy_joules(ramp, 0.0, 2.0)["energy_j"] == pytest.approx(6.0)  # trapezoid is exact on a line
    # a window between samples is interpolated at its edges: 0.25..1.25 s -> mean of 1.5 W and 3.5 W
    assert energy_joules(ramp, 0.25, 1.25)["energy_j"] == pytest.approx(2.5)
    assert energy_joules(ramp, 1.0, 3.0) is None  # not covered by samples: no extrapolation
    assert energy_joules(ramp[:1], 0.0, 0.1) is None


def test_power_sampler_reads_a_real_process():
    script = (
        "import sys, time\n"
        f"lines = {[ORIN_NANO, ORIN_NANO.replace('VDD_IN 7893mW', 'VDD_IN 6893mW'), 'not a line', ORIN_NANO]!r}\n"
        "for line in lines:\n"
        "    print(line, flush=True)\n"
        "    time.sleep(0.05)\n"
        "time.sleep(30)\n"
    )
    with PowerSampler(command=[sys.executable, "-c", script]) as sampler:
        assert sampler.wait_for_samples(3, timeout_s=20)
        samples = sampler.samples
    assert [total_power_mw(s)[1] for s in samples] == [7893, 6893, 7893]
    assert samples[0].time_s < samples[1].time_s < samples[2].time_s
    energy = sampler.energy(samples[0].time_s, samples[2].time_s)
    assert 6.893 < energy["mean_power_w"] < 7.893
    assert sampler._process.poll() is not None  # stopped with the context


def test_tool_reads_a_recorded_log(tmp_path):
    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join([ORIN_NANO] * 11) + "\n")
    out = tmp_path / "power.jsonl"
    run = subprocess.run(
        [sys.executable, TOOL, "--from-log", log, "--interval-ms", "100", "--out", out],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "11 samples over 1.00 s: mean power 7.89 W, energy 7.89 J (rail VDD_IN)" in run.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 11 and lines[-1]["t"] == pytest.approx(1.0) and lines[0]["rails"]["VDD_IN"] == [7893, 6012]


def test_tool_wraps_a_command_and_passes_its_exit_code(tmp_path):
    printer = tmp_path / "fake_tegrastats.py"
    printer.write_text(f"import time\nwhile True:\n    print({JETPACK4!r}, flush=True)\n    time.sleep(0.02)\n")
    out = tmp_path / "power.jsonl"
    run = subprocess.run(
        [sys.executable, TOOL, "--out", out, "--tegrastats-command", f"{sys.executable} {printer}", "--",
         sys.executable, "-c", "import time, sys; time.sleep(1.0); sys.exit(3)"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert run.returncode == 3, run.stderr
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(samples) >= 3 and samples[0]["rails"]["POM_5V_IN"] == [4512, 3914]
    assert "mean power 4.51 W" in run.stderr


def test_tool_without_tegrastats_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no tegrastats on PATH (and none in /usr/bin here)
    if Path("/usr/bin/tegrastats").exists():
        pytest.skip("this machine has tegrastats")
    run = subprocess.run(
        [sys.executable, TOOL, "--out", tmp_path / "p.jsonl", "--", "true"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "tegrastats not found" in run.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_jetson_environment_on_a_fake_root(tmp_path):
    assert jetson_environment(tmp_path, nvpmodel=("false",)) is None  # not a Jetson
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\0")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0, GCID: 36923193\nmore\n")
    for cpu, (low, high) in enumerate([("2201600", "2201600"), ("2201600", "2201600")]):
        freq = tmp_path / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_min_freq").write_text(low)
        (freq / "scaling_max_freq").write_text(high)
    nvpmodel = tmp_path / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\nprintf 'NV Power Mode: MAXN\\n0\\n'\n")
    nvpmodel.chmod(0o755)
    env = jetson_environment(tmp_path, nvpmodel=(str(nvpmodel), "-q"))
    assert env == {
        "jetson_model": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t_release": "# R36 (release), REVISION: 3.0, GCID: 36923193",
        "power_mode": "MAXN",
        "jetson_clocks": True,
    }
    (tmp_path / "sys/devices/system/cpu/cpu1/cpufreq/scaling_min_freq").write_text("729600")
    assert jetson_environment(tmp_path, nvpmodel=("false",))["jetson_clocks"] is False
    assert jetson_environment(tmp_path, nvpmodel=("false",))["power_mode"] is None
