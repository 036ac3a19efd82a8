"""The command line as a whole: the `charformer` command and its subcommands, what the prediction tools import,
every option's --help sentence, the curves plot and TensorBoard logging."""

import contextlib
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import finetune
import pretrain
from charformer import command
from charformer.runlog import plot_curves, read_metrics
from tests.helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL, "--block-size", "16", "--batch-size", "4", "--device", "cpu", "--log-interval", "1"]


def _charformer(capsysbinary, *argv: str) -> tuple[int, str]:
    """Run ``charformer ARGV`` in this process; returns its exit status and what it wrote to stdout."""
    capsysbinary.readouterr()
    with pytest.raises(SystemExit) as stop:
        command.main(list(argv))
    return stop.value.code or 0, capsysbinary.readouterr().out.decode()


def test_prediction_tools_import_no_training_code():
    # torch itself imports tqdm when it is installed (torch.hub), so the child refuses to import it, matplotlib and
    # charformer.train at all: torch falls back to its own stand-in, and a tool that needed any of them would fail.
    code = """if True:
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tqdm", "matplotlib") or name == "charformer.train":
                    raise ImportError("refused: " + name)
        sys.meta_path.insert(0, Refuse())
        import charformer.segment, charformer.tag, charformer.classify, charformer.sample
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tqdm", "matplotlib") or m.startswith("charformer.train")))
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_charformer_help_lists_every_subcommand_and_pyproject_declares_it():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["charformer"] == "charformer.command:main"
    proc = subprocess.run([sys.executable, "-m", "charformer", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in ("pretrain", "finetune", "sample", "segment", "tag", "classify", "bench", *command.BENCHMARKS):
        assert f"\n  {name} " in proc.stdout, name


@pytest.mark.parametrize("argv", [[name] for name in command.COMMANDS if name != "bench"]
                         + [["bench", name] for name in command.BENCHMARKS], ids=" ".join)
def test_every_subcommand_answers_help_under_its_own_name(argv, capsysbinary):
    status, out = _charformer(capsysbinary, *argv, "--help")
    assert status == 0
    assert out.startswith(f"usage: charformer {' '.join(argv)} ")


def test_subcommands_run_pretrain_sample_segment_and_a_benchmark(tmp_path, tiny_segmenter, capsysbinary):
    corpus = tmp_path / "c.txt"
    corpus.write_text("春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n" * 40, encoding="utf-8")
    status, _ = _charformer(capsysbinary, "pretrain", "--data", str(corpus), "--out", str(tmp_path / "lm"), "--max-steps", "3", *TINY)
    assert status == 0 and (tmp_path / "lm" / "results.json").exists()
    status, out = _charformer(capsysbinary, "sample", "--ckpt", str(tmp_path / "lm"), "--prompt", "春眠", "--max-new-chars", "5",
                              "--device", "cpu", "--seed", "1")
    assert status == 0 and out.startswith("春眠") and 2 <= len(out.rstrip("\n")) <= 7  # may stop at [EOS]

    text = tmp_path / "in.txt"
    text.write_text("中国人民站起来了\n", encoding="utf-8")
    status, out = _charformer(capsysbinary, "segment", "--ckpt", str(tiny_segmenter), "--device", "cpu", str(text))
    assert status == 0 and out.replace(" ", "") == "中国人民站起来了\n"

    bench_out = tmp_path / "step_time.json"
    status, _ = _charformer(capsysbinary, "bench", "step_time", "--rounds", "1", "--steps", "2", "--warmup", "1", "--n-layers", "1",
                            "--d-model", "32", "--n-heads", "2", "--block-size", "16", "--out", str(bench_out))
    assert status == 0 and "ratio_charformer_over_plain" in bench_out.read_text()


@pytest.mark.parametrize("script", [pretrain, finetune], ids=["pretrain", "finetune"])
def test_every_training_option_explains_itself(script):
    for action in script.build_parser()._actions:
        if action.dest == "help":
            continue
        sentence = (action.help or "").split(" (default:")[0]
        assert len(sentence.split()) >= 2, f"{action.option_strings}: {action.help!r}"


def test_curves_drop_constant_panels_and_label_the_subset_estimate(tmp_path):
    records = [{"step": s, "train_loss": 4.0 - s / 10, "lr": 1e-3} for s in range(1, 21)]
    records += [{"step": 10, "val_loss": 3.5, "val_bpc": 5.05, "val_chars": 2560},
                {"step": 20, "val_loss": 3.1, "val_bpc": 4.47, "val_chars": 2560}]
    panels = plot_curves(records, tmp_path / "c.png", final={"val_loss": 3.0, "val_bpc": 4.33, "val_chars": 14_000})
    assert panels == {
        "loss": ["train_loss", "val_loss (periodic estimate on 2,560 chars)",
                 "val_loss, whole split after training (14,000 chars)"],
        "val_bpc": ["val_bpc (periodic estimate on 2,560 chars)", "val_bpc, whole split after training (14,000 chars)"],
    }
    assert (tmp_path / "c.png").stat().st_size > 1000
    # when the periodic evaluation already scored the whole split, it is not called an estimate
    whole = plot_curves(records, tmp_path / "d.png", final={"val_loss": 3.0, "val_chars": 2560})
    assert whole["loss"][1] == "val_loss (periodic, on all 2,560 chars)"


def test_tensorboard_events_hold_the_metrics_jsonl_records(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert pretrain.main(["--data", str(corpus), "--out", str(out), "--max-steps", "4", "--eval-interval", "2",
                              "--tensorboard", *TINY]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [(r["step"], r["train_loss"]) for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("train_loss")] == logged
    assert [e.step for e in events.Scalars("val_loss")] == [2, 4]
