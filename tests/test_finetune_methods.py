"""finetune.py with every fine-tuning method (--method) and the lm task, end to end on tiny files: what trains,
adapters that reload to the same scores, the prediction tools on base + adapter, AdaLoRA's budget, forgetting
and rehearsal, resuming."""

import itertools
import json
import random
import shutil

import numpy as np
import pytest
import torch

import finetune
import pretrain
from charformer import segment
from charformer.checkpoint import load_weights
from charformer.errors import CharformerError
from charformer.objectives import CausalLM
from charformer.peft import METHODS, apply_method, load_adapted_checkpoint, read_adapter_meta
from charformer.segment import format_words
from charformer.tasks.jobs import TaskConfig, read_task_files
from charformer.tasks.checkpoint import load_task_checkpoint, pretrained_config
from charformer.tasks.model import build_task_model
from charformer.tasks.objectives import ClassificationObjective, TaggingObjective
from charformer.tasks.predict import tag_texts
from charformer.tasks.schemes import spans_to_words
from charformer.vocab import CharVocab
from tests.helpers import train_losses, write_task_files
from tests.test_finetune_cli import TINY

MODEL = TINY[:10]  # the architecture and batch size of TINY, for pretraining the bases
OLD, NEW = "我们在北京天安门中国人民站起来了", "山高水长风轻云淡"  # the LM's pretraining and new characters


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    paths = write_task_files(root, n_train=40, n_eval=8, tasks=("cws", "classify"), rng=rng)
    paths["raw"] = root / "raw.txt"
    paths["raw"].write_text("我们在北京天安门\n中国人民站起来了\n" * 40, encoding="utf-8")
    # A text the LM learns (OLD), and a new one that shares a few of its characters and brings unseen ones.
    for name, alphabet, n in (("old_train", OLD, 3000), ("old_val", OLD, 400), ("new_train", NEW + OLD[:4], 3000),
                              ("new_dev", NEW + OLD[:4], 300), ("new_test", NEW + OLD[:4], 300)):
        paths[name] = root / f"{name}.txt"
        paths[name].write_text("".join(rng.choice(alphabet) for _ in range(n)), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def mlm_base(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("mlm")
    pretrain.main(["--data", str(data["raw"]), "--out", str(out), "--objective", "mlm", "--max-steps", "5", *MODEL])
    return out


@pytest.fixture(scope="module")
def clm_base(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("clm")
    pretrain.main(["--data", str(data["old_train"]), "--val", str(data["old_val"]), "--out", str(out), "--max-steps",
                   "30", "--lr", "1e-2", *MODEL])
    return out


def _finetune(data, task, out, init, *extra):
    return finetune.main(["--task", task, "--train", str(data[task, "train"]), "--dev", str(data[task, "dev"]),
                          "--test", str(data[task, "test"]), "--init", str(init), "--out", str(out), *TINY, *extra])


def _results(out):
    return json.loads((out / "results.json").read_text())


def _score(out, task, path, **load):
    """The task metrics of OUT/best on the file `path`, from a model loaded afresh."""
    model, vocab, desc = load_task_checkpoint(out, **load)
    examples = read_task_files(task, TaskConfig(), {"x": str(path)})["x"]
    kind = ClassificationObjective if task == "classify" else TaggingObjective
    # The batches of training's evaluation (finetune.py's default eval batch size): another batching pads rows
    # differently, and on these barely trained models a float-rounding difference can flip a tied Viterbi path.
    objective = kind(desc, [], [], vocab, block_size=model.body.cfg.block_size, batch_size=8,
                     eval_batch_size=TaskConfig().eval_batch_size)
    with torch.no_grad():
        return objective.score(model, examples)


CASES = [(method, "cws") for method in METHODS] + [("prefix", "classify")]


@pytest.mark.parametrize("method, task", CASES)
def test_every_method_trains_what_it_should_and_its_best_reloads_to_the_same_scores(data, mlm_base, tmp_path,
                                                                                    method, task):
    options = {"adalora": ["--adalora-r", "4", "--adalora-target-rank", "2"]}.get(method, [])
    assert _finetune(data, task, tmp_path, mlm_base, "--method", method, "--max-steps", "8", *options) == 0
    r = _results(tmp_path)
    assert r["method"] == method and r["steps"] == 8
    base_bytes = (mlm_base / "best" / "model.safetensors").stat().st_size
    if method == "full":
        assert r["trainable_share"] == 1 and (tmp_path / "best" / "model.safetensors").is_file()
    else:
        assert 0 < r["trainable_share"] < 1 and r["trainable_params"] < r["total_params"]
        meta = read_adapter_meta(tmp_path / "best")
        assert meta["method"] == method and meta["base"]["path"] == str((mlm_base / "best").absolute())
        # adapter_bytes is what best/ takes on disk; its tensors are the trained ones and the head, not the model
        # (compared tensor file to tensor file: the JSON beside them holds paths whose length varies by machine)
        best_files = list((tmp_path / "best").iterdir())
        assert r["adapter_bytes"] == sum(f.stat().st_size for f in best_files)
        assert (tmp_path / "best" / "adapter.safetensors").stat().st_size < base_bytes / 4
    metric = "accuracy" if task == "classify" else "f1"
    # Evaluation only at the last step (TINY's --eval-interval), so best/ holds the final state.
    assert _score(tmp_path, task, data[task, "dev"])[metric] == r[f"dev_best_{metric}"]
    assert _score(tmp_path, task, data[task, "test"])[metric] == r["test_after"][metric]
    if method == "adalora":  # 1 block x 6 adapted layers x rank 2
        assert r["adalora_final_total_rank"] == r["adalora_best_total_rank"] == r["adalora_target_total_rank"] == 12
        assert len(r["adalora_final_ranks"]) == 6 and all(0 <= k <= 4 for k in r["adalora_final_ranks"].values())


def test_prediction_tool_on_base_plus_adapter_matches_the_trained_model(data, mlm_base, tmp_path, capsysbinary):
    out = tmp_path / "lora"
    assert _finetune(data, "cws", out, mlm_base, "--method", "lora", "--lora-targets", "all", "--max-steps", "8") == 0
    meta = read_adapter_meta(out / "best")
    # The model exactly as training left it: base + the method's modules, every tensor from last/.
    cfg, vocab = pretrained_config(mlm_base)
    trained = build_task_model(cfg, meta["task"])
    apply_method(trained.body, "lora", **meta["options"])
    load_weights(trained, out / "last")
    lines = ["中国人民站起来了", "我们在北京天安门ABC", "天安门" * 12]  # the last one spans several windows
    with torch.no_grad():
        spans = tag_texts(trained.eval(), vocab, lines, batch_size=2, overlap=4)
    expected = "".join(format_words(spans_to_words(line, s)) + "\n" for line, s in zip(lines, spans))
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    moved = tmp_path / "moved_base"
    shutil.copytree(mlm_base / "best", moved)
    for extra in ([], ["--base", str(moved)]):  # the base adapter.json names, and one that has moved
        capsysbinary.readouterr()
        assert segment.main(["--ckpt", str(out), str(tmp_path / "in.txt"), "--device", "cpu", *extra]) == 0
        assert capsysbinary.readouterr().out.decode("utf-8") == expected
    other = tmp_path / "other_base"
    pretrain.main(["--data", str(data["raw"]), "--out", str(other), "--objective", "mlm", "--max-steps", "2",
                   "--seed", "7", *MODEL])
    with pytest.raises(CharformerError, match="adapter was made for another base"):
        segment.main(["--ckpt", str(out), str(tmp_path / "in.txt"), "--base", str(other)])


@pytest.mark.parametrize("method", ["full", "freeze", "prefix"])
def test_lm_continuation_measures_forgetting_with_rehearsal(data, clm_base, tmp_path, capsys, method):
    out = tmp_path / method
    args = ["--task", "lm", "--init", str(clm_base), "--train", str(data["new_train"]), "--dev", str(data["new_dev"]),
            "--test", str(data["new_test"]), "--original-val", str(data["old_val"]), "--rehearsal-data",
            str(data["old_train"]), "--rehearsal-share", "0.25", "--out", str(out), "--method", method,
            "--max-steps", "20", "--eval-interval", "10", "--sample-chars", "10", *MODEL, "--lr", "1e-2"]
    assert finetune.main(args) == 0
    r = _results(out)
    assert capsys.readouterr().out.count("sample: ") == 2  # one per evaluation
    pretrained = json.loads((clm_base / "results.json").read_text())
    assert r["original_bpc_before"] == pytest.approx(pretrained["val_bpc"], abs=1e-5)  # the same text, the same model
    for when in ("before", "after"):
        assert set(r[f"test_{when}"]) == {"loss", "bpc", "chars"} and r[f"original_{when}"]["chars"] == 400
        assert isinstance(r[f"original_bpc_{when}"], float)
    assert r["rehearsal_rows_per_batch"] == 2  # 0.25 x batch 8
    assert r["coverage"]["original"]["coverage"] == 1 and r["coverage"]["train"]["unseen_distinct"] == len(NEW)
    assert r["test_after"]["bpc"] < r["test_before"]["bpc"]
    if method == "freeze":  # the LM's head: its output layer, tied to the input embedding (vocab x d_model)
        assert r["trainable_params"] == len(CharVocab.load(clm_base / "best" / "vocab.json")) * 32
    if method != "full":
        model, _, meta = load_adapted_checkpoint(out)
        assert meta["method"] == method and not model.training
    assert r["dev_after"]["loss"] == pytest.approx(r["dev_best_loss"], abs=1e-5)


def test_rehearsal_rows_come_from_the_original_text():
    vocab = CharVocab("abc")
    new, old = np.full(100, 7, dtype=np.uint16), np.full(100, 9, dtype=np.uint16)
    lm = CausalLM(new, new, vocab, block_size=4, batch_size=8, rehearsal_tokens=old, rehearsal_share=0.25)
    x, _ = lm.batch(torch.Generator().manual_seed(0))
    assert x.shape == (8, 4) and (x[:6] == 7).all() and (x[6:] == 9).all()
    plain = CausalLM(new, new, vocab, block_size=4, batch_size=8)  # no rehearsal: the same draws as before
    with_zero = CausalLM(new, new, vocab, block_size=4, batch_size=8, rehearsal_tokens=old, rehearsal_share=0.0)
    draw = [objective.batch(torch.Generator().manual_seed(1))[0] for objective in (plain, with_zero)]
    assert torch.equal(*draw)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_interrupted_run_resumes_on_the_same_curve(data, mlm_base, tmp_path, monkeypatch, method):
    args = ["--method", method, "--max-steps", "12", "--eval-interval", "4", "--log-interval", "1"]
    assert _finetune(data, "cws", tmp_path / "straight", mlm_base, *args) == 0

    calls, draw = itertools.count(), TaggingObjective.batch

    def interrupted(self, generator):  # Ctrl-C as step 6 starts: fit saves last/ and stops
        if next(calls) == 6:
            raise KeyboardInterrupt
        return draw(self, generator)

    with monkeypatch.context() as patch:
        patch.setattr(TaggingObjective, "batch", interrupted)
        with pytest.raises(CharformerError, match="interrupted at step 6"):
            _finetune(data, "cws", tmp_path / "resumed", mlm_base, *args)
    assert _finetune(data, "cws", tmp_path / "resumed", mlm_base, *args, "--resume") == 0

    assert train_losses(tmp_path / "resumed") == pytest.approx(train_losses(tmp_path / "straight"), abs=1e-6)
    straight, resumed = _results(tmp_path / "straight"), _results(tmp_path / "resumed")
    assert resumed["test_after"] == straight["test_after"]
    if method == "adalora":  # the controller's importance scores came back too: the same layers kept
        assert resumed["adalora_final_ranks"] == straight["adalora_final_ranks"]
    with pytest.raises(CharformerError, match="resume with the same --method"):
        _finetune(data, "cws", tmp_path / "resumed", mlm_base, *args, "--resume", "--method", "adapter")


def test_method_errors(data, mlm_base, tmp_path):
    cases = [
        (["--init", "scratch", "--method", "lora"], "adapts a pretrained base"),
        (["--method", "adapter", "--lora-r", "4"], "--lora-r: not used by --method adapter"),
        (["--method", "lora", "--freeze", "bottom:1"], "refines --method full"),
        (["--method", "prefix", "--freeze", "body"], "--freeze body means --method freeze"),
        (["--method", "lora", "--lora-targets", "gate"], "unknown target"),
        (["--method", "adalora", "--adalora-target-rank", "20"], "adalora: target_rank"),
        (["--method", "lora", "--fsdp"], "--fsdp is for --method full"),
    ]
    for extra, message in cases:
        with pytest.raises(CharformerError, match=message):
            _finetune(data, "cws", tmp_path / "x", mlm_base, "--max-steps", "2", *extra)
    lm = ["--task", "lm", "--train", str(data["new_train"]), "--dev", str(data["new_dev"]),
          "--out", str(tmp_path / "y"), *MODEL]
    with pytest.raises(CharformerError, match="bidirectional"):
        finetune.main([*lm, "--init", str(mlm_base)])
    with pytest.raises(CharformerError, match="--rehearsal-share needs --rehearsal-data"):
        finetune.main([*lm, "--init", str(mlm_base), "--rehearsal-share", "0.5"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
