"""The main job, `python -m pyautodiff.demo`: gradcheck first, progress, timings, and the last line
`test accuracy: NN.N%` at >= 95% with the default options."""
import re
import subprocess
import sys

import pytest

from pyautodiff import demo


def _lines(capsys, argv):
    assert demo.main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_defaults_reach_95_percent_and_report_everything(capsys):
    lines = _lines(capsys, [])
    text = "\n".join(lines)
    assert text.index("gradcheck:") < text.index("epoch   1/20")
    assert "passed" in next(line for line in lines if line.startswith("gradcheck:"))
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 20 and all(re.search(r"loss \d\.\d{4} .*acc.*samples/s$", e) for e in epochs)
    assert re.match(r"time: forward [\d.]+ s, backward [\d.]+ s, update [\d.]+ s", lines[-2])
    m = re.fullmatch(r"test accuracy: (\d+\.\d)%", lines[-1])
    assert m and float(m.group(1)) >= 95.0


def test_options(capsys):
    lines = _lines(capsys, ["--epochs", "2", "--hidden", "8", "--lr", "0.02", "--seed", "3",
                            "--dtype", "float32", "--batch-size", "64"])
    assert "8) -> Linear -> 10" in lines[2] and "float32" in lines[2] and "seed 3" in lines[2]
    assert len([line for line in lines if line.startswith("epoch")]) == 2
    assert re.fullmatch(r"test accuracy: \d+\.\d%", lines[-1])


def test_plot_without_matplotlib_says_so_and_still_trains(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    lines = _lines(capsys, ["--epochs", "1", "--plot", str(tmp_path / "c.png")])
    assert lines[0].startswith("--plot: matplotlib is not installed")
    assert not (tmp_path / "c.png").exists()
    assert lines[-1].startswith("test accuracy:")


def test_plot_is_written_with_matplotlib(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    lines = _lines(capsys, ["--epochs", "2", "--plot", str(path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[-2] == f"plot: wrote {path}" and lines[-1].startswith("test accuracy:")


def test_bad_options_exit_with_usage():
    for argv in (["--epochs", "0"], ["--dtype", "float16"], ["--lr", "-1"]):
        r = subprocess.run([sys.executable, "-m", "pyautodiff.demo", *argv], capture_output=True, text=True)
        assert r.returncode == 2 and "usage:" in r.stderr


def test_cnn_reaches_98_5_percent(capsys):
    # the CNN main job with its defaults (10 epochs, about 10 s here)
    lines = _lines(capsys, ["--model", "cnn"])
    assert "a CNN classifier" in lines[0] and "Conv2d 3x3 (16) -> BatchNorm2d" in lines[2]
    assert lines[3].startswith("gradcheck:") and lines[3].endswith("passed")
    assert len([line for line in lines if line.startswith("epoch")]) == 10
    m = re.fullmatch(r"test accuracy: (\d+\.\d)%", lines[-1])
    assert m and float(m.group(1)) >= 98.5


def test_cnn_resumed_run_is_the_uninterrupted_one(capsys, tmp_path):
    # dropout's generator and batch norm's running statistics are in the checkpoint
    ck = str(tmp_path / "ck.npz")
    straight = _lines(capsys, ["--model", "cnn", "--epochs", "2", "--dtype", "float32"])
    _lines(capsys, ["--model", "cnn", "--epochs", "2", "--dtype", "float32", "--stop-after", "1", "--save", ck])
    resumed = _lines(capsys, ["--model", "cnn", "--epochs", "2", "--dtype", "float32", "--resume", ck])
    epoch2 = [re.sub(r"\s+[\d,]+ samples/s$", "", line) for line in (straight + resumed) if line.startswith("epoch   2")]
    assert len(epoch2) == 2 and epoch2[0] == epoch2[1]
    assert straight[-1] == resumed[-1]
    with pytest.raises(SystemExit, match="--model cnn"):
        demo.main(["--epochs", "2", "--dtype", "float32", "--resume", ck])
