"""tegrastats parsing on recorded lines of AGX Orin, Orin Nano, Xavier NX and JetPack 4 boards, energy
integration, the background sampler (a real subprocess printing recorded lines), tools/jetson_power.py,
and the Jetson environment probe on a fake filesystem root."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lappdeploy.bench.jetson import (
    PowerSampler,
    TegrastatsSample,
    energy_joules,
    jetson_environment,
    parse_tegrastats_line,
    tegrastats_path,
    total_power_mw,
)

AGX_ORIN = (
    "11-22-2026 10:15:02 RAM 2829/30536MB (lfb 6520x4MB) SWAP 0/15268MB (cached 0MB) CPU [3%@729,0%@729,0%@729,"
    "0%@729,1%@729,0%@729,0%@729,0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 87%@[1300,1300] VIC_FREQ 729 "
    "APE 174 CV0@-256C CPU@44.468C Tboard@33C SOC2@41.281C Tdiode@34.5C SOC0@41.968C CV1@-256C GPU@46.8C tj@46.8C "
    "SOC1@41.062C CV2@-256C VDD_GPU_SOC 9787mW/8120mW VDD_CPU_CV 1198mW/1003mW VIN_SYS_5V0 4223mW/4101mW NC "
    "0mW/0mW VDDQ_VDD2_1V8AO 903mW/850mW NC 0mW/0mW"
)
AGX_ORIN_IDLE = (  # JetPack 5: idle GPU as "0%@[305,305]"
    "RAM 1968/30536MB (lfb 7046x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@2201,0%@2201,0%@2201,0%@2201,off,off,off,"
    "off,off,off,off,off] EMC_FREQ 0%@3199 GR3D_FREQ 0%@[305,305] VIC_FREQ 729 APE 174 CV0@-256C CPU@41.5C "
    "Tboard@31C SOC2@38.906C Tdiode@32.25C SOC0@39.218C CV1@-256C GPU@39.406C tj@41.5C SOC1@38.75C CV2@-256C "
    "VDD_GPU_SOC 2787mW/2787mW VDD_CPU_CV 398mW/398mW VIN_SYS_5V0 2626mW/2626mW NC 0mW/0mW VDDQ_VDD2_1V8AO "
    "301mW/301mW NC 0mW/0mW"
)
ORIN_NANO = (
    "RAM 2253/7620MB (lfb 1138x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@1510,0%@1510,0%@1510,0%@1510,0%@1510,"
    "0%@1510] EMC_FREQ 0%@2133 GR3D_FREQ 99%@[624] VIC_FREQ 115 APE 200 CV0@-256C CPU@46.218C SOC2@44.406C "
    "SOC0@45.281C CV1@-256C GPU@47.1C tj@47.1C SOC1@44.375C CV2@-256C VDD_IN 7893mW/6012mW VDD_CPU_GPU_CV "
    "2524mW/1830mW VDD_SOC 1935mW/1702mW"
)
XAVIER_NX = (  # JetPack 4: no units, GPU load without a bracket
    "RAM 2150/7765MB (lfb 1050x4MB) SWAP 0/3883MB (cached 0MB) CPU [2%@1190,1%@1190,0%@1190,0%@1190,off,off] "
    "EMC_FREQ 0% GR3D_FREQ 0% AO@34C GPU@34.5C PMIC@50C AUX@33.5C CPU@35C thermal@34.2C VDD_IN 3614/3614 "
    "VDD_CPU_GPU_CV 490/490 VDD_SOC 1145/1145"
)
JETPACK4 = (
    "RAM 1845/3964MB (lfb 81x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [12%@1479,6%@1479,"
    "9%@1479,4%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 76%@921 APE 25 PLL@31C CPU@33.5C PMIC@100C GPU@32C AO@40.5C "
    "thermal@32.75C POM_5V_IN 4512/3914 POM_5V_GPU 1450/1102 POM_5V_CPU 603/540"
)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "jetson_power.py"


def _tool(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, **kwargs)


def test_agx_orin_sums_its_rails_without_nc_and_temperatures():
    s = parse_tegrastats_line(AGX_ORIN, 1.5)
    assert s.clock == "11-22-2026 10:15:02" and s.time_s == 1.5 and s.gpu_load == 87.0
    assert s.rails == {
        "VDD_GPU_SOC": (9787, 8120),
        "VDD_CPU_CV": (1198, 1003),
        "VIN_SYS_5V0": (4223, 4101),
        "VDDQ_VDD2_1V8AO": (903, 850),
    }  # NC dropped; temperatures (CPU@44.468C, CV0@-256C) and RAM/SWAP are not rails
    assert total_power_mw(s) == ("sum(VDD_GPU_SOC,VDD_CPU_CV,VIN_SYS_5V0,VDDQ_VDD2_1V8AO)", 9787 + 1198 + 4223 + 903)
    idle = parse_tegrastats_line(AGX_ORIN_IDLE)
    assert idle.gpu_load == 0.0 and idle.clock is None and idle.rails["VDD_GPU_SOC"] == (2787, 2787)
    assert total_power_mw(idle)[1] == 2787 + 398 + 2626 + 301


def test_boards_with_an_input_rail_use_it():
    nano = parse_tegrastats_line(ORIN_NANO)
    assert nano.clock is None and nano.gpu_load == 99.0
    assert nano.rails == {"VDD_IN": (7893, 6012), "VDD_CPU_GPU_CV": (2524, 1830), "VDD_SOC": (1935, 1702)}
    assert total_power_mw(nano) == ("VDD_IN", 7893)
    xavier_nx = parse_tegrastats_line(XAVIER_NX)
    assert xavier_nx.gpu_load == 0.0 and total_power_mw(xavier_nx) == ("VDD_IN", 3614)
    assert set(xavier_nx.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    old = parse_tegrastats_line(JETPACK4)
    assert old.rails == {"POM_5V_IN": (4512, 3914), "POM_5V_GPU": (1450, 1102), "POM_5V_CPU": (603, 540)}
    assert old.gpu_load == 76.0 and total_power_mw(old) == ("POM_5V_IN", 4512)


def test_a_board_without_power_monitor_parses_but_has_no_total():
    nano_2gb = JETPACK4.split(" POM_5V_IN")[0]  # the Nano 2GB has no INA3221: no rails at all
    sample = parse_tegrastats_line(nano_2gb)
    assert sample.rails == {} and sample.gpu_load == 76.0
    with pytest.raises(ValueError, match="no power rails"):
        total_power_mw(sample)


@pytest.mark.parametrize(
    "line",
    ["", "   \n", "hello world", "Traceback (most recent call last):", "12 34", "VDD_IN 1000/1000", "RAM 1/2 GB"],
)
def test_lines_that_are_not_tegrastats(line):
    assert parse_tegrastats_line(line) is None


def _samples(powers_mw, step_s=0.5):
    return [TegrastatsSample(time_s=i * step_s, rails={"VDD_IN": (p, p)}) for i, p in enumerate(powers_mw)]


def test_energy_is_exact_for_constant_and_linear_power():
    constant = energy_joules(_samples([5000] * 5), 0.0, 2.0)  # 5 W for 2 s
    assert constant == {"energy_j": pytest.approx(10.0), "mean_power_w": pytest.approx(5.0), "rail": "VDD_IN",
                        "samples": 5}  # fmt: skip
    ramp = _samples([1000, 2000, 3000, 4000, 5000])  # 1 W at t = 0, +2 W/s
    assert energy_joules(ramp, 0.0, 2.0)["energy_j"] == pytest.approx(6.0)  # trapezoid is exact on a line
    uneven = _samples([1000, 3000, 2000])  # 0..0.5 s: 1 -> 3 W, 0.5..1 s: 3 -> 2 W
    assert energy_joules(uneven, 0.0, 1.0)["energy_j"] == pytest.approx(0.5 * 2.0 + 0.5 * 2.5)


def test_energy_is_clipped_to_the_window_and_never_extrapolated():
    ramp = _samples([1000, 2000, 3000, 4000, 5000])
    # 0.25..1.25 s: the edges interpolated (1.5 W, 3.5 W), the samples at 0.5 and 1.0 s inside
    window = energy_joules(ramp, 0.25, 1.25)
    assert window["energy_j"] == pytest.approx(2.5) and window["mean_power_w"] == pytest.approx(2.5)
    assert window["samples"] == 4  # 0, 0.5, 1.0 and 1.5 s
    inside_one_gap = energy_joules(ramp, 0.1, 0.2)  # between two samples: 1.2 .. 1.4 W
    assert inside_one_gap["energy_j"] == pytest.approx(0.1 * 1.3) and inside_one_gap["samples"] == 2
    steps = [TegrastatsSample(0.0, {"VDD_IN": (1000, 0)}), TegrastatsSample(1.0, {"VDD_IN": (1000, 0)}),
             TegrastatsSample(1.0, {"VDD_IN": (9000, 0)}), TegrastatsSample(2.0, {"VDD_IN": (9000, 0)})]  # fmt: skip
    assert energy_joules(steps, 0.0, 2.0)["energy_j"] == pytest.approx(10.0)  # a step at 1 s
    assert energy_joules(list(reversed(ramp)), 0.0, 2.0)["energy_j"] == pytest.approx(6.0)  # order of arrival
    assert energy_joules(ramp, 1.0, 3.0) is None  # past the last sample
    assert energy_joules(ramp, -0.1, 1.0) is None  # before the first
    assert energy_joules(ramp, 1.0, 1.0) is None  # empty window
    assert energy_joules(ramp[:1], 0.0, 0.1) is None
    no_rails = [TegrastatsSample(t, {}) for t in (0.0, 1.0, 2.0)]
    assert energy_joules(no_rails, 0.5, 1.5) is None


def _printer(lines, then_sleep_s: float) -> list[str]:
    """A real process that prints recorded tegrastats lines 50 ms apart, then sleeps (or exits)."""
    script = (
        "import sys, time\n"
        f"for line in {lines!r}:\n"
        "    print(line, flush=True)\n"
        "    time.sleep(0.05)\n"
        f"time.sleep({then_sleep_s})\n"
    )
    return [sys.executable, "-c", script]


def test_power_sampler_reads_a_real_process_and_stops_it():
    lines = [ORIN_NANO, ORIN_NANO.replace("VDD_IN 7893mW", "VDD_IN 6893mW"), "not a line", "", ORIN_NANO]
    start = time.perf_counter()
    with PowerSampler(command=_printer(lines, then_sleep_s=60)) as sampler:
        assert sampler.wait_for_samples(3, timeout_s=20)
        assert sampler.running
        samples = sampler.samples
    assert not sampler.running  # stopped with the context, long before its 60 s sleep
    assert [total_power_mw(s)[1] for s in samples] == [7893, 6893, 7893]
    assert start < samples[0].time_s < samples[1].time_s < samples[2].time_s < time.perf_counter()
    energy = sampler.energy(samples[0].time_s, samples[2].time_s)
    assert energy["rail"] == "VDD_IN" and energy["samples"] == 3
    assert 6.893 < energy["mean_power_w"] < 7.893
    assert sampler.energy(samples[0].time_s, samples[2].time_s + 1.0) is None  # not covered
    sampler.stop()  # idempotent


def test_power_sampler_keeps_its_samples_when_the_process_dies(caplog):
    with PowerSampler(command=_printer([JETPACK4, JETPACK4], then_sleep_s=0)) as sampler:
        assert not sampler.wait_for_samples(3, timeout_s=20)  # the process ended after two lines
        deadline = time.perf_counter() + 10
        while sampler.running and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert not sampler.running
    assert len(sampler.samples) == 2 and sampler.samples[0].rails["POM_5V_IN"] == (4512, 3914)
    assert sampler.energy(sampler.samples[0].time_s, sampler.samples[1].time_s)["rail"] == "POM_5V_IN"
    assert "stopped printing after 2 samples" in caplog.text


def test_power_sampler_errors():
    with pytest.raises(FileNotFoundError):
        PowerSampler(command=["/nonexistent/tegrastats"])
    with pytest.raises(ValueError, match="interval_ms"):
        PowerSampler(interval_ms=0, command=[sys.executable, "-c", "pass"])
    if tegrastats_path() is None:
        with pytest.raises(FileNotFoundError, match="tegrastats not found"):
            PowerSampler()
    assert PowerSampler.tegrastats_path() == tegrastats_path()


def test_tool_summarizes_a_recorded_log(tmp_path):
    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join([ORIN_NANO] * 11 + ["tegrastats: interrupted", ""]) + "\n")
    out = tmp_path / "power.jsonl"
    run = _tool("--from-log", log, "--interval-ms", "100", "--out", out)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "11 samples over 1.00 s: mean power 7.89 W, energy 7.89 J (rail VDD_IN)"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 11 and lines[-1]["t"] == pytest.approx(1.0)
    assert lines[0] == {"t": 0.0, "rails": {"VDD_IN": [7893, 6012], "VDD_CPU_GPU_CV": [2524, 1830],
                                            "VDD_SOC": [1935, 1702]}, "gpu_load": 99.0}  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_tool_times_a_log_by_its_clock_prefixes(tmp_path):
    head = "11-22-2026 10:15:"
    log = tmp_path / "tegrastats.log"
    agx = [AGX_ORIN.replace("10:15:02", f"10:15:{s:02d}") for s in (2, 3, 5)]  # 1 s interval, one line lost
    log.write_text("\n".join(agx) + "\n")
    run = _tool("--from-log", log, "--interval-ms", "100")
    assert run.returncode == 0, run.stderr
    total_w = (9787 + 1198 + 4223 + 903) / 1e3
    assert f"3 samples over 3.00 s: mean power {total_w:.2f} W, energy {3 * total_w:.2f} J" in run.stdout
    assert "rail sum(VDD_GPU_SOC,VDD_CPU_CV,VIN_SYS_5V0,VDDQ_VDD2_1V8AO)" in run.stdout
    log.write_text("\n".join([f"{head}02 {ORIN_NANO}"] * 3) + "\n")  # 100 ms interval: repeated seconds
    assert "3 samples over 0.20 s" in _tool("--from-log", log, "--interval-ms", "100").stdout


def test_tool_wraps_a_command_and_passes_its_exit_code(tmp_path):
    printer = tmp_path / "fake tegrastats.py"  # a space in the path: the option is split like a shell would
    printer.write_text(f"import time\nwhile True:\n    print({JETPACK4!r}, flush=True)\n    time.sleep(0.02)\n")
    out = tmp_path / "power.jsonl"
    run = _tool("--out", out, "--tegrastats-command", shlex.join([sys.executable, str(printer)]), "--",
                sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)")  # fmt: skip
    assert run.returncode == 3, run.stderr
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(samples) >= 3 and samples[0]["rails"]["POM_5V_IN"] == [4512, 3914]
    assert samples[0]["gpu_load"] == 76.0
    assert all(0 < a["t"] <= b["t"] for a, b in itertools.pairwise(samples))
    assert "command exited with 3 after" in run.stderr and "mean power 4.51 W" in run.stderr
    assert "rail POM_5V_IN" in run.stderr and run.stdout == ""


def test_tool_keeps_the_samples_on_ctrl_c(tmp_path):
    printer = [sys.executable, "-c", f"import time\nwhile True:\n    print({ORIN_NANO!r}, flush=True)\n"
               "    time.sleep(0.02)\n"]  # fmt: skip
    started = tmp_path / "started"
    child = (  # dies of SIGINT silently, as a non-Python command would
        "import pathlib, signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        f"pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    )
    out = tmp_path / "power.jsonl"
    tool = subprocess.Popen(
        [sys.executable, TOOL, "--out", out, "--tegrastats-command", shlex.join(printer), "--",
         sys.executable, "-c", child],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.perf_counter() + 30
    while not started.exists() and time.perf_counter() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # some samples
    tool.send_signal(signal.SIGINT)  # to the tool only: it passes the interrupt on to the command
    _, err = tool.communicate(timeout=30)
    assert tool.returncode == 128 + signal.SIGINT, err  # the command died of the SIGINT passed on
    assert "mean power 7.89 W" in err and "Traceback" not in err
    assert len(out.read_text().splitlines()) >= 3


def test_tool_without_tegrastats_is_a_one_line_error(tmp_path):
    if Path("/usr/bin/tegrastats").exists():
        pytest.skip("this machine has tegrastats")
    env = {**os.environ, "PATH": str(tmp_path)}  # no tegrastats on PATH
    run = _tool("--out", tmp_path / "p.jsonl", "--", "true", env=env)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "tegrastats not found" in run.stderr and "--from-log" in run.stderr and "Jetson" in run.stderr
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-log", "missing.log"], "does not exist"),
        (["--from-log", "garbage.log"], "holds no tegrastats lines"),
        (["--out", "no/such/dir/p.jsonl", "--", "true"], "directory of --out"),
        (["--interval-ms", "0", "--from-log", "garbage.log"], "--interval-ms must be > 0"),
        (["--out", "p.jsonl"], "give the command to run after --"),
        (["--out", "p.jsonl", "--tegrastats-command", "sleep 30", "--", "/nonexistent/cmd"], "cannot run"),
    ],
)
def test_tool_bad_input_is_a_one_line_error(tmp_path, args, message):
    (tmp_path / "garbage.log").write_text("hello\nworld\n")
    run = _tool(*args, cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


def _fake_jetson(root: Path, cpu_freqs: list[tuple[str, str]], online: str | None = None) -> None:
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\0")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0, GCID: 36923193\nmore\n")
    for cpu, (low, high) in enumerate(cpu_freqs):
        freq = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "scaling_min_freq").write_text(f"{low}\n")
        (freq / "scaling_max_freq").write_text(f"{high}\n")
    if online is not None:
        (root / "sys/devices/system/cpu/online").write_text(f"{online}\n")


def test_jetson_environment_on_a_fake_root(tmp_path):
    assert jetson_environment(root=tmp_path, nvpmodel=("false",)) is None  # not a Jetson
    _fake_jetson(tmp_path, [("2201600", "2201600"), ("2201600", "2201600")])
    nvpmodel = tmp_path / "nvpmodel"
    nvpmodel.write_text("#!/bin/sh\nprintf 'NV Power Mode: MAXN\\n0\\n'\n")
    nvpmodel.chmod(0o755)
    env = jetson_environment(root=tmp_path, nvpmodel=(str(nvpmodel), "-q"))
    assert env == {
        "jetson_model": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t_release": "# R36 (release), REVISION: 3.0, GCID: 36923193",
        "power_mode": "MAXN",
        "jetson_clocks": True,
    }
    nvpmodel.write_text("#!/bin/sh\necho 'NVPM WARN: patching tpc_pg_mask' >&2\nprintf 'NV Power Mode: 15W\\n2\\n'\n")
    assert jetson_environment(root=tmp_path, nvpmodel=(str(nvpmodel),))["power_mode"] == "15W"
    (tmp_path / "sys/devices/system/cpu/cpu1/cpufreq/scaling_min_freq").write_text("729600\n")
    unpinned = jetson_environment(root=tmp_path, nvpmodel=(str(tmp_path / "no-nvpmodel"),))
    assert unpinned["jetson_clocks"] is False and unpinned["power_mode"] is None


def test_jetson_clocks_ignores_offline_cpus_and_missing_files(tmp_path):
    # cpu2 is offline (a fewer-core power mode): jetson_clocks leaves it alone
    _fake_jetson(tmp_path, [("2201600", "2201600"), ("2201600", "2201600"), ("115200", "2201600")], online="0-1")
    assert jetson_environment(root=tmp_path, nvpmodel=("false",))["jetson_clocks"] is True
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-2\n")
    assert jetson_environment(root=tmp_path, nvpmodel=("false",))["jetson_clocks"] is False
    bare = tmp_path / "bare"
    (bare / "etc").mkdir(parents=True)
    (bare / "etc/nv_tegra_release").write_text("# R32 (release), REVISION: 7.1\n")  # no device tree, no cpufreq
    env = jetson_environment(root=bare, nvpmodel=("false",))
    assert env == {"jetson_model": None, "l4t_release": "# R32 (release), REVISION: 7.1", "power_mode": None,
                   "jetson_clocks": None}  # fmt: skip
