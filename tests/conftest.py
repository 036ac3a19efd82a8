"""Shared pytest setup. Kernel part: run Triton kernels in the CPU interpreter when there is no GPU.

The interpreter is switched on by TRITON_INTERPRET=1, read when `@triton.jit` decorates a kernel, so it must be
set here, before any test module imports `kernels.softmax` or `kernels.flash_attention`.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small numpy matmuls in the interpreter: threads only slow them

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# FlexAttention through torch.compile takes ~30 s per shape on a CPU; its unfused eager path computes the same.
os.environ.setdefault("CHARFORMER_FLEX_COMPILE", "0")


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the matrices of the tiny test models gain nothing from threads, and on a busy 2-core machine two threads made
    a training step 30x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests put their tensors: the GPU if there is one, else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory):
    """A segmentation checkpoint directory trained for 3 steps (1 layer, d_model 32, block 16) on the segmented
    files of tests/nasty, so its vocabulary holds astral characters, combining marks, odd spaces and control
    characters. Its segmentations are near arbitrary, which is what round-trip tests want."""
    import finetune  # imported here: only the tests that use this fixture need the training stack
    from tests.helpers import TINY_MODEL
    from tests.nasty.make_nasty import SEGMENTED

    root = tmp_path_factory.mktemp("tiny_segmenter")
    train = root / "train.txt"
    train.write_text("".join(text.lstrip("\ufeff") + "\n" for text in SEGMENTED.values()), encoding="utf-8")
    out = root / "run"
    finetune.main(["--task", "cws", "--train", str(train), "--dev", str(train), "--test", str(train), "--init", "scratch",
                   "--out", str(out), *TINY_MODEL, "--block-size", "16",
                   "--batch-size", "4", "--max-steps", "3", "--device", "cpu", "--log-interval", "1"])
    return out
