"""Speed of encdec against the textbook loop (benchmarks/reference.py), measured side by side.

Both run in this one process on the same Multi30k de->en data, alternating round by round, so a
busy machine slows both alike. Each figure prints as the median over rounds with its spread
(min-max) and the encdec/reference ratio. Run it alone: the two cores are shared with anything
else running.

    python benchmarks/speed.py --data-dir ../shared/data/multi30k            # full, ~15 min
    python benchmarks/speed.py --data-dir ../shared/data/multi30k --quick    # ~1 min
    python benchmarks/speed.py --recipe configs/multi30k_attention.yaml      # a recipe alone
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402

from encdec.batching import bucket_batches, collate  # noqa: E402
from encdec.config import (  # noqa: E402
    DataConfig,
    DecodingConfig,
    ModelConfig,
    TrainingConfig,
    load_config,
)
from encdec.corpus import build_corpus  # noqa: E402
from encdec.feeding import fed_ahead  # noqa: E402
from encdec.model import build_model  # noqa: E402
from encdec.search import decode_examples  # noqa: E402
from encdec.steps import (  # noqa: E402
    StepTally,
    make_optimizer,
    teacher_forcing_coins,
    train_batch,
)
from encdec.translator import Translator, hypotheses_of, quantize_int8  # noqa: E402
from encdec.vocab import PAD_IDX  # noqa: E402


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best fp32 matrix-multiply rate this machine reaches, in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def macs_per_token(model: nn.Module) -> tuple[int, int]:
    """Multiply-accumulates per source token (encoder RNN) and per target token (decoder)."""
    encoder = sum(p.numel() for n, p in model.encoder.rnn.named_parameters() if "weight" in n)
    decoder = sum(p.numel() for n, p in model.decoder.rnn.named_parameters() if "weight" in n)
    return encoder, decoder + model.decoder.fc_out.weight.numel()


def training_flops(model: nn.Module, pairs, batches) -> float:
    """Model FLOPs of forward + backward (3 x forward) over the real tokens of `batches`."""
    encoder_macs, decoder_macs = macs_per_token(model)
    src_tokens = sum(int(pairs.src_lengths[batch].sum()) for batch in batches)
    trg_tokens = sum(int(pairs.trg_lengths[batch].sum()) - len(batch) for batch in batches)
    return 6 * (src_tokens * encoder_macs + trg_tokens * decoder_macs)


def as_multi_layer_lstm(state: dict) -> dict:
    """encdec's weights under the names of one multi-layer nn.LSTM: StackedRNN's layer i holds
    `rnn.layers.i.weight_ih_l0` where nn.LSTM holds `rnn.weight_ih_l{i}`."""
    return {re.sub(r"rnn\.layers\.(\d+)\.(\w+)_l0$", r"rnn.\2_l\1", k): v for k, v in state.items()}


def time_reference_training(model, pairs, batches, pad_idx, ratio) -> tuple[int, float]:
    optimizer = torch.optim.Adam(model.parameters())
    criterion = nn.CrossEntropyLoss(ignore_index=pad_idx)
    tokens, start = 0, time.perf_counter()
    for indices in batches:
        batch = collate(pairs, indices, pad_idx)
        reference.train_step(
            model, batch.src, batch.trg, optimizer, criterion, teacher_forcing_ratio=ratio
        )
        tokens += batch.n_target_tokens
    return tokens, time.perf_counter() - start


def encdec_training(model, pairs, batches, settings, optimizer, coins) -> tuple[int, float]:
    """Target tokens and seconds of `encdec train`'s step over `batches`: fed ahead by the
    background thread, no host read until the end (steps.train_batch, feeding.fed_ahead)."""
    model.train()
    tally, tokens, start = StepTally(torch.device("cpu")), 0, time.perf_counter()
    made = lambda indices: collate(pairs, indices, PAD_IDX)  # noqa: E731
    for indices, batch in fed_ahead(batches, made, pin=False):
        ratio = settings.teacher_forcing_ratio
        step_coins = teacher_forcing_coins(ratio, pairs, indices, coins)
        train_batch(model, batch, settings, optimizer, None, tally, coins=step_coins)
        tokens += batch.n_target_tokens
    tally.read(len(batches))
    return tokens, time.perf_counter() - start


def time_encdec_training(model, pairs, batches, pad_idx, ratio) -> tuple[int, float]:
    optimizer = make_optimizer(model, lr=0.001)
    coins = torch.Generator().manual_seed(0)  # teacher forcing's, for a ratio below 1
    settings = TrainingConfig(teacher_forcing_ratio=ratio)
    return encdec_training(model, pairs, batches, settings, optimizer, coins)


def time_reference_translation(model, pairs, sos_idx, eos_idx, max_len) -> float:
    start = time.perf_counter()
    for index in range(len(pairs)):
        source, _ = pairs.pair(index)
        reference.translate_sentence(model, source, sos_idx, eos_idx, max_len)
    return time.perf_counter() - start


def time_encdec_translation(model, examples, vocabularies, max_len) -> float:
    src_vocab, _ = vocabularies
    start = time.perf_counter()
    decoding = DecodingConfig(max_len_a=0.0, max_len_b=max_len, batch_size=128)
    for _, found in decode_examples(model, examples, decoding, src_pad_idx=src_vocab.pad_idx):
        hypotheses_of(found.to("cpu"))  # the ids and scores as the translator reads them
    return time.perf_counter() - start


def adam_step_milliseconds(model: nn.Module, rounds: int) -> dict[str, list[float]]:
    """Time one Adam step over the model's parameters for each of PyTorch's implementations."""
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    timings = {}
    for name, options in (
        ("for-loop", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        optimizer = torch.optim.Adam(model.parameters(), **options)
        optimizer.step()  # allocates the moment buffers
        timings[name] = []
        for _ in range(5 * rounds):
            start = time.perf_counter()
            optimizer.step()
            timings[name].append(1000 * (time.perf_counter() - start))
    model.zero_grad(set_to_none=True)
    return timings


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def report(name: str, reference_values: list[float], encdec_values: list[float], unit: str):
    ratio = statistics.median(encdec_values) / statistics.median(reference_values)
    print(
        f"{name:<44} reference {summary(reference_values)} | encdec "
        f"{summary(encdec_values)} {unit} | ratio {ratio:5.2f}x",
        flush=True,
    )


def report_recipe(config_path: str, data_dir: str, n_batches: int, rounds: int) -> None:
    """Training tokens/s of a recipe's model with its own batch size and training settings."""
    config = load_config(config_path, [f"data.data_dir={data_dir}"])
    corpus = build_corpus(config.data)
    torch.manual_seed(0)
    model = build_model(config.model, len(corpus.src_vocab), len(corpus.trg_vocab))
    settings = config.training
    optimizer = make_optimizer(model, settings.lr)
    rng, train, rates = np.random.default_rng(0), corpus.ids["train"], []
    coins = torch.Generator().manual_seed(settings.seed)  # teacher forcing's
    for _ in range(rounds):
        batches = bucket_batches(train, settings.batch_size, settings.bucket_pool, rng)
        tokens, seconds = encdec_training(
            model, train, batches[:n_batches], settings, optimizer, coins
        )
        rates.append(tokens / seconds)
    median = statistics.median(rates)
    print(
        f"{config_path} training: {median:,.0f} target tokens/s "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {rounds} rounds of {n_batches} batches)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/multi30k")
    parser.add_argument("--quick", action="store_true", help="few batches and sentences (~1 min)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per figure")
    parser.add_argument("--checkpoint", help="trained best.pt: also measure int8's BLEU cost")
    parser.add_argument("--recipe", help="a config: measure only its training tokens/s")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    train_batches = 4 if args.quick else 25
    if args.recipe:
        print(f"command: python benchmarks/speed.py {' '.join(sys.argv[1:])}")
        report_recipe(args.recipe, args.data_dir, train_batches, rounds)
        return
    sentences = 60 if args.quick else 1000
    print(f"command: python benchmarks/speed.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} rounds")

    peak = matmul_peak_gflops()
    print(f"measured fp32 matmul peak: {peak:,.0f} GFLOP/s")
    corpus = build_corpus(DataConfig(data_dir=args.data_dir))
    train = corpus.ids["train"]
    test = corpus.ids["test"].select(np.arange(min(sentences, len(corpus.ids["test"]))))
    pad_idx, sos_idx, eos_idx = (
        corpus.trg_vocab.pad_idx,
        corpus.trg_vocab.sos_idx,
        corpus.trg_vocab.eos_idx,
    )
    sizes = (len(corpus.src_vocab), len(corpus.trg_vocab))

    torch.manual_seed(0)
    encdec_model = build_model(ModelConfig(), *sizes)
    reference_model = reference.build_reference(*sizes)
    reference_model.load_state_dict(as_multi_layer_lstm(encdec_model.state_dict()))
    adam = adam_step_milliseconds(build_model(ModelConfig(), *sizes), rounds)
    print(
        "Adam step, 13.9M parameters: "
        + " | ".join(
            f"{name} {statistics.median(ms):.1f} ms ({min(ms):.1f}-{max(ms):.1f})"
            for name, ms in adam.items()
        ),
        flush=True,
    )
    rng = np.random.default_rng(0)
    for ratio in (0.5, 1.0):
        speeds = {"reference": [], "encdec": [], "reference_util": [], "encdec_util": []}
        for _ in range(rounds):
            plain = bucket_batches(train, 128, 1, rng)[:train_batches]
            bucketed = bucket_batches(train, 128, 100, rng)[:train_batches]
            for name, timer, batches, model in (
                ("reference", time_reference_training, plain, reference_model),
                ("encdec", time_encdec_training, bucketed, encdec_model),
            ):
                tokens, seconds = timer(model, train, batches, pad_idx, ratio)
                speeds[name].append(tokens / seconds)
                flops = training_flops(encdec_model, train, batches)
                speeds[f"{name}_util"].append(100 * flops / seconds / 1e9 / peak)
        report(
            f"train tokens/s, teacher forcing {ratio}",
            speeds["reference"],
            speeds["encdec"],
            "tok/s",
        )
        report(
            f"  FLOP utilisation (% of matmul peak), TF {ratio}",
            speeds["reference_util"],
            speeds["encdec_util"],
            "%",
        )
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS of this process after training (both models): {rss_gb:.2f} GB")

    int8_model = quantize_int8(encdec_model)
    reference_rates, encdec_rates, int8_rates = [], [], []
    for _ in range(rounds):
        seconds = time_reference_translation(reference_model, test, sos_idx, eos_idx, 25)
        reference_rates.append(len(test) / seconds)
        for model, rates in ((encdec_model, encdec_rates), (int8_model, int8_rates)):
            seconds = time_encdec_translation(model, test, (corpus.src_vocab, corpus.trg_vocab), 25)
            rates.append(len(test) / seconds)
    report(
        f"greedy translation sentences/s ({len(test)} test)",
        reference_rates,
        encdec_rates,
        "sent/s",
    )
    report("int8 translation vs fp32 batched", encdec_rates, int8_rates, "sent/s")
    encoder_macs, decoder_macs = macs_per_token(encdec_model)
    flops = float((2 * (test.src_lengths * encoder_macs + 25 * decoder_macs)).mean())
    print(
        f"fp32 ceiling at the matmul peak, 25 decoder steps: {peak * 1e9 / flops:,.0f} sent/s "
        f"({flops / 1e6:.0f} MFLOP per sentence)"
    )
    if args.checkpoint:
        report_int8_bleu(args.checkpoint, args.data_dir)


def report_int8_bleu(checkpoint: str, data_dir: str) -> None:
    """BLEU of a trained checkpoint on test 2016, fp32 against int8."""
    translator = Translator.load(checkpoint)
    translator.config.data.data_dir = data_dir
    from encdec.corpus import read_splits

    pairs = read_splits(translator.config.data)["test"]
    fp32 = translator.evaluate(pairs)["bleu"]
    translator.model = quantize_int8(translator.model)
    int8 = translator.evaluate(pairs)["bleu"]
    print(f"test BLEU fp32 {fp32:.2f} | int8 {int8:.2f} | drop {fp32 - int8:.2f}")


if __name__ == "__main__":
    main()
