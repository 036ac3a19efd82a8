"""The logic of bench/cws_peers.py and bench/cws_frontier.py that needs neither the peers nor a timing: the
variants asked for, the order of a round, the ratios to THULAC, the Pareto frontier and its PNG."""

import json

import pytest

from bench import cws_frontier, cws_peers
from charformer.errors import CharformerError
from tests.test_multi_criteria import SENTENCE, corpora, mc_model  # noqa: F401 (fixtures)


def test_every_checkpoint_at_every_precision_and_batch_size(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "student").mkdir()
    variants = cws_peers.our_variants([f"plain={tmp_path / 'a'}", str(tmp_path / "student")], "fp32,int8", "16, 64")
    assert [v.name for v in variants] == ["ours:plain fp32 b16", "ours:plain fp32 b64", "ours:plain int8 b16",
                                          "ours:plain int8 b64", "ours:student fp32 b16", "ours:student fp32 b64",
                                          "ours:student int8 b16", "ours:student int8 b64"]
    assert variants[4].ckpt == str(tmp_path / "student")
    worker = cws_peers.our_variants(variants[3].worker_argv()[3:4], "int8", "64")  # as a worker parses it
    assert worker == [variants[3]]
    for ckpts, precisions, sizes, message in (([f"x={tmp_path / 'missing'}"], "fp32", "64", "existing checkpoint"),
                                               ([f"x={tmp_path / 'a'}", f"x={tmp_path / 'student'}"], "fp32", "64",
                                                "labels must differ"),
                                               ([str(tmp_path / "a")], "fp16", "64", "--precision"),
                                               ([str(tmp_path / "a")], "fp32", "0", "--batch-size"),
                                               ([str(tmp_path / "a")], "fp32", "b", "--batch-size")):
        with pytest.raises(CharformerError, match=message):
            cws_peers.our_variants(ckpts, precisions, sizes)


def test_standard_maps_for_a_multi_criteria_checkpoint(tmp_path):
    (tmp_path / "mc").mkdir()
    (tmp_path / "one").mkdir()
    maps = cws_peers.standard_maps(["mc:ctb6=ctb6, zx=zhuxian"])
    assert maps == {"mc": (("ctb6", "ctb6"), ("zx", "zhuxian"))}
    mc, one = cws_peers.our_variants([f"mc={tmp_path / 'mc'}", f"one={tmp_path / 'one'}"], "int8", "64", maps)
    assert (mc.standard("zx"), mc.standard("udc"), one.standard("zx")) == ("zhuxian", None, None)
    argv = mc.worker_argv()
    parsed = cws_peers.build_parser().parse_args(argv)  # as the worker reads its command line
    assert cws_peers.our_variants(parsed.ckpt, parsed.precision, parsed.batch_size,
                                  cws_peers.standard_maps(parsed.standard_map)) == [mc]
    cws_peers.check_standards([mc, one], ["zx", "ctb6"])
    with pytest.raises(CharformerError, match="each needs one standard"):
        cws_peers.check_standards([mc, one], ["ctb6", "zx", "weibo"])
    with pytest.raises(CharformerError, match="no --ckpt has that label"):
        cws_peers.our_variants([f"one={tmp_path / 'one'}"], "fp32", "64", maps)
    for bad in (["ctb6=ctb6"], ["mc:ctb6"], ["mc:ctb6=ctb6,"], ["mc:a=b", "mc:c=d"]):
        with pytest.raises(CharformerError, match="--standard-map"):
            cws_peers.standard_maps(bad)


def test_a_worker_sets_a_multi_criteria_segmenter_to_each_corpus_standard(mc_model, tmp_path):
    gold = tmp_path / "gold.txt"
    gold.write_text("中国 人民 北京 大学\n", encoding="utf-8")
    maps = cws_peers.standard_maps(["mc:ctb6=split,zx=whole"])
    (tool,) = cws_peers.our_variants([f"mc={mc_model}"], "int8", "8", maps)
    worker = cws_peers.Worker(tool)  # a process of its own, as in a measurement
    try:
        for corpus, words in (("ctb6", ["中国", "人民", "北京", "大学"]), ("zx", ["中国人民", "北京大学"]),
                              ("ctb6", ["中国", "人民", "北京", "大学"])):
            reply = worker.ask({"corpus": corpus, "path": str(gold), "words": True})
            assert reply["words"] == [words] and reply["seconds"] > 0
    finally:
        worker.close()
    (plain,) = cws_peers.our_variants([f"mc={mc_model}"], "fp32", "8")
    with pytest.raises(CharformerError, match="choose its standard"):
        cws_peers.load_tool(plain)


def test_a_round_alternates_peers_and_ours():
    assert cws_peers.interleave(["thulac", "jieba"], [1, 2, 3]) == ["thulac", 1, "jieba", 2, 3]
    assert cws_peers.interleave(["thulac", "jieba"], []) == ["thulac", "jieba"]


def test_speed_ratios_to_thulac_on_the_same_corpus():
    rows = [{"corpus": "ctb6", "tool": "thulac", "chars_per_s": 40000},
            {"corpus": "ctb6", "tool": "ours:a fp32 b64", "chars_per_s": 50000},
            {"corpus": "zx", "tool": "thulac", "chars_per_s": 20000},
            {"corpus": "zx", "tool": "jieba", "chars_per_s": 30000},
            {"corpus": "udc", "tool": "jieba", "chars_per_s": 30000}]
    cws_peers.add_thulac_ratios(rows)
    assert [r["vs_thulac"] for r in rows] == [1.0, 1.25, 1.0, 1.5, None]


def test_pareto_frontier():
    points = [(100, 80.0), (40, 89.0), (30, 95.0), (35, 94.0), (20, 95.0), (100, 79.0), (40, 89.0)]
    # (35, 94) is beaten by nobody (faster than (30, 95), more accurate than (40, 89)); the copies of (40, 89)
    # do not dominate each other; (20, 95) and (100, 79) are dominated.
    assert cws_frontier.pareto_frontier(points) == [2, 3, 1, 6, 0]


def test_the_frontier_png(tmp_path):
    rows = [{"corpus": "ctb6", "tool": "thulac", "f1": 88.9, "chars_per_s": 40000},
            {"corpus": "ctb6", "tool": "jieba", "f1": 80.8, "chars_per_s": 140000},
            {"corpus": "ctb6", "tool": "ours:a int8 b64", "label": "a", "f1": 95.2, "chars_per_s": 34000},
            {"corpus": "zx", "tool": "jieba", "f1": 80.0, "chars_per_s": 100000}]
    result = tmp_path / "peers.json"
    result.write_text(json.dumps({"command": "python -m bench.cws_peers", "rows": rows}), encoding="utf-8")
    out = tmp_path / "frontier.png"
    cws_frontier.main(["--json", str(result), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(CharformerError, match="no row for corpus 'weibo'"):
        cws_frontier.main(["--json", str(result), "--corpus", "weibo", "--out", str(out)])
