"""Tests for encdec.model: shapes, the published size, initialisation, and the fast decoder path."""

import numpy as np
import pytest
import torch
from pairs import pairs_of_examples, update_on
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from encdec.batching import bucket_batches, collate
from encdec.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from encdec.config import DataConfig, ModelConfig, from_dict
from encdec.corpus import build_corpus
from encdec.errors import EncdecError
from encdec.model import Decoder, Encoder, Seq2Seq, WordDropout, build_model, count_parameters
from encdec.rnn import RNN_CELLS, StackedRNN
from encdec.steps import make_optimizer, seed_everything, teacher_forcing_coins
from encdec.translator import Translator
from encdec.vocab import Vocab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAD, SOS, EOS = 1, 2, 3
SRC_VOCAB, TRG_VOCAB = 11, 13


def tiny_model(cell: str = "lstm", dropout: float = 0.0, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    config = ModelConfig(cell=cell, embedding_dim=16, hidden_dim=32, num_layers=2, dropout=dropout)
    return build_model(config, SRC_VOCAB, TRG_VOCAB)


def sharpened(model: Seq2Seq, factor: float = 20.0) -> Seq2Seq:
    """Scale every weight so an untrained model's argmax changes from step to step."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(factor)
    return model


def random_batch(lengths: list[int], vocab_size: int, seed: int) -> torch.Tensor:
    """A (max(lengths), B) batch of <sos> w... <eos> columns, padded after each sentence."""
    generator = torch.Generator().manual_seed(seed)
    columns = [
        [SOS, *torch.randint(4, vocab_size, (length - 2,), generator=generator).tolist(), EOS]
        for length in lengths
    ]
    batch = torch.full((max(lengths), len(lengths)), PAD, dtype=torch.long)
    for column, ids in enumerate(columns):
        batch[: len(ids), column] = torch.tensor(ids)
    return batch


def teacher_forced_by_hand(model: Seq2Seq, src, src_lengths, trg) -> torch.Tensor:
    """The textbook loop: one decoder call per target position, fed the true previous token."""
    state = model.encode(src, src_lengths)
    predictions = []
    for t in range(trg.shape[0] - 1):
        prediction, state = model.decoder(trg[t : t + 1], state)  # (1, B, V)
        predictions.append(prediction)
    return torch.cat(predictions)  # (T-1, B, V)


def free_running_by_hand(model: Seq2Seq, src, src_lengths, trg) -> torch.Tensor:
    """One decoder call per position, fed the model's own previous argmax."""
    state = model.encode(src, src_lengths)
    predictions, tokens = [], trg[:1]
    for _ in range(trg.shape[0] - 1):
        prediction, state = model.decoder(tokens, state)  # (1, B, V)
        predictions.append(prediction)
        tokens = prediction.argmax(-1)  # (1, B)
    return torch.cat(predictions)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forward_scores_every_target_position_after_sos(cell):
    model = tiny_model(cell).eval()
    src, trg = random_batch([6, 4, 5], SRC_VOCAB, 1), random_batch([7, 3, 5], TRG_VOCAB, 2)
    coins = torch.rand(trg.shape[0] - 2, generator=torch.Generator().manual_seed(0))
    logits = model(src, torch.tensor([6, 4, 5]), trg, teacher_forcing_ratio=0.5, coins=coins)
    assert logits.shape == (6, 3, TRG_VOCAB)


def test_lstm_context_is_hidden_and_cell_per_layer():
    model = tiny_model("lstm")
    _, context = model.encoder(random_batch([6, 4, 5], SRC_VOCAB, 1), torch.tensor([6, 4, 5]))
    assert isinstance(context, tuple) and len(context) == 2
    hidden, cell = context
    assert hidden.shape == cell.shape == (2, 3, 32)


def test_gru_context_is_one_hidden_tensor_per_layer():
    model = tiny_model("gru")
    _, context = model.encoder(random_batch([6, 4, 5], SRC_VOCAB, 1), torch.tensor([6, 4, 5]))
    assert isinstance(context, torch.Tensor)
    assert context.shape == (2, 3, 32)


def test_textbook_model_has_the_published_parameter_count():
    # 7853 German and 5893 English words: Multi30k with min_freq 2, as in the tutorial.
    assert count_parameters(build_model(ModelConfig(), 7853, 5893)) == 13_898_501


def test_every_parameter_starts_uniform_within_0_08():
    values = torch.cat([p.detach().flatten() for p in tiny_model().parameters()])
    assert values.min() >= -0.08 and values.max() <= 0.08
    # spread over the whole range, not a narrower default initialisation
    assert values.min() < -0.079 and values.max() > 0.079
    assert values.abs().mean() == pytest.approx(0.04, abs=0.003)


def test_encoder_and_decoder_hidden_size_must_match():
    with pytest.raises(EncdecError, match="hidden_dim"):
        Seq2Seq(Encoder(10, 16, 32, 2, 0.0), Decoder(10, 16, 64, 2, 0.0))


def test_encoder_and_decoder_layer_count_must_match():
    with pytest.raises(EncdecError, match="num_layers"):
        Seq2Seq(Encoder(10, 16, 32, 2, 0.0), Decoder(10, 16, 32, 3, 0.0))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_context_vector_same_alone_and_in_padded_batch(cell):
    model = tiny_model(cell, dropout=0.5).eval()
    batch = random_batch([4, 9], SRC_VOCAB, 3)  # column 0 is padded after its 4 tokens
    _, alone = model.encoder(batch[:4, :1], torch.tensor([4]))
    _, batched = model.encoder(batch, torch.tensor([4, 9]))
    alone = alone if isinstance(alone, tuple) else (alone,)
    batched = batched if isinstance(batched, tuple) else (batched,)
    for alone_part, batched_part in zip(alone, batched, strict=True):  # h, then c for an LSTM
        torch.testing.assert_close(batched_part[:, :1], alone_part, atol=1e-6, rtol=0)
    # the longer sentence really was read further: its context differs
    assert not torch.allclose(batched[0][:, 0], batched[0][:, 1], atol=1e-3)


def test_fast_path_matches_step_loop():
    model = sharpened(tiny_model(dropout=0.0))
    src_lengths, trg_lengths = [6, 4, 5, 3], [7, 3, 6, 5]
    src, trg = random_batch(src_lengths, SRC_VOCAB, 4), random_batch(trg_lengths, TRG_VOCAB, 5)
    with torch.no_grad():
        fast = model(src, torch.tensor(src_lengths), trg, teacher_forcing_ratio=1.0)
        by_hand = teacher_forced_by_hand(model, src, torch.tensor(src_lengths), trg)
    torch.testing.assert_close(fast, by_hand, atol=1e-5, rtol=0)

    # the training step's loss (the fast path, shifted by one) equals the loop's per-token loss
    examples = [
        (src[:n, b].tolist(), trg[:m, b].tolist())
        for b, (n, m) in enumerate(zip(src_lengths, trg_lengths))
    ]
    pairs = pairs_of_examples(examples)
    optimizer = make_optimizer(model, 0.0)
    epoch_loss = update_on(model, pairs, [0, 1, 2, 3], optimizer, teacher_forcing_ratio=1.0)
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum")
    loop_loss = criterion(by_hand.flatten(0, 1), trg[1:].flatten()) / sum(
        m - 1 for m in trg_lengths
    )
    assert epoch_loss == pytest.approx(loop_loss.item(), abs=1e-5)


def test_no_teacher_forcing_feeds_the_models_own_argmax():
    model = sharpened(tiny_model(dropout=0.0))
    src, trg = random_batch([6, 4, 5], SRC_VOCAB, 6), random_batch([8, 8, 8], TRG_VOCAB, 7)
    lengths = torch.tensor([6, 4, 5])
    with torch.no_grad():
        free = model(src, lengths, trg, teacher_forcing_ratio=0.0)
        by_hand = free_running_by_hand(model, src, lengths, trg)
        forced = teacher_forced_by_hand(model, src, lengths, trg)
    torch.testing.assert_close(free, by_hand, atol=1e-5, rtol=0)
    assert not torch.allclose(free, forced, atol=0.1)  # the true tokens were not fed
    assert len(set(free.argmax(-1).flatten().tolist())) > 2  # the fed guesses vary


def test_mixed_teacher_forcing_follows_one_coin_per_step():
    model = sharpened(tiny_model(dropout=0.0))
    src, trg = random_batch([6, 4, 5], SRC_VOCAB, 8), random_batch([12, 9, 10], TRG_VOCAB, 9)
    lengths = torch.tensor([6, 4, 5])
    coins = torch.rand(trg.shape[0] - 2, generator=torch.Generator().manual_seed(3))
    forced_steps = [True, *(coins < 0.5).tolist()]
    assert 2 < sum(forced_steps) < len(forced_steps) - 2  # runs of forced and free steps occur
    state, predictions, tokens = model.encode(src, lengths), [], trg[:1]
    with torch.no_grad():
        for t, forced in enumerate(forced_steps):
            prediction, state = model.decoder(trg[t : t + 1] if forced else tokens, state)
            predictions.append(prediction)
            tokens = prediction.argmax(-1)
        mixed = model(src, lengths, trg, teacher_forcing_ratio=0.5, coins=coins)
    torch.testing.assert_close(mixed, torch.cat(predictions), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def toy_corpus():
    return build_corpus(DataConfig(dataset="toy", min_freq=1))


def parameters_after_two_steps(corpus, seed: int) -> dict[str, torch.Tensor]:
    seed_everything(seed)
    config = ModelConfig(embedding_dim=16, hidden_dim=32, dropout=0.5)
    model = build_model(config, len(corpus.src_vocab), len(corpus.trg_vocab))
    examples = corpus.ids["train"]
    batches = bucket_batches(examples, 8, 4, np.random.default_rng(seed))
    # dropout and teacher-forcing coins both draw random numbers
    coins = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, 0.01)
    for indices in batches[:2]:
        update_on(
            model,
            examples,
            indices,
            optimizer,
            teacher_forcing_coins(0.5, examples, indices, coins),
            teacher_forcing_ratio=0.5,
        )
    return model.state_dict()


def test_same_seed_gives_identical_parameters_after_training_steps(toy_corpus):
    first = parameters_after_two_steps(toy_corpus, seed=7)
    second = parameters_after_two_steps(toy_corpus, seed=7)
    other_seed = parameters_after_two_steps(toy_corpus, seed=8)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other_seed[name]) for name in first)


