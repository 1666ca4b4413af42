"""Fixtures shared by the test modules."""

import contextlib
import os
import socket
from pathlib import Path

import pytest
import torch


@contextlib.contextmanager
def torch_threads(count: int):
    """Run torch with `count` intra-op threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; with two, a busy CPU can slow them tenfold."""
    with torch_threads(1):
        yield


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests may talk to servers on 127.0.0.1 only; any other host fails the test at once."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in LOOPBACK_HOSTS:
            raise OSError(f"tests must not touch the network (tried to resolve {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The shared Multi30k copy: $ENCDEC_DATA, else ../shared/data/multi30k beside the repo."""
    repo_root = Path(__file__).resolve().parent.parent
    folder = Path(os.environ.get("ENCDEC_DATA") or repo_root.parent / "shared/data/multi30k")
    if not (folder / "train.de.gz").is_file():
        pytest.fail(f"Multi30k not found in {folder}: set ENCDEC_DATA to the shared copy")
    return folder


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """best.pt of the `encdec demo` model (toy English->Spanish), trained once per session."""
    from encdec.cli import DEMO_CONFIG
    from encdec.config import from_dict
    from encdec.training import train

    out_dir = tmp_path_factory.mktemp("demo_run")
    with torch_threads(1):  # on the CPU: tests expect what it learns there
        train(from_dict(DEMO_CONFIG), out_dir, quiet=True, device="cpu")
    return out_dir / "best.pt"


@pytest.fixture(scope="session")
def channel_checkpoint(tmp_path_factory) -> Path:
    """best.pt of the demo model trained the other way (Spanish->English), on subwords: a
    channel model, which must split the demo's words into its own pieces."""
    from encdec.cli import DEMO_CONFIG
    from encdec.config import from_dict
    from encdec.data import toy_phrases
    from encdec.training import train

    folder = tmp_path_factory.mktemp("channel_run")
    data = {"dataset": "files", "src_lang": "es", "trg_lang": "en", "min_freq": 1}
    data |= {"subwords": "bpe", "subword_vocab_size": 300}
    for split, pairs in toy_phrases().items():
        tsv = folder / f"{split}.tsv"
        tsv.write_text("".join(f"{spanish}\t{english}\n" for english, spanish in pairs))
        data[f"{split}_tsv"] = str(tsv)
    with torch_threads(1):
        # a third of the demo's epochs: a channel model only has to judge, not translate well
        training = {**DEMO_CONFIG["training"], "epochs": 25}
        config = {**DEMO_CONFIG, "data": data, "training": training}
        train(from_dict(config), folder / "run", quiet=True, device="cpu")
    return folder / "run" / "best.pt"
