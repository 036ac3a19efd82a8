"""pretrain.py and charformer.sample end to end, resumption after a kill, and every bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pretrain
from charformer import sample
from charformer.errors import CharformerError
from charformer.runlog import read_metrics
from tests.helpers import TINY_MODEL, train_losses

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL, "--block-size", "16", "--batch-size", "4",
        "--device", "cpu", "--log-interval", "1", "--warmup-steps", "5"]


@pytest.fixture
def corpus(tmp_path):
    text = "".join(f"第{i}行：春眠不觉晓，处处闻啼鸟。To be, or not to be.\n" for i in range(120))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_pretrain_end_to_end_then_sample(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert pretrain.main(["--data", str(corpus), "--out", str(out), "--max-steps", "30", "--eval-interval", "10", *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("val_loss", "val_bpc", "steps", "chars_seen", "wall_seconds", "params"):
        assert key in results
    assert results["steps"] == 30 and results["chars_seen"] == 30 * 4 * 16
    assert results["val_bpc"] == pytest.approx(results["val_loss"] / 0.6931471805599453)
    assert results["val_loss"] < 3.5  # a uniform guess over ~40 characters is ln(47) = 3.85 nats
    assert (out / "curves.png").stat().st_size > 1000
    assert {p.name for p in (out / "last").iterdir()} >= {"model.safetensors", "config.json", "vocab.json", "trainer_state.json"}
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r] == list(range(1, 31))

    capsys.readouterr()
    assert sample.main(["--ckpt", str(out), "--prompt", "春眠", "--max-new-chars", "12", "--seed", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("春眠") and len(printed.rstrip("\n")) >= 2


def test_killed_run_resumes_on_the_same_loss_curve(tmp_path, corpus):
    args = ["--data", str(corpus), "--max-steps", "400", "--eval-interval", "50", *TINY]
    cmd = [sys.executable, str(ROOT / "pretrain.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = max(train_losses(killed))
    assert step_at_kill < 400, "the run finished before it could be killed"
    subprocess.run([*cmd, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True)

    straight, resumed = train_losses(tmp_path / "straight"), train_losses(killed)
    assert sorted(resumed) == list(range(1, 401))
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    a = json.loads((tmp_path / "straight" / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5)


def test_bad_inputs_get_clear_errors_and_overwrite_nothing(tmp_path, corpus):
    run = lambda *a: pretrain.main([*a, "--max-steps", "2", *TINY])  # noqa: E731
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("line one\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(CharformerError, match=r"latin1.txt:2: not valid UTF-8 at byte offset 12 "):
        run("--data", str(latin1), "--out", str(tmp_path / "o1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CharformerError, match="empty"):
        run("--data", str(empty), "--out", str(tmp_path / "o2"))
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3)
    with pytest.raises(CharformerError, match="fewer than one block"):
        run("--data", str(short), "--out", str(tmp_path / "o3"))
    with pytest.raises(CharformerError, match="missing.txt: no such file"):
        run("--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o4"))
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("n_layer = 4\n")
    with pytest.raises(CharformerError, match="bad.toml: unknown option 'n_layer'"):
        run("--config", str(bad_cfg), "--data", str(corpus), "--out", str(tmp_path / "o5"))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))

    out = tmp_path / "done"
    run("--data", str(corpus), "--out", str(out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CharformerError, match="already holds a run"):
        run("--data", str(corpus), "--out", str(out))
    other = tmp_path / "other.txt"
    other.write_text("完全不同的文字" * 200)
    with pytest.raises(CharformerError, match="differ"):  # a new corpus means a new vocabulary
        run("--data", str(other), "--out", str(out), "--resume", "--max-steps", "4")
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run("--data", str(other), "--out", str(out), "--overwrite") == 0  # explicitly asked: replaced
    # 1,400 characters + the newline read_corpus adds: the last 141 are validation text, 140 of them targets
    assert json.loads((out / "results.json").read_text())["val_chars"] == 140


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or folder"
