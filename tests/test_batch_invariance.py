"""Batching must not change a translation: the encoder packs, finished sentences leave the batch."""

import pytest
import torch

from encdec.config import DataConfig, DecodingConfig, ModelConfig
from encdec.corpus import build_corpus
from encdec.model import build_model
from encdec.search import decode_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def test_split_and_model(multi30k_dir):
    corpus = build_corpus(DataConfig(data_dir=str(multi30k_dir)))
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=32, hidden_dim=64, dropout=0.0)
    model = build_model(config, len(corpus.src_vocab), len(corpus.trg_vocab)).eval()
    return corpus, model


def test_batched_greedy_equals_one_sentence_at_a_time_on_test_2016(test_split_and_model):
    corpus, model = test_split_and_model
    vocab, examples = corpus.trg_vocab, corpus.ids["test"]
    pad = corpus.src_vocab.pad_idx
    assert len(examples) == 1000
    batched = [
        best.ids
        for (best,) in decode_examples(
            model, examples, vocab, DecodingConfig(max_len=25), src_pad_idx=pad
        )
    ]
    one_at_a_time = DecodingConfig(max_len=25, batch_size=1)
    alone = [  # batches of one sentence each
        best.ids
        for (best,) in decode_examples(model, examples, vocab, one_at_a_time, src_pad_idx=pad)
    ]
    differing = [i for i, (a, b) in enumerate(zip(batched, alone)) if a != b]
    assert differing == []
    assert len({tuple(ids) for ids in batched}) > 1  # the outputs are not all one trivial string
