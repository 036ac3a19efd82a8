"""Multi-criteria segmentation (charformer.tasks.criteria): the marker in front of each row, the mixing of the
corpora, and a tiny model that learns two conflicting standards and segments one sentence two ways."""

import json
import random

import pytest
import torch

import finetune
import pretrain
from charformer import segment
from charformer.errors import CharformerError
from charformer.model import CharTransformer, ModelConfig
from charformer.tasks.checkpoint import load_task_checkpoint, save_task_checkpoint
from charformer.tasks.criteria import check_same_standards, mean_scores, mix_shares, parse_corpora
from charformer.tasks.heads import Tagger, TokenTaggingHead
from charformer.tasks.objectives import TaggingObjective
from charformer.tasks.readers import read_cws
from charformer.tasks.segmenter import Segmenter
from charformer.vocab import CharVocab
from tests.helpers import TINY_MODEL
from tests.test_hostile_input import run_tool

# Standard "split" cuts each compound in two (中国 人民), standard "whole" keeps it (中国人民).
COMPOUNDS = ["中国人民", "北京大学", "上海市场", "科学技术", "经济发展", "文化交流"]
SENTENCE = "中国人民北京大学"
TRAIN = [*TINY_MODEL, "--block-size", "16", "--batch-size", "8", "--device", "cpu", "--lr", "3e-3", "--dropout", "0",
         "--head-dropout", "0", "--log-interval", "5"]


def write_corpus(path, split: bool, seed: int, n: int = 40):
    rng = random.Random(seed)
    lines = [" ".join(w for c in rng.sample(COMPOUNDS, 3) for w in ((c[:2], c[2:]) if split else (c,)))
             for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def corpus_args(files: dict) -> list[str]:
    return [arg for option in ("train", "dev", "test") for name, path in files.items()
            for arg in (f"--{option}", f"{name}={path}")]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc_data")
    return {"split": write_corpus(root / "split.txt", True, 0), "whole": write_corpus(root / "whole.txt", False, 1)}


@pytest.fixture(scope="module")
def mc_model(corpora, tmp_path_factory):
    """A multi-criteria segmenter trained from scratch until it fits both toy standards (20 steps)."""
    out = tmp_path_factory.mktemp("mc") / "run"
    assert finetune.main(["--task", "cws", *corpus_args(corpora), "--init", "scratch", "--out", str(out), *TRAIN,
                          "--max-steps", "20", "--eval-interval", "20", "--mix-temperature", "inf"]) == 0
    return out


def segment_line(argv: list[str], text: str, tmp_path) -> str:
    (tmp_path / "in.txt").write_text(text + "\n", encoding="utf-8")
    return run_tool(segment.main, [*argv, str(tmp_path / "in.txt")]).decode().rstrip("\n")


# ------------------------------------------------------------------------------------------- the pieces


def test_corpus_options_plain_or_one_name_per_standard():
    assert parse_corpora("train", ["data/train.txt"]) == "data/train.txt"
    assert parse_corpora("train", "a=b/train.txt") == {"a": "b/train.txt"}
    assert parse_corpora("train", ["ctb6=x=1.txt", "udc=y.txt"]) == {"ctb6": "x=1.txt", "udc": "y.txt"}
    assert parse_corpora("train", ["./x=1.txt"]) == "./x=1.txt"  # not a standard's name before the '='
    with pytest.raises(CharformerError, match="not both"):
        parse_corpora("train", ["ctb6=a.txt", "b.txt"])
    with pytest.raises(CharformerError, match="'ctb6' given twice"):
        parse_corpora("dev", ["ctb6=a.txt", "ctb6=b.txt"])
    with pytest.raises(CharformerError, match="given 2 times"):
        parse_corpora("test", ["a.txt", "b.txt"])
    check_same_standards({"train": {"a": "1", "b": "2"}, "dev": {"b": "3", "a": "4"}, "test": {"a": "5", "b": "6"}})
    with pytest.raises(CharformerError, match="--test NAME=PATH for a"):
        check_same_standards({"train": {"a": "1", "b": "2"}, "dev": {"a": "3", "b": "4"}, "test": {"a": "5"}})
    with pytest.raises(CharformerError, match="--dev a plain PATH"):
        check_same_standards({"train": {"a": "1"}, "dev": "3", "test": {"a": "5"}})


def test_mix_shares_follow_the_temperature():
    assert mix_shares([100, 1], 1.0) == pytest.approx([100 / 101, 1 / 101])
    assert mix_shares([100, 1], 2.0) == pytest.approx([10 / 11, 1 / 11])  # sqrt(100) : sqrt(1)
    assert mix_shares([100, 1, 7], float("inf")) == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError):
        mix_shares([3, 0], 1.0)