def test_collated_batch_feeds_forward():
    """A batch from collate() (the training path) goes through the model unchanged in shape."""
    examples = [([SOS, 5, 6, EOS], [SOS, 7, EOS]), ([SOS, 5, EOS], [SOS, 7, 8, 9, EOS])]
    batch = collate(pairs_of_examples(examples), [0, 1], PAD)
    logits = tiny_model()(batch.src, batch.src_lengths, batch.trg)
    assert logits.shape == (batch.trg.shape[0] - 1, 2, TRG_VOCAB)


def context_every_step_model(cell: str = "lstm", bidirectional: bool = False) -> Seq2Seq:
    torch.manual_seed(0)
    config = ModelConfig(
        cell=cell,
        embedding_dim=16,
        hidden_dim=32,
        dropout=0.0,
        bidirectional=bidirectional,
        context_every_step=True,
    )
    return sharpened(build_model(config, SRC_VOCAB, TRG_VOCAB).eval(), factor=5.0)


@pytest.mark.parametrize(("cell", "bidirectional"), [("lstm", False), ("gru", True)])
def test_context_every_step_in_one_call_matches_the_step_loop(cell, bidirectional):
    model = context_every_step_model(cell, bidirectional)
    src_lengths, trg_lengths = [6, 4, 5], [7, 3, 6]
    src, trg = random_batch(src_lengths, SRC_VOCAB, 4), random_batch(trg_lengths, TRG_VOCAB, 5)
    with torch.no_grad():
        fast = model(src, torch.tensor(src_lengths), trg, teacher_forcing_ratio=1.0)
        by_hand = teacher_forced_by_hand(model, src, torch.tensor(src_lengths), trg)
    torch.testing.assert_close(fast, by_hand, atol=1e-5, rtol=0)


