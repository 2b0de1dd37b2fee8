"""Pruning methods as plug-ins, seen from the command line: per-method options and their errors, grouped
help, `list methods`, the nested config.yaml (re-usable with --config, flat files of 0.1 still load) and
--resume with the flags the run was started with."""

from __future__ import annotations

import shutil

import pytest
import yaml

from lappdeploy.io import read_json

TINY = [
    "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples",
    "64", "--synthetic-classes", "4", "--batch-size", "32", "--epochs", "1", "--prune-epochs", "1",
    "--round-to", "1", "--device", "cpu",
]  # fmt: skip


def _one_line_error(result) -> str:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.err, result.err
    return lines[0]


@pytest.fixture(scope="module")
def lapp_run(tmp_path_factory):
    """A finished one-epoch LAPP run (tiny_resnet, synthetic), made through the CLI."""
    from lappdeploy.cli import main

    out = tmp_path_factory.mktemp("methods") / "lapp"
    with pytest.raises(SystemExit) as exc:
        main(["compress", *TINY, "--tau", "0.2", "--out", str(out)])
    assert exc.value.code in (0, None)
    return out


def test_an_option_of_another_method_is_a_one_line_error_naming_both(cli, tmp_path):
    error = _one_line_error(cli("compress", *TINY, "--method", "uniform", "--tau", "0.2", "--out", tmp_path / "a"))
    assert "--tau is an option of method lapp, not of uniform" in error
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: global\npenalty: 3\n")
    error = _one_line_error(cli("compress", *TINY, "--config", recipe, "--out", tmp_path / "b"))
    assert "--penalty is an option of method lapp, not of global" in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_help_lists_the_options_of_each_method_in_its_own_section(cli):
    text = cli("compress", "--help").out
    common, lapp = text.index("Pruning options (every method)"), text.index("lapp options (--method lapp)")
    assert common < text.index("--target-macs FLOAT") < lapp < text.index("--tau FLOAT") < text.index("Run directory")
    assert "[default: 0.1]" in text[lapp:], "a method option shows its method's default"


def test_list_methods_shows_each_method_with_its_options_and_defaults(cli):
    out = cli("list", "methods").out
    for expected in ("lapp (default)", "uniform", "global", "--tau 0.1", "--threshold-lr 0.01", "--target-macs 0.5"):
        assert expected in out, expected


def test_config_yaml_is_nested_by_stage_and_reruns_with_config(lapp_run, cli, tmp_path):
    saved = yaml.safe_load((lapp_run / "config.yaml").read_text())
    assert set(saved) == {"train", "method"}
    assert saved["train"]["model"] == "tiny_resnet" and saved["method"]["name"] == "lapp"
    assert saved["method"]["tau"] == 0.2 and "tau" not in saved["train"]
    assert read_json(lapp_run / "report.json")["method_options"] == saved["method"]
    again = tmp_path / "again"
    result = cli("compress", "--config", lapp_run / "config.yaml", "--out", again)
    assert result.code == 0, result.err
    assert yaml.safe_load((again / "config.yaml").read_text()) == saved


def _partial_copy(run, tmp_path, name="partial"):
    """An interrupted run: the config of `run` and nothing else."""
    partial = tmp_path / name
    partial.mkdir()
    shutil.copy(run / "config.yaml", partial / "config.yaml")
    return partial


def test_resume_accepts_the_flags_the_run_was_started_with(lapp_run, cli, tmp_path):
    partial = _partial_copy(lapp_run, tmp_path)
    result = cli("compress", *TINY, "--tau", "0.2", "--out", partial, "--resume")
    assert result.code == 0, result.err
    assert (partial / "report.json").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tau", "0.3"], "drop --tau"),
        (["--lr", "0.5"], "drop --lr"),
        (["--method", "uniform"], "was compressed with --method lapp"),
        (["--penalty", "2.0", "--target-macs", "0.4"], "drop --target-macs"),
    ],
)
def test_resume_refuses_a_value_that_differs_from_the_saved_one(lapp_run, cli, tmp_path, flags, message):
    partial = _partial_copy(lapp_run, tmp_path)
    error = _one_line_error(cli("compress", "--out", partial, "--resume", *flags))
    assert message in error
    assert sorted(p.name for p in partial.iterdir()) == ["config.yaml"], "nothing written"


def test_a_flat_run_config_of_0_1_is_refused_on_resume_naming_the_version(cli, tmp_path):
    partial = tmp_path / "flat"
    partial.mkdir()
    flat = {flag.lstrip("-").replace("-", "_"): value for flag, value in zip(TINY[::2], TINY[1::2], strict=True)}
    # 0.1 wrote every compress option flat, LAPP's too, whatever the method
    flat.update(method="uniform", target_macs=0.5, tau=0.1, penalty=2.0, threshold_lr=0.01, score="bn")
    (partial / "config.yaml").write_text(yaml.safe_dump(flat))
    result = cli("compress", "--out", partial, "--resume")
    assert result.code == 2 and "written by lappdeploy 0.1" in result.err, result.err
    assert not (partial / "report.json").exists()


def test_the_python_api_resumes_under_the_same_contract(lapp_run, tmp_path):
    """run_compress(resume=True) checks what the CLI checks (rundir.check_resumed_config): the run's own config
    resumes, another value of a method or training option is refused naming it, nothing written."""
    from lappdeploy.errors import ConfigError
    from lappdeploy.methods import method_config, run_compress
    from lappdeploy.rundir import RunDir, read_run_config

    saved = read_run_config(RunDir(lapp_run))
    method = method_config(saved.method)
    for train, changed, flag in (
        (saved.train, method.replace(tau=0.3), "--tau 0.3 (saved: 0.2)"),
        (saved.train.replace(lr=0.5), method, "--lr 0.5"),
    ):
        partial = _partial_copy(lapp_run, tmp_path, name=flag.split()[0].strip("-"))
        with pytest.raises(ConfigError, match=flag.replace("(", r"\(").replace(")", r"\)")):
            run_compress(train, changed, partial, resume=True)
        assert sorted(p.name for p in partial.iterdir()) == ["config.yaml"], "nothing written"
    partial = _partial_copy(lapp_run, tmp_path, name="same")
    assert run_compress(saved.train, method, partial, resume=True)["method"] == "lapp"