def test_mean_scores_average_each_standard_once():
    per = {"a": {"f1": 0.9, "precision": 0.8, "recall": 1.0, "oov_recall": None, "iv_recall": 1.0},
           "b": {"f1": 0.5, "precision": 0.6, "recall": 0.4, "oov_recall": 0.2, "iv_recall": 0.5}}
    mean = mean_scores(per)
    assert mean["f1"] == pytest.approx(0.7) and mean["precision"] == pytest.approx(0.7)
    assert mean["oov_recall"] == pytest.approx(0.2) and mean["standards"] is per


def tiny_tagger(standards=("a", "b")) -> Tagger:
    torch.manual_seed(0)
    body = CharTransformer(ModelConfig(vocab_size=20, block_size=8, n_layers=1, n_heads=2, d_model=16, dropout=0.0,
                                       causal=False))
    return Tagger(body, TokenTaggingHead(16, ["B", "M", "E", "S"], "BMES", dropout=0.0), standards=standards).eval()


def test_the_marker_is_position_zero_and_never_scored():
    model = tiny_tagger()
    assert model.window == 7  # the marker takes one position of the block
    seen = {}
    model.body.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))  # the blocks' input
    ids, lengths, standards = torch.tensor([[7, 8, 9, 10], [11, 12, 0, 0]]), torch.tensor([4, 2]), torch.tensor([1, 0])
    scores = model(ids, lengths, standards=standards)
    assert scores.shape == (2, 4, 4)  # one row of scores per character: none for the marker
    x = seen["x"]
    assert x.shape == (2, 5, 16)
    assert torch.equal(x[:, 0], model.markers.embedding.weight[standards])  # each row's own marker, in front
    assert torch.equal(x[:, 1:], model.body.tok_emb(ids))
    tags = torch.tensor([[0, 2, 0, 2], [3, 3, -100, -100]])
    assert model(ids, lengths, tags, standards) == model.head.loss(scores, tags, lengths)  # the loss sees characters only
    other = model(ids, lengths, standards=1 - standards)
    assert not torch.allclose(scores[0, :4], other[0, :4])  # the marker changes what the body reads
    with pytest.raises(ValueError, match="needs the standard of each row"):
        model(ids, lengths)
    with pytest.raises(ValueError, match="needs the standard of each row"):
        tiny_tagger(standards=())(ids, lengths, standards=standards)


def test_batches_mix_the_corpora_in_their_shares(corpora):
    sentences = {name: read_cws(path) for name, path in corpora.items()}
    sentences["split"] = sentences["split"][:10]  # 10 sentences against 40
    vocab = CharVocab.build(s.text for group in sentences.values() for s in group)
    task = {"task": "cws", "tags": ["B", "M", "E", "S"], "scheme": "BMES", "overlap": 2, "standards": ["split", "whole"]}
    objective = TaggingObjective(task, sentences, sentences, vocab, block_size=16, batch_size=50, eval_batch_size=8,
                                 mix_temperature=1.0)
    assert objective.shares == pytest.approx([0.2, 0.8])
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([objective.batch(generator)[3] for _ in range(40)])
    assert (drawn == 0).float().mean().item() == pytest.approx(0.2, abs=0.03)  # 2,000 rows: sd 0.009
    ids, lengths, tags, standards = objective.batch(generator)
    assert ids.shape[1] <= 15 and standards.shape == (50,)  # pieces leave room for the marker


# --------------------------------------------------------------------------------------- a trained model


def test_one_model_segments_by_the_standard_asked(mc_model, tmp_path):
    for name, expected in (("split", "中国 人民 北京 大学"), ("whole", "中国人民 北京大学")):
        assert segment_line(["--ckpt", str(mc_model), "--standard", name], SENTENCE, tmp_path) == expected
        assert segment_line(["--ckpt", str(mc_model), "--standard", name, "--int8"], SENTENCE, tmp_path) == expected
        assert Segmenter.load(mc_model, standard=name).cut(SENTENCE) == expected.split(" ")
    # an ensemble of members that know the standard; a user dictionary still holds
    assert segment_line(["--ckpt", str(mc_model), "--ckpt", str(mc_model), "--standard", "whole"], SENTENCE,
                        tmp_path) == "中国人民 北京大学"
    (tmp_path / "user.dict").write_text("国人\n", encoding="utf-8")
    assert segment_line(["--ckpt", str(mc_model), "--standard", "whole", "--user-dict", str(tmp_path / "user.dict")],
                        SENTENCE, tmp_path).split(" ")[1] == "国人"


def test_results_hold_each_standard_and_the_mean(mc_model):
    results = json.loads((mc_model / "results.json").read_text())
    for split in ("test_after", "dev_after"):
        per = results[split]["standards"]
        assert set(per) == {"split", "whole"} and all(s["f1"] > 0.9 for s in per.values())
        assert results[split]["f1"] == pytest.approx(sum(s["f1"] for s in per.values()) / 2)
    assert results["head"]["standards"] == ["split", "whole"]
    assert results["standards"]["split"] == {"train_examples": 40, "share": 0.5}