def test_every_decoder_step_reads_the_fixed_context():
    model = context_every_step_model()
    src, trg = random_batch([6, 5], SRC_VOCAB, 6), random_batch([7, 7], TRG_VOCAB, 7)
    with torch.no_grad():
        state = model.encode(src, torch.tensor([6, 5]))
        assert state.fixed_context.shape == (1, 2, 32)
        _, state = model.decoder(trg[:1], state)
        later = model.decoder(trg[1:], state)[0]
        state.fixed_context = torch.zeros_like(state.fixed_context)
        later_without_context = model.decoder(trg[1:], state)[0]
    # same recurrent state and inputs: only the fixed context differs, and every step shows it
    differs = (later - later_without_context).abs().amax(dim=(1, 2))  # (steps,)
    assert torch.all(differs > 1e-3)


def test_context_every_step_with_attention_is_a_clear_error():
    with pytest.raises(EncdecError, match="context_every_step"):
        build_model(ModelConfig(attention="general", context_every_step=True), 11, 13)


def assert_identical(expected, actual) -> None:
    """Outputs and states of two RNNs are bit for bit equal (tensors, tuples, packed)."""
    if isinstance(expected, PackedSequence):
        assert torch.equal(expected.data, actual.data)
        assert torch.equal(expected.batch_sizes, actual.batch_sizes)
    elif isinstance(expected, tuple):
        for left, right in zip(expected, actual, strict=True):
            assert_identical(left, right)
    else:
        assert torch.equal(expected, actual)


