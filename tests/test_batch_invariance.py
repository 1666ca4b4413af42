"""Batching must not change a translation: the encoder packs, finished sentences leave the batch,
sampling draws each sentence's own noise. This is what lets the server batch requests freely."""

import pytest
import torch

from encdec.config import DataConfig, DecodingConfig, ModelConfig
from encdec.corpus import build_corpus
from encdec.model import build_model
from encdec.search import decode_examples
from encdec.translator import hypotheses_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(multi30k_dir):
    return build_corpus(DataConfig(data_dir=str(multi30k_dir)))


def untrained(corpus, attention: str, scale: float = 1.0):
    """A small untrained model; `scale` sharpens its choices so that near-ties, which float
    rounding in another batch shape may break either way, are rare."""
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=32, hidden_dim=64, dropout=0.0, attention=attention)
    model = build_model(config, len(corpus.src_vocab), len(corpus.trg_vocab)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def translated(model, examples, decoding: DecodingConfig, pad: int, **options) -> list:
    """Each example's hypotheses, in the examples' order."""
    found = {}
    for indices, batch in decode_examples(model, examples, decoding, src_pad_idx=pad, **options):
        found |= dict(zip(indices.tolist(), hypotheses_of(batch)))
    return [found[index] for index in range(len(examples))]


def test_batched_greedy_equals_one_sentence_at_a_time_on_test_2016(corpus):
    model, examples = untrained(corpus, "none"), corpus.ids["test"]
    pad = corpus.src_vocab.pad_idx
    assert len(examples) == 1000
    decoding = DecodingConfig(max_len=25)
    batched = [best.ids for (best,) in translated(model, examples, decoding, pad)]
    one_at_a_time = DecodingConfig(max_len=25, batch_size=1)
    alone = [best.ids for (best,) in translated(model, examples, one_at_a_time, pad)]
    differing = [i for i, (a, b) in enumerate(zip(batched, alone)) if a != b]
    assert differing == []
    assert len({tuple(ids) for ids in batched}) > 1  # the outputs are not all one trivial string


SEARCHES = {
    "greedy": {},
    "beam": {"beam_size": 3},
    "sampling": {"temperature": 1.5, "top_k": 20},
}


@pytest.mark.parametrize("attention", ["none", "general"])
@pytest.mark.parametrize("search", SEARCHES)
def test_a_sentence_alone_equals_it_in_a_mixed_batch(corpus, search, attention):
    model, pad = untrained(corpus, attention, scale=4.0), corpus.src_vocab.pad_idx
    examples = corpus.ids["test"].select(torch.arange(0, 1000, 25).numpy())  # 40 lengths
    n_best = 2 if search == "beam" else 1
    options = {"n_best": n_best, "seed": 7, "with_attention": attention != "none"}
    batched = translated(model, examples, DecodingConfig(**SEARCHES[search]), pad, **options)
    alone_decoding = DecodingConfig(**SEARCHES[search], batch_size=1)
    alone = translated(model, examples, alone_decoding, pad, **options)
    for together, single in zip(batched, alone):
        assert [h.ids for h in together] == [h.ids for h in single]
        assert [h.truncated for h in together] == [h.truncated for h in single]
        assert [h.score for h in together] == pytest.approx([h.score for h in single], abs=1e-4)
        for one, other in zip(together, single):
            if attention != "none":  # a batch pads the source: its extra columns get no weight
                columns = other.attention.shape[1]
                assert not one.attention[:, columns:].any()
                torch.testing.assert_close(one.attention[:, :columns], other.attention)
    assert len({tuple(h.ids) for hypotheses in batched for h in hypotheses}) > 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("search", SEARCHES)
def test_on_cuda_a_sentence_alone_equals_it_in_a_mixed_batch(corpus, search):
    """On a GPU, kernels for different batch sizes may sum in another order: the ids must agree
    on at least 95 % of sentences and the scores of those within 1e-3."""
    model = untrained(corpus, "general", scale=4.0).cuda()
    examples = corpus.ids["test"].select(torch.arange(0, 1000, 10).numpy())
    pad = corpus.src_vocab.pad_idx
    batched = translated(model, examples, DecodingConfig(**SEARCHES[search]), pad, seed=7)
    alone_decoding = DecodingConfig(**SEARCHES[search], batch_size=1)
    alone = translated(model, examples, alone_decoding, pad, seed=7)
    same = [(a[0], b[0]) for a, b in zip(batched, alone) if a[0].ids == b[0].ids]
    assert len(same) >= 0.95 * len(examples)
    assert [a.score for a, _ in same] == pytest.approx([b.score for _, b in same], abs=1e-3)
