"""`charformer.segment` as a tool: user dictionaries and protected runs end to end (CLI and Python API, on the
tiny session segmenter, whose own segmentation is near arbitrary, so whatever holds is the constraints' doing),
and streamed input: lines read in chunks as they arrive, output a window at a time, the first line written
before the input has ended."""

import io
import os
import random
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from charformer import segment
from charformer.data import split_lines
from charformer.errors import CharformerError
from charformer.tasks.streaming import iter_lines, windows
from charformer.tasks.segmenter import Segmenter
from tests.test_hostile_input import run_tool

ROOT = Path(__file__).resolve().parents[1]
TEXT = "深度求索发布COVID-19疫苗报告，价格3.14元，１９９８年起见https://example.org/a?b=1。"


def words_of(line: str) -> list[str]:
    return line.split(" ")


def test_user_dictionary_and_protection_on_the_command_line(tiny_segmenter, tmp_path):
    (tmp_path / "user.dict").write_text("\ufeff# words\r\n深度求索\r\n疫苗报告\t2\r\n", encoding="utf-8")
    (tmp_path / "in.txt").write_text(TEXT + "\n" + "深度求索深度求索\n", encoding="utf-8")
    out = run_tool(segment.main, ["--ckpt", str(tiny_segmenter), "--user-dict", str(tmp_path / "user.dict"),
                                  str(tmp_path / "in.txt")]).decode()
    first, second = (words_of(line) for line, _ in split_lines(out))
    for word in ("深度求索", "疫苗报告", "COVID-19", "3.14", "１９９８", "https://example.org/a?b=1"):
        assert any(word in w for w in first), word  # whole (protected runs may join a neighbour)
    assert "深度求索" in first and "疫苗报告" in first and "".join(first) == TEXT
    assert second == ["深度求索", "深度求索"]


def test_prefer_mode_with_a_bonus_no_model_overrules(tiny_segmenter, tmp_path):
    dictionary = _lexicon_file(tmp_path, "求索发布", "苗报")
    path = tmp_path / "in.txt"
    path.write_text(TEXT + "\n", encoding="utf-8")
    out = run_tool(segment.main, ["--ckpt", str(tiny_segmenter), "--user-dict", str(dictionary), "--dict-mode",
                                  "prefer", "--dict-bonus", "1000", str(path)]).decode()
    words = words_of(out.rstrip("\n"))
    assert "求索发布" in words and "苗报" in words and "".join(words) == TEXT


def test_python_api(tiny_segmenter, tmp_path):
    segmenter = Segmenter.load(tiny_segmenter, device="cpu", user_dict=None, protect=True)
    words = segmenter.cut(TEXT)
    assert "".join(words) == TEXT
    assert any("COVID-19" in w for w in words) and any("3.14" in w for w in words)
    forced = Segmenter.load(tiny_segmenter, device="cpu", user_dict=_lexicon_file(tmp_path, "发布COVID"))
    assert "发布COVID" in forced.cut(TEXT)  # the dictionary wins over the protected run it crosses
    assert forced.segment(["", "发布COVID"]) == [[], ["发布COVID"]]


def _lexicon_file(tmp_path, *words):
    path = tmp_path / "words.dict"
    path.write_text("".join(w + "\n" for w in words), encoding="utf-8")
    return path


def test_bad_dictionary_is_one_error_line(tiny_segmenter, tmp_path):
    bad = tmp_path / "bad.dict"
    bad.write_text("好\n词\tmany\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "charformer.segment", "--ckpt", str(tiny_segmenter), "--user-dict",
                           str(bad)], input=b"x\n", capture_output=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.decode() == f"error: {bad}:2: the weight 'many' is not a number\n"
    with pytest.raises(CharformerError, match="not a word segmenter|dictionary mode"):
        Segmenter.load(tiny_segmenter, device="cpu", dict_mode="always")


# ----------------------------------------------------------------------------------------------- streaming
class Trickle(io.RawIOBase):
    """A byte stream that hands out at most `step` bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, step: int):
        self.data, self.step, self.pos = data, step, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(self.step, len(self.data) - self.pos, len(buffer))
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(["a", "中", "\r", "\n", "\r\n", "\ufeff", "\U0001f600"]), max_size=30),
       step=st.integers(1, 7), window=st.integers(1, 10))
def test_streamed_lines_and_windows_are_the_input(pieces, step, window):
    text = "".join(pieces)
    lines = list(iter_lines(io.BufferedReader(Trickle(text.encode("utf-8"), step), buffer_size=8), "<stdin>"))
    assert lines == split_lines(text.removeprefix("\ufeff"))  # only a leading BOM is dropped
    assert [line for w in windows(lines, window) for line in w] == lines


def test_bad_utf8_in_a_stream_names_the_line_and_offset_in_the_whole_input():
    data = "中\r\n" * 3000 + "caf"
    stream = io.BufferedReader(Trickle(data.encode() + b"\xe9\n", 1000))
    with pytest.raises(CharformerError, match=r"^<stdin>:3001: not valid UTF-8 at byte offset 15003 \(byte 0xe9"):
        list(iter_lines(stream, "<stdin>"))


def test_output_is_the_same_whatever_the_window(tiny_segmenter, tmp_path):
    rng = random.Random(0)
    lines = ["".join(rng.choice("中国人民站起来了COVID-19，3.14") for _ in range(rng.randint(0, 40))) for _ in range(60)]
    path = tmp_path / "in.txt"
    path.write_text("\r\n".join(lines), encoding="utf-8", newline="")
    whole = run_tool(segment.main, ["--ckpt", str(tiny_segmenter), str(path)])
    assert run_tool(segment.main, ["--ckpt", str(tiny_segmenter), str(path), "--window-chars", "7"]) == whole


def test_first_line_is_written_before_the_input_ends(tiny_segmenter):
    proc = subprocess.Popen([sys.executable, "-m", "charformer.segment", "--ckpt", str(tiny_segmenter),
                             "--window-chars", "16"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        proc.stdin.write("中国人民站起来了COVID-19\n我们在北京\n".encode())
        proc.stdin.flush()  # 25 characters: the first window (16) is full; the input stays open
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no output within 120 s while the input was still open"
        first = proc.stdout.readline().decode()
        assert proc.poll() is None  # still running: it has not seen the end of its input
        assert "".join(first.rstrip("\n").split(" ")) == "中国人民站起来了COVID-19" and "COVID-19" in first
        proc.stdin.write("最后一行".encode())
        proc.stdin.close()
        rest = proc.stdout.read().decode()
        assert proc.wait(60) == 0
        assert [line.replace(" ", "") for line in rest.split("\n")] == ["我们在北京", "最后一行"]
    finally:
        proc.kill()
        proc.wait()