def stock_and_stacked(cell: str, bidirectional: bool) -> tuple[nn.RNNBase, StackedRNN]:
    """A two-layer nn.LSTM/nn.GRU with random weights, and a StackedRNN loaded from it."""
    torch.manual_seed(0)
    stock = RNN_CELLS[cell](5, 6, num_layers=2, dropout=0.5, bidirectional=bidirectional)
    stacked = StackedRNN(cell, 5, 6, num_layers=2, dropout=0.5, bidirectional=bidirectional)
    stacked.load_state_dict(stock.state_dict())  # strict: every old key has its new place
    return stock.eval(), stacked.eval()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_rnn_loaded_from_a_multi_layer_rnn_computes_the_same(cell, bidirectional):
    stock, stacked = stock_and_stacked(cell, bidirectional)
    inputs = torch.randn(7, 3, 5)  # (S, B, input)
    hidden = torch.randn(2 * (2 if bidirectional else 1), 3, 6)  # (L * directions, B, H)
    state = (hidden, torch.randn_like(hidden)) if cell == "lstm" else hidden
    lengths = torch.tensor([7, 4, 2])
    packed = pack_padded_sequence(inputs, lengths, enforce_sorted=False)  # as the encoder packs
    # Given a state and an unsorted batch, nn.LSTM reorders the state once for all layers and
    # StackedRNN once per layer: the copies lie at other memory alignments, and the CPU's matrix
    # products may round the last bit differently. A sorted batch is not reordered.
    sorted_packed = pack_padded_sequence(inputs, lengths)
    with torch.no_grad():
        assert_identical(stock(inputs, state), stacked(inputs, state))
        assert_identical(stock(packed), stacked(packed))
        assert_identical(stock(sorted_packed, state), stacked(sorted_packed, state))
        torch.testing.assert_close(stock(packed, state)[1], stacked(packed, state)[1])


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch's own
def test_compiled_stacked_rnn_reads_packed_input_like_the_eager_one():
    # training.compile compiles the encoder, whose StackedRNN reads packed sequences
    _, stacked = stock_and_stacked("gru", bidirectional=True)
    packed = pack_padded_sequence(torch.randn(7, 3, 5), torch.tensor([7, 4, 2]), False)
    with torch.no_grad():
        assert_identical(torch.compile(stacked, dynamic=True)(packed), stacked(packed))