def test_the_standard_errors(mc_model, tiny_segmenter, tmp_path):
    with pytest.raises(CharformerError, match="multi-criteria segmenter: choose its standard with --standard NAME.*"
                                              "one of split, whole"):
        segment.main(["--ckpt", str(mc_model), str(tmp_path / "none.txt")])
    with pytest.raises(CharformerError, match="no standard 'ctb6'; it knows split, whole"):
        Segmenter.load(mc_model, standard="ctb6")
    with pytest.raises(CharformerError, match="a single-standard segmenter; --standard whole"):
        segment.main(["--ckpt", str(tiny_segmenter), "--standard", "whole", str(tmp_path / "none.txt")])
    with pytest.raises(CharformerError, match=f"{tiny_segmenter}: a single-standard segmenter"):
        segment.main(["--ckpt", str(mc_model), "--ckpt", str(tiny_segmenter), "--standard", "whole"])


def test_checkpoint_round_trip_keeps_the_markers_and_names(mc_model, tmp_path):
    model, vocab, task = load_task_checkpoint(mc_model)
    assert model.standards == task["standards"] == ["split", "whole"]
    save_task_checkpoint(tmp_path / "copy", model, vocab, task)
    again, _, _ = load_task_checkpoint(tmp_path / "copy")
    assert torch.equal(again.markers.embedding.weight, model.markers.embedding.weight)
    assert Segmenter.load(tmp_path / "copy", standard="split").cut(SENTENCE) == ["中国", "人民", "北京", "大学"]


def test_crf_and_a_pretrained_body_with_an_adapter(corpora, tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("".join(COMPOUNDS) * 30 + "\n", encoding="utf-8")
    pretrain.main(["--data", str(raw), "--out", str(tmp_path / "mlm"), "--objective", "mlm", "--max-steps", "2",
                   *TRAIN[:8], "--device", "cpu"])
    for extra in (["--init", "scratch", "--crf"], ["--init", str(tmp_path / "mlm"), "--method", "lora"]):
        out = tmp_path / extra[-1].strip("-")
        assert finetune.main(["--task", "cws", *corpus_args(corpora), "--out", str(out), *TRAIN, "--max-steps", "3",
                              "--eval-interval", "3", *extra]) == 0
        seg = Segmenter.load(out, standard="whole")
        assert "".join(seg.cut(SENTENCE)) == SENTENCE
        assert seg.model.standards == ["split", "whole"] and (seg.model.head.crf is not None) == ("--crf" in extra)


def test_the_bench_records_single_cross_and_multi(tmp_path):
    from bench import multi_criteria

    data = tmp_path / "data"
    corpora = ["ctb6", "weibo"]  # weibo has no test split
    for i, corpus in enumerate(corpora):
        (data / "cws" / corpus).mkdir(parents=True)
        for split in ("train", "dev") + (("test",) if corpus == "ctb6" else ()):
            write_corpus(data / "cws" / corpus / f"{split}.txt", split=i == 0, seed=i, n=6)
    out = tmp_path / "mc.json"
    assert multi_criteria.main(["--init", "scratch", "--steps", "2", "--evals", "1", "--data-dir", str(data),
                                "--corpora", ",".join(corpora), "--work", str(tmp_path / "work"), "--out-json",
                                str(out), "--finetune-args", " ".join(TRAIN)]) == 0
    record = json.loads(out.read_text())
    assert record["steps_multi"] == 4 and record["test_files"]["weibo"].endswith("dev.txt (no test split: its dev set)")
    assert list(record["cross"]) == corpora and all(list(row) == corpora for row in record["cross"].values())
    for corpus in corpora:  # the cross table's diagonal is the single model's own test score
        assert record["cross"][corpus][corpus] == pytest.approx(record["single"][corpus]["test_f1"])
    assert set(record["multi"]["test_f1"]) == set(corpora) and record["multi"]["shares"]["weibo"] == 0.5
    assert record["means"]["single"] == pytest.approx(sum(record["single"][c]["test_f1"] for c in corpora) / 2)
    assert record["means"]["multi"] == pytest.approx(sum(record["multi"]["test_f1"].values()) / 2)
    results = json.loads((tmp_path / "work" / "runs" / "multi" / "results.json").read_text())
    assert results["steps"] == 4 and results["head"]["standards"] == corpora


def test_the_server_refuses_a_multi_criteria_model_clearly(mc_model):
    from charformer.serve.models import load_served

    with pytest.raises(CharformerError, match="a multi-criteria segmenter \\(split, whole\\); the server cannot choose"):
        load_served(mc_model, {})
