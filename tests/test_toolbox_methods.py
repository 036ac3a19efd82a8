"""bench.toolbox_methods on tiny data: every row is the finetune.py run it names, the task-adaptive row starts
from a body pretrained further on the task's own text, and the ensemble row scores the same segmentation as
`charformer.segment` given the same checkpoints."""

import json
import shutil

import pytest

import pretrain
from bench import toolbox_methods
from charformer import segment
from charformer.errors import CharformerError
from charformer.tasks.metrics import cws_scores
from charformer.tasks.readers import read_cws, read_labeled
from charformer.tasks.schemes import spans_to_words
from tests.helpers import write_task_files
from tests.test_finetune_cli import TINY

SMALL = ["--max-steps", "4", "--evals", "2", "--batch-size", "4", "--warmup-steps", "1", "--tapt-steps", "3",
         "--ensemble-seeds", "1"]


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods_data")
    paths = write_task_files(root, n_train=24, n_eval=6, tasks=("cws", "classify"))
    dirs = {}
    for task, ext in (("cws", "txt"), ("classify", "tsv")):
        dirs[task] = root / task
        dirs[task].mkdir()
        for split in ("train", "dev", "test"):
            shutil.copy(paths[task, split], dirs[task] / f"{split}.{ext}")
    raw = root / "raw.txt"
    texts = [s.text for s in read_cws(paths["cws", "train"])] + [d.text for d in read_labeled(paths["classify", "train"])]
    raw.write_text("".join(t + "\n" for t in texts) * 4, encoding="utf-8")
    body = root / "mlm"
    assert pretrain.main(["--data", str(raw), "--out", str(body), "--objective", "mlm", "--max-steps", "4",
                          *TINY[:10]]) == 0
    return dirs, body


def test_each_row_is_its_own_run_and_tapt_continues_the_body(task_dirs, tmp_path):
    dirs, body = task_dirs
    out = tmp_path / "senti"
    assert toolbox_methods.main(["--task", "classify", "--init", str(body), "--data", str(dirs["classify"]),
                                 "--out", str(out), "--methods", "plain,fgm,tapt", "--combo", "ema,tapt",
                                 *SMALL]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["plain", "fgm", "tapt", "ema+tapt"]
    for r, run in zip(results["rows"], ("plain", "fgm", "tapt", "combo_ema_tapt")):
        ran = json.loads((out / "runs" / run / "results.json").read_text())
        assert r["test_accuracy"] == ran["test_after"]["accuracy"] and ran["steps"] == 4
    assert json.loads((out / "runs" / "fgm" / "results.json").read_text())["toolbox"]["adversarial"] == "fgm"
    tapt = json.loads((out / "runs" / "tapt_mlm" / "results.json").read_text())
    assert tapt["steps"] == 3 and tapt["init"] == str(body)
    combo = json.loads((out / "runs" / "combo_ema_tapt" / "results.json").read_text())
    assert combo["init"] == str(out / "runs" / "tapt_mlm") and combo["toolbox"]["ema"] == 0.99
    assert results["rows"][3]["flags"] == f"--ema 0.99 --init {out / 'runs' / 'tapt_mlm'}"
    with pytest.raises(CharformerError, match="unknown or uncombinable"):
        toolbox_methods.main(["--task", "classify", "--init", str(body), "--out", str(out), "--combo", "ensemble"])


def test_ensemble_row_scores_what_the_segment_tool_outputs(task_dirs, tmp_path, capsysbinary):
    dirs, body = task_dirs
    out = tmp_path / "cws"
    assert toolbox_methods.main(["--task", "cws", "--init", str(body), "--data", str(dirs["cws"]),
                                 "--out", str(out), "--methods", "ensemble", *SMALL]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["plain", "ensemble"]
    gold = [spans_to_words(s.text, s.spans) for s in read_cws(dirs["cws"] / "test.txt")]
    texts = tmp_path / "texts.txt"
    texts.write_text("".join("".join(w) + "\n" for w in gold), encoding="utf-8")
    capsysbinary.readouterr()
    segment.main(["--ckpt", str(out / "runs" / "plain" / "best"), "--ckpt",
                  str(out / "runs" / "plain_seed1338" / "best"), str(texts)])
    pred = [line.split(" ") for line in capsysbinary.readouterr().out.decode().splitlines()]
    train_words = [w for s in read_cws(dirs["cws"] / "train.txt") for w in spans_to_words(s.text, s.spans)]
    assert rows[1]["test_f1"] == pytest.approx(cws_scores(gold, pred, train_words)["f1"])