def test_stacked_rnn_drops_out_between_layers_only_with_torchs_generator():
    _, stacked = stock_and_stacked("lstm", bidirectional=True)
    inputs = torch.randn(7, 3, 5)
    with torch.no_grad():
        _, (kept_hidden, _) = stacked(inputs)
        stacked.train()
        torch.manual_seed(1)
        outputs, (hidden, _) = stacked(inputs)
        torch.manual_seed(1)
        repeated, _ = stacked(inputs)
        stacked.dropout.p = 1.0  # the top layer reads zeros: its outputs forget the inputs
        deaf, _ = stacked(inputs)
        deaf_to_other_inputs, _ = stacked(torch.randn(7, 3, 5))
    assert torch.equal(hidden[:2], kept_hidden[:2])  # the bottom layer reads undropped inputs
    assert not torch.equal(hidden[2:], kept_hidden[2:])  # the top one reads dropped outputs
    assert torch.equal(outputs, repeated)  # the masks came from torch's seeded generator
    assert torch.equal(deaf, deaf_to_other_inputs)


LEGACY_MODELS = [
    ModelConfig(embedding_dim=16, hidden_dim=32, dropout=0.3),
    ModelConfig(
        embedding_dim=16,
        hidden_dim=32,
        dropout=0.3,
        bidirectional=True,
        attention="general",
        input_feeding=True,
    ),
    ModelConfig(cell="gru", embedding_dim=16, hidden_dim=32, attention="additive"),
    ModelConfig(embedding_dim=16, hidden_dim=32, num_layers=3, context_every_step=True),
]


def legacy_model(config: ModelConfig, src_vocab_size: int, trg_vocab_size: int) -> Seq2Seq:
    """The model as encdec built it before StackedRNN: one multi-layer nn.LSTM/nn.GRU a side."""
    model = build_model(config, src_vocab_size, trg_vocab_size)
    for side, bidirectional in ((model.encoder, config.bidirectional), (model.decoder, False)):
        bottom = side.rnn.layers[0]
        side.rnn = RNN_CELLS[config.cell](
            bottom.input_size,
            bottom.hidden_size,
            config.num_layers,
            dropout=config.dropout,
            bidirectional=bidirectional,
        )
        for parameter in side.rnn.parameters():
            nn.init.uniform_(parameter, -0.08, 0.08)
    return model


@pytest.mark.parametrize("config", LEGACY_MODELS, ids=["lstm", "bi-luong", "gru-bahdanau", "cho"])
def test_a_checkpoint_of_one_multi_layer_rnn_loads_and_computes_the_same(config):
    torch.manual_seed(0)
    legacy = sharpened(legacy_model(config, SRC_VOCAB, TRG_VOCAB), factor=5.0).eval()
    old_weights = legacy.state_dict()
    assert f"encoder.rnn.weight_ih_l{config.num_layers - 1}" in old_weights
    model = build_model(config, SRC_VOCAB, TRG_VOCAB).eval()
    model.load_state_dict(old_weights)  # strict
    src, trg = random_batch([6, 4, 5], SRC_VOCAB, 1), random_batch([7, 3, 6], TRG_VOCAB, 2)
    lengths = torch.tensor([6, 4, 5])
    with torch.no_grad():
        for ratio in (1.0, 0.0):  # teacher-forced, and fed its own guesses
            assert torch.equal(model(src, lengths, trg, ratio), legacy(src, lengths, trg, ratio))
    assert model.state_dict().keys() != old_weights.keys()  # saved in the new layout


