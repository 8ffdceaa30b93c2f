import subprocess
import sys
from pathlib import Path

from ebmrl import cli

REPO = Path(__file__).resolve().parents[1]


def test_check_params_ok(capsys):
    assert cli.main(["--params", str(REPO / "params.yaml"), "check-params"]) == 0
    assert "OK" in capsys.readouterr().out


def test_bad_params_fail_before_any_work(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("demo:\n  num_clips: -3\n  out: " + str(tmp_path / "demo") + "\n")
    assert cli.main(["--params", str(bad), "demo-data"]) == 2
    err = capsys.readouterr().err
    assert "demo.num_clips" in err and "-3" in err
    assert not (tmp_path / "demo").exists()


def test_demo_data_command_uses_its_params_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"demo:\n  out: {tmp_path / 'd'}\n  num_clips: 2\n  num_sessions: 2\n")
    assert cli.main(["--params", str(params), "demo-data"]) == 0
    assert len(list((tmp_path / "d" / "videos").glob("*.mp4"))) == 2


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "ebmrl"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "tiny-models" in result.stdout and "demo-data" in result.stdout
