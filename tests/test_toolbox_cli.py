"""The toolbox through the command lines: finetune.py's toolbox flags recorded in results.json and doing what they
say (averaged weights in OUT/best, less forgetting under EWC, cloze checkpoints that charformer.classify serves),
pretrain.py --init, python -m charformer.zeroshot on rigged tiny models, and ensembles in the prediction tools."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import finetune
import pretrain
from charformer import classify, segment, zeroshot
from charformer.checkpoint import save_checkpoint
from charformer.errors import CharformerError
from charformer.finetuning.ensemble import ensemble_tag_paths
from charformer.model import CharTransformer, ModelConfig
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.predict import predict_tag_scores
from charformer.tasks.segmenter import Segmenter
from charformer.tasks.viterbi import viterbi
from charformer.vocab import MASK_ID, CharVocab
from tests.helpers import cws_text, write_task_files
from tests.test_finetune_cli import TINY

FAST = [*TINY[:-2], "--eval-interval", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("toolbox_data")
    paths = write_task_files(root, n_train=24, n_eval=6)
    raw = root / "raw.txt"
    raw.write_text("房间很好喜欢干净很差讨厌失望总之。\n" * 30, encoding="utf-8")
    paths["raw"] = str(raw)
    (root / "verbalizers.tsv").write_text("0\t差\n1\t好\n", encoding="utf-8")
    paths["verbalizers"] = str(root / "verbalizers.tsv")
    return paths


@pytest.fixture(scope="module")
def mlm(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    assert pretrain.main(["--data", files["raw"], "--out", str(out), "--objective", "mlm", "--max-steps", "8",
                          *TINY[:10]]) == 0
    return out


def _run(files, task, out, *extra):
    return finetune.main(["--task", task, "--train", files[task, "train"], "--dev", files[task, "dev"],
                          "--test", files[task, "test"], "--out", str(out), *FAST, *extra])


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_ema_and_average_last_save_the_averaged_weights(files, tmp_path):
    name = "body.blocks.0.mlp.fc_in.weight"
    out = tmp_path / "ema"
    assert _run(files, "classify", out, "--init", "scratch", "--max-steps", "8", "--eval-interval", "8",
                "--ema", "0.9", "--adversarial", "fgm", "--adv-eps", "0.1", "--augment", "swap,mix") == 0
    results = _results(out)
    assert results["toolbox"]["adversarial"] == "fgm" and results["toolbox"]["augment"] == "swap,mix"
    assert results["augmented_examples"] == {"swap": 24, "mix": 24} and results["train_examples"] == 72
    best, raw = load_file(out / "best" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    state = load_file(out / "last" / "trainer_state.safetensors")
    assert torch.allclose(best[name], state["ema." + name], atol=1e-6)  # one evaluation: best/ is the average
    assert not torch.allclose(best[name], raw[name])  # and not the raw weights of last/

    out = tmp_path / "avg"
    assert _run(files, "classify", out, "--init", "scratch", "--max-steps", "12", "--average-last", "2") == 0
    raw, state = load_file(out / "last" / "model.safetensors"), load_file(out / "last" / "trainer_state.safetensors")
    assert not any(k.startswith("avg.2.") for k in state)  # evaluations at steps 4, 8, 12: the last two kept
    assert torch.equal(state["avg.1." + name], raw[name]) and not torch.equal(state["avg.0." + name], raw[name])


def test_rdrop_pgd_and_augmentation_for_tagging(files, mlm, tmp_path):
    assert _run(files, "ner", tmp_path / "ner", "--init", "scratch", "--max-steps", "4", "--rdrop", "1.0",
                "--adversarial", "pgd", "--adv-steps", "2", "--augment", "entity") == 0
    results = _results(tmp_path / "ner")
    assert results["toolbox"]["rdrop"] == 1.0 and results["augmented_examples"]["entity"] > 0
    assert _run(files, "cws", tmp_path / "cws", "--init", str(mlm), "--max-steps", "4", "--augment",
                "concat,split") == 0
    assert _results(tmp_path / "cws")["augmented_examples"] == {"concat": 24, "split": 48}  # a split makes two
    with pytest.raises(CharformerError, match="--augment: augmentation entity is not for --task cws"):
        _run(files, "cws", tmp_path / "bad1", "--init", "scratch", "--augment", "entity")
    with pytest.raises(CharformerError, match="--ewc LAMBDA and --ewc-data FILE go together"):
        _run(files, "cws", tmp_path / "bad2", "--init", "scratch", "--ewc", "1")


def test_ewc_reduces_forgetting_of_the_original_text(files, tmp_path):
    original, new = tmp_path / "a.txt", tmp_path / "b.txt"
    original.write_text("房间很好喜欢干净很差讨厌失望总之。\n" * 30, encoding="utf-8")
    new.write_text(cws_text(random.Random(0), 60).replace(" ", ""), encoding="utf-8")
    assert pretrain.main(["--data", str(original), "--out", str(tmp_path / "clm"), "--max-steps", "40", *TINY[:12],
                          "--lr", "3e-3"]) == 0
    forgetting = {}
    for ewc in ("0", "1e6"):
        out = tmp_path / f"lm_{ewc}"
        assert finetune.main(["--task", "lm", "--init", str(tmp_path / "clm"), "--train", str(new), "--dev", str(new),
                              "--original-val", str(original), "--out", str(out), "--max-steps", "20",
                              "--eval-interval", "20", *TINY[8:12], "--lr", "3e-3", "--sample-chars", "5", "--ewc", ewc,
                              "--ewc-data", str(original) if ewc != "0" else "", "--ewc-batches", "4"]) == 0
        results = _results(out)
        forgetting[ewc] = results["original_bpc_after"] - results["original_bpc_before"]
        assert results["toolbox"]["ewc"] == float(ewc)
    assert 0 < forgetting["1e6"] < 0.5 * forgetting["0"]


def test_cloze_few_shot_end_to_end(files, mlm, tmp_path, capsysbinary):
    out = tmp_path / "cloze"
    assert _run(files, "classify", out, "--init", str(mlm), "--max-steps", "6", "--method", "cloze",
                "--pattern", "{text}总之很[MASK]。", "--verbalizers", files["verbalizers"]) == 0
    results = _results(out)
    assert results["method"] == "cloze" and results["head"]["cloze"]["verbalizers"] == {"0": "差", "1": "好"}
    assert results["trainable_params"] == results["total_params"]  # every weight, the masked-LM head included
    capsysbinary.readouterr()
    texts = tmp_path / "texts.txt"
    texts.write_text("房间很干净\n\n房间很差很差很差很差很差很差很差很差很差很差很差\n", encoding="utf-8")
    classify.main(["--ckpt", str(out), str(texts), "--probs"])
    lines = capsysbinary.readouterr().out.decode().split("\n")
    assert lines[1] == "" and [line.split("\t")[0] in ("0", "1") for line in (lines[0], lines[2])] == [True, True]
    with pytest.raises(CharformerError, match="a fine-tuned task checkpoint; zero-shot takes a pretrained LM"):
        zeroshot.main(["--ckpt", str(out), "--labels", files["verbalizers"], str(texts)])
    with pytest.raises(CharformerError, match="--method cloze needs --pattern TEXT and --verbalizers FILE"):
        _run(files, "classify", tmp_path / "bad", "--init", str(mlm), "--method", "cloze")
    with pytest.raises(CharformerError, match="is for --task classify from a pretrained"):
        _run(files, "classify", tmp_path / "bad", "--init", "scratch", "--method", "cloze", "--pattern",
             "{text}[MASK]", "--verbalizers", files["verbalizers"])


def test_pretrain_init_continues_from_the_checkpoint(files, mlm, tmp_path):
    out = tmp_path / "dapt"
    # learning rate 0: the continued model is the one it started from, so its weights were loaded
    assert pretrain.main(["--init", str(mlm), "--data", files["raw"], "--out", str(out), "--objective", "mlm",
                          "--max-steps", "2", "--lr", "0", "--min-lr", "0", "--batch-size", "4", "--device", "cpu"]) == 0
    assert json.loads((out / "results.json").read_text())["init"] == str(mlm)
    start, end = load_file(mlm / "best" / "model.safetensors"), load_file(out / "best" / "model.safetensors")
    assert all(torch.equal(start[k], end[k]) for k in start)
    with pytest.raises(CharformerError, match="bidirectional model: continue it with --objective mlm"):
        pretrain.main(["--init", str(mlm), "--data", files["raw"], "--out", str(tmp_path / "b"), "--device", "cpu"])
    with pytest.raises(CharformerError, match="--max-vocab: the vocabulary comes from --init"):
        pretrain.main(["--init", str(mlm), "--data", files["raw"], "--out", str(tmp_path / "c"), "--objective", "mlm",
                       "--max-vocab", "10"])


def rigged_lm(path, causal: bool, winner: str):
    """A one-layer LM whose blocks add nothing (zero output projections), so the logits at any position are
    the tied embeddings against that position's own (normed) embedding: [MASK] (or, causal, 很) points at
    `winner`'s embedding and away from the other verbaliser's."""
    vocab = CharVocab.build(["好差很这房间干净"])
    model = CharTransformer(ModelConfig(vocab_size=len(vocab), block_size=16, n_layers=1, n_heads=2, d_model=8,
                                        causal=causal))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.o_proj.weight.zero_()
            block.mlp.fc_out.weight.zero_()
        emb = model.tok_emb.weight
        emb.normal_(0, 0.01)
        u = torch.zeros(8)
        u[0] = 1.0
        query = MASK_ID if not causal else vocab.encode("很")[0]
        emb[query] = u
        emb[vocab.encode(winner)[0]] = 5 * u
        emb[vocab.encode("差" if winner == "好" else "好")[0]] = -5 * u
    save_checkpoint(path, model, model.cfg, vocab)
    return path


@pytest.mark.parametrize("causal", [False, True])
def test_zeroshot_picks_the_most_likely_label(tmp_path, capsysbinary, monkeypatch, causal):
    labels = tmp_path / "labels.tsv"
    labels.write_text("pos\t好\nneg\t差\n", encoding="utf-8")
    texts = tmp_path / "texts.txt"
    texts.write_text("这房间干净\n\n房间\n", encoding="utf-8")
    for winner, label in (("好", "pos"), ("差", "neg")):
        ckpt = rigged_lm(tmp_path / f"lm_{winner}", causal, winner)
        capsysbinary.readouterr()
        assert zeroshot.main(["--ckpt", str(ckpt), "--labels", str(labels), "--pattern", "{text}很[MASK]",
                              "--device", "cpu", str(texts)]) == 0
        assert capsysbinary.readouterr().out.decode() == f"{label}\n\n{label}\n"


def test_ensembles_average_the_members_probabilities(files, tmp_path, capsysbinary):
    runs = {}
    for task in ("classify", "cws"):
        for seed in ("1", "2"):
            runs[task, seed] = tmp_path / f"{task}{seed}"
            assert _run(files, task, runs[task, seed], "--init", "scratch", "--max-steps", "3", "--seed", seed) == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("房间很干净\n中国人民站起来了\n", encoding="utf-8")

    def probs(*ckpts):
        capsysbinary.readouterr()
        classify.main([arg for c in ckpts for arg in ("--ckpt", str(c))] + [str(texts), "--probs"])
        return [(line.split("\t")[0], float(line.split("\t")[1]))
                for line in capsysbinary.readouterr().out.decode().splitlines()]

    one, two = probs(runs["classify", "1"]), probs(runs["classify", "2"])
    both = probs(runs["classify", "1"], runs["classify", "2"])
    for (l1, p1), (l2, p2), (label, p) in zip(one, two, both):
        # the mean probability of the ensemble's label: each member gives it p or 1 - p (two labels)
        mine = [p1 if l1 == label else 1 - p1, p2 if l2 == label else 1 - p2]
        assert p == pytest.approx(sum(mine) / 2, abs=2e-4) and p >= 0.5

    members = [load_task_checkpoint(runs["cws", s]) for s in ("1", "2")]
    lines = ["中国人民站起来了", "我们在北京天安门"]
    with torch.no_grad():
        paths = ensemble_tag_paths(members, lines, batch_size=4, overlap=4)
        mean = [sum(predict_tag_scores(m, [v.encode_aligned(t)], batch_size=4, overlap=4)[0].softmax(-1)
                    for m, v, _ in members) / 2 for t in lines]
    head = members[0][0].head
    for path, p in zip(paths, mean):
        expected = viterbi(p.log()[None], torch.tensor([len(p)]), head.start_scores, head.trans_scores, head.end_scores)
        assert path == expected[0]
    capsysbinary.readouterr()
    segment.main(["--ckpt", str(runs["cws", "1"]), "--ckpt", str(runs["cws", "2"]), str(texts)])
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert [line.replace(" ", "") for line in out] == ["房间很干净", "中国人民站起来了"]
    with pytest.raises(CharformerError, match="a classify model; use python -m charformer.classify"):
        segment.main(["--ckpt", str(runs["cws", "1"]), "--ckpt", str(runs["classify", "1"]), str(texts)])

    # a user dictionary constrains the ensemble's mean probabilities as it does one model's scores
    words = tmp_path / "words.txt"
    words.write_text("人民站起\n", encoding="utf-8")
    segmenter = Segmenter.ensemble(members, user_dict=str(words))
    bias = segmenter.bias(lines[0])
    with torch.no_grad():
        biased = ensemble_tag_paths(members, lines[:1], batch_size=4, overlap=4, bias=[bias])
    expected = viterbi((mean[0].log() + bias)[None], torch.tensor([len(bias)]), head.start_scores, head.trans_scores,
                       head.end_scores)
    assert biased == expected
    assert "人民站起" in segmenter.cut(lines[0])
    capsysbinary.readouterr()
    segment.main(["--ckpt", str(runs["cws", "1"]), "--ckpt", str(runs["cws", "2"]), "--user-dict", str(words),
                  str(texts)])
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert "人民站起" in out[1].split(" ") and out[1].replace(" ", "") == "中国人民站起来了"


def test_fewshot_bench_fine_tunes_init_as_it_is_with_zero_pretraining_steps(files, mlm, tmp_path):
    from bench import toolbox

    data = tmp_path / "senti"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / f"{split}.tsv").write_text(open(files["classify", split], encoding="utf-8").read(), encoding="utf-8")
    out = tmp_path / "fewshot"
    assert toolbox.main(["--data", str(data), "--out", str(out), "--init", str(mlm), "--pretrain-steps", "0",
                         "--shots", "4", "--seeds", "1", "--finetune-steps", "2", "--batch-size", "4"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["pretrained"] == {"init": str(mlm), "steps": 0} and not (out / "runs" / "mlm").exists()
    assert [(r["method"], r["shots"]) for r in results["runs"]] == [("head", 4), ("cloze", 4)]
    with pytest.raises(CharformerError, match="--pretrain-steps 0 needs --init"):
        toolbox.main(["--data", str(data), "--out", str(out), "--pretrain-steps", "0"])