@pytest.mark.parametrize("config", LEGACY_MODELS, ids=["lstm", "bi-luong", "gru-bahdanau", "cho"])
def test_parameters_keep_the_order_of_one_multi_layer_rnn(config):
    # last.pt lists Adam's moments in parameter order: an old one resumes each on its weight
    torch.manual_seed(0)
    legacy = legacy_model(config, SRC_VOCAB, TRG_VOCAB)
    model = build_model(config, SRC_VOCAB, TRG_VOCAB)
    model.load_state_dict(legacy.state_dict())
    pairs = list(zip(legacy.parameters(), model.parameters(), strict=True))
    assert all(torch.equal(old, new) for old, new in pairs)


def test_an_old_checkpoint_translates_the_same_and_quantizes_to_int8(demo_checkpoint, tmp_path):
    state = load_checkpoint(demo_checkpoint)
    config = from_dict(state["config"])
    src_vocab, trg_vocab = Vocab(state["src_vocab"]), Vocab(state["trg_vocab"])
    torch.manual_seed(0)
    legacy = sharpened(legacy_model(config.model, len(src_vocab), len(trg_vocab)), factor=3.0)
    save_checkpoint({**state, "model": legacy.state_dict()}, tmp_path / "old.pt")
    sentences = ["good morning", "thank you very much", "see you tomorrow", "let's go"]
    expected = Translator(legacy, config, src_vocab, trg_vocab).translations(sentences, beam=3)
    loaded = Translator.load(tmp_path / "old.pt", device="cpu").translations(sentences, beam=3)
    assert [(best.tokens, best.score) for best, *_ in loaded] == [
        (best.tokens, best.score) for best, *_ in expected
    ]
    assert len({tuple(best.tokens) for best, *_ in loaded}) > 1  # not one answer for all

    quantized = Translator.load(tmp_path / "old.pt", int8=True)
    for rnn in (quantized.model.encoder.rnn, quantized.model.decoder.rnn):
        assert all(isinstance(layer, quantized_dynamic.LSTM) for layer in rnn.layers)
    assert isinstance(quantized.model.decoder.fc_out, quantized_dynamic.Linear)
    assert len(quantized.translate(sentences)) == len(sentences)


def test_int8_translates_the_demo_phrases_like_float(demo_checkpoint):
    sentences = ["good morning", "thank you very much", "see you tomorrow", "let's go"]
    float_translator = Translator.load(demo_checkpoint, device="cpu")
    int8_translator = Translator.load(demo_checkpoint, int8=True)
    assert int8_translator.translate(sentences) == float_translator.translate(sentences)
    assert int8_translator.parameter_count == float_translator.parameter_count


def test_word_dropout_turns_words_into_unk_in_training_only():
    torch.manual_seed(0)
    word_dropout = WordDropout(0.5)
    tokens = random_batch([30, 22, 9], SRC_VOCAB, seed=3).repeat(1, 40)  # (30, 120)
    dropped = word_dropout(tokens)
    words = tokens >= 4
    became_unk = dropped != tokens
    assert (dropped[became_unk] == 0).all()
    assert not became_unk[~words].any()  # <sos>, <eos> and padding stay
    assert 0.45 < became_unk[words].float().mean() < 0.55
    assert torch.equal(word_dropout.eval()(tokens), tokens)


def test_word_dropout_draws_nothing_when_off_and_changes_no_weights():
    def model(word_dropout):
        torch.manual_seed(0)
        config = ModelConfig(
            embedding_dim=16, hidden_dim=32, dropout=0.0, word_dropout=word_dropout
        )
        return build_model(config, SRC_VOCAB, TRG_VOCAB)

    plain, with_word_dropout = model(0.0), model(0.3)
    assert plain.state_dict().keys() == with_word_dropout.state_dict().keys()
    src, trg = random_batch([7, 5], SRC_VOCAB, 1), random_batch([6, 8], TRG_VOCAB, 2)
    lengths = torch.tensor([7, 5])
    with torch.no_grad():
        evaluated = with_word_dropout.eval()(src, lengths, trg)
        torch.manual_seed(5)
        trained = plain.train()(src, lengths, trg)
        after_plain = torch.rand(1)
        torch.manual_seed(5)
        with_word_dropout.train()(src, lengths, trg)
        after_word_dropout = torch.rand(1)
        assert torch.equal(evaluated, plain.eval()(src, lengths, trg))
        assert torch.equal(trained, plain(src, lengths, trg))  # dropout 0: training draws nothing
    assert not torch.equal(after_plain, after_word_dropout)  # word dropout draws its masks


def test_word_dropout_of_one_is_refused():
    with pytest.raises(EncdecError, match="model.word_dropout"):
        from_dict({"model": {"word_dropout": 1.0}})


def test_shared_embeddings_are_one_parameter_counted_once():
    sizes = {"embedding_dim": 32, "hidden_dim": 32, "dropout": 0.0}
    separate = build_model(ModelConfig(**sizes), TRG_VOCAB, TRG_VOCAB)
    shared = build_model(ModelConfig(**sizes, share_embeddings=True), TRG_VOCAB, TRG_VOCAB)
    assert shared.encoder.embedding.weight is shared.decoder.embedding.weight
    assert count_parameters(separate) - count_parameters(shared) == TRG_VOCAB * 32
    assert shared.state_dict().keys() == separate.state_dict().keys()
    three_way = build_model(
        ModelConfig(**sizes, share_embeddings=True, tie_embeddings=True), TRG_VOCAB, TRG_VOCAB
    )
    assert three_way.decoder.fc_out.weight is three_way.encoder.embedding.weight
    assert count_parameters(separate) - count_parameters(three_way) == 2 * TRG_VOCAB * 32


def test_sharing_embeddings_of_different_vocabulary_sizes_is_refused():
    with pytest.raises(
        EncdecError, match=rf"model.share_embeddings.*{SRC_VOCAB} and {TRG_VOCAB}.*data.joint_vocab"
    ):
        build_model(ModelConfig(share_embeddings=True), SRC_VOCAB, TRG_VOCAB)


def test_shared_embeddings_stay_shared_through_a_checkpoint_and_translate_the_same(tmp_path):
    data = {"dataset": "toy", "src_lang": "en", "trg_lang": "es", "min_freq": 1}
    sizes = {"embedding_dim": 32, "hidden_dim": 32, "dropout": 0.0}
    config = from_dict(
        {
            "data": {**data, "joint_vocab": True},
            "model": {**sizes, "share_embeddings": True, "tie_embeddings": True},
        }
    )
    corpus = build_corpus(config.data)
    torch.manual_seed(0)
    model = sharpened(build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab)), 5.0)
    save_checkpoint(checkpoint_state(model, corpus, config), tmp_path / "shared.pt")
    saved = load_checkpoint(tmp_path / "shared.pt")["model"]
    assert torch.equal(saved["encoder.embedding.weight"], saved["decoder.embedding.weight"])
    loaded = Translator.load(tmp_path / "shared.pt", device="cpu")
    embedding = loaded.model.encoder.embedding.weight
    assert embedding is loaded.model.decoder.embedding.weight is loaded.model.decoder.fc_out.weight
    sentences = ["good morning", "thank you very much", "see you tomorrow", "let's go"]
    expected = Translator(model, config, corpus.src_vocab, corpus.trg_vocab)
    assert [(best.tokens, best.score) for best, *_ in loaded.translations(sentences, beam=3)] == [
        (best.tokens, best.score) for best, *_ in expected.translations(sentences, beam=3)
    ]
    assert len({tuple(best.tokens) for best, *_ in expected.translations(sentences)}) > 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"input_feeding": True}, "input_feeding feeds attentional vectors: it needs attention"),
        (
            {"attention": "dot", "context_every_step": True},
            "context_every_step is for models without attention",
        ),
    ],
)
def test_decoder_options_that_need_attention_or_its_absence_are_refused(model, message):
    with pytest.raises(EncdecError, match=message):
        build_model(ModelConfig(**model), 10, 10)
