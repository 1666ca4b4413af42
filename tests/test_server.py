"""`encdec serve` over HTTP: answers equal `encdec translate`; batching, limits, errors, keys."""

import asyncio
import json
import logging
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving import Server, attention_checkpoint, serving

import encdec
from encdec.cli import DEMO_SENTENCES, main
from encdec.config import DecodingConfig
from encdec.serve_queue import BatchingQueue
from encdec.server import DecodingOptions, TranslateRequest
from encdec.translator import Translator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

API_KEY = "test-key-3f9c2a"
SENTENCES = [*DEMO_SENTENCES, "where is the station?", "i love you", "good night", "how are you?"]
LIMITS = ["--max-body-bytes", "4000", "--max-sentences", "10", "--max-sentence-chars", "60"]
LIMITS += ["--max-beam-size", "5"]


@pytest.fixture(scope="module")
def demo_server(demo_checkpoint, tmp_path_factory) -> Server:
    """The demo model behind an API key, small limits and a 100 ms batching window."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    options = [*LIMITS, "--max-wait-ms", "100", "--api-key-env", "ENCDEC_TEST_KEY"]
    with serving(demo_checkpoint, log, *options, env={"ENCDEC_TEST_KEY": API_KEY}) as server:
        yield server


@pytest.fixture(scope="module")
def attention_server(tmp_path_factory) -> Server:
    log = tmp_path_factory.mktemp("serve_attention") / "serve.log"
    with serving(attention_checkpoint(tmp_path_factory), log) as server:
        yield server


@pytest.fixture()
def client(demo_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=demo_server.url, headers=headers, timeout=120) as http:
        yield http


def encdec_translate(
    checkpoint: Path | list[Path], sentences: list[str], tmp_path: Path, *options
) -> list:
    """What `encdec translate CHECKPOINT... --device cpu OPTIONS` writes for `sentences`."""
    source, output = tmp_path / "source.txt", tmp_path / "output.txt"
    source.write_text("".join(sentence + "\n" for sentence in sentences))
    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    argv = ["translate", *map(str, checkpoints), "--input", str(source), "--output", str(output)]
    assert main([*argv, "--device", "cpu", "--quiet", *options]) == 0
    return output.read_text().splitlines()


def post_concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST each body to /translate from its own thread, all at once."""
    start = threading.Barrier(len(bodies))
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def post(body: dict) -> httpx.Response:
        start.wait()
        return httpx.post(f"{url}/translate", json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    """An error answer: the status, a JSON {"error": ...} naming `words`, no stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    for word in words:
        assert word in body["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_the_server_listens_on_loopback_and_prints_its_url(demo_server):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", demo_server.url)


def test_health_is_ok_without_a_key(demo_server):
    response = httpx.get(f"{demo_server.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_info_describes_the_model(client, demo_checkpoint):
    info = client.get("/info").json()
    translator = Translator.load(demo_checkpoint, device="cpu")
    assert (info["source_language"], info["target_language"]) == ("en", "es")
    assert info["parameters"] == sum(p.numel() for p in translator.model.parameters())
    assert info["models"] == 1 and info["rescorer"] is None and info["channel"] is None
    assert info["source_vocabulary"] == len(translator.src_vocab)
    assert info["target_vocabulary"] == len(translator.trg_vocab)
    assert info["attention"] is False
    assert info["decoding"]["beam_size"] == translator.config.decoding.beam_size
    assert info["decoding"]["max_len"] == 10
    assert info["encdec_version"] == encdec.__version__
    assert info["limits"]["max_sentences"] == 10
    assert info["batching"]["max_batch_sentences"] == 64


def test_concurrent_greedy_answers_equal_encdec_translate(demo_server, demo_checkpoint, tmp_path):
    responses = post_concurrently(demo_server.url, [{"text": [s]} for s in SENTENCES])
    served = [response.json()["translations"][0]["text"] for response in responses]
    assert served == encdec_translate(demo_checkpoint, SENTENCES, tmp_path)


def test_concurrent_requests_share_batches(client, demo_server):
    before = client.get("/info").json()["batching"]
    responses = post_concurrently(demo_server.url, [{"text": [s]} for s in SENTENCES * 2])
    assert all(response.status_code == 200 for response in responses)
    after = client.get("/info").json()["batching"]
    assert after["sentences"] - before["sentences"] == 2 * len(SENTENCES)
    assert after["batches"] - before["batches"] < 2 * len(SENTENCES)
    assert after["most_requests_in_one_batch"] > 1


def test_beam_search_and_n_best_equal_encdec_translate(client, demo_checkpoint, tmp_path):
    response = client.post("/translate", json={"text": SENTENCES, "beam_size": 4, "n_best": 3})
    translations = response.json()["translations"]
    assert [t["text"] for t in translations] == encdec_translate(
        demo_checkpoint, SENTENCES, tmp_path, "--beam", "4"
    )
    for translation in translations:
        assert len(translation["n_best"]) == 3
        best = translation["n_best"][0]
        assert (best["text"], best["score"]) == (translation["text"], translation["score"])
        assert translation["tokens"] == best["tokens"]
        assert translation["source_tokens"][0] == "<sos>"
        assert "attention" not in translation  # not asked for, and the model has none


def test_seeded_sampling_equals_encdec_translate_beside_other_requests(
    demo_server, demo_checkpoint, tmp_path
):
    sampling = {"temperature": 1.5, "top_k": 5}
    seeded = {"text": SENTENCES, "seed": 7, **sampling}
    bodies = [seeded, *({"text": [s], "seed": i, **sampling} for i, s in enumerate(SENTENCES))]
    responses = post_concurrently(demo_server.url, bodies)
    served = [t["text"] for t in responses[0].json()["translations"]]
    options = ("--temperature", "1.5", "--top-k", "5", "--seed", "7")
    assert served == encdec_translate(demo_checkpoint, SENTENCES, tmp_path, *options)
    greedy = encdec_translate(demo_checkpoint, SENTENCES, tmp_path)
    assert served != greedy  # it did sample


def test_a_single_string_is_read_one_sentence_a_line(client):
    as_lines = client.post("/translate", json={"text": "good morning\nthank you very much\n"})
    as_list = client.post("/translate", json={"text": ["good morning", "thank you very much"]})
    texts = [t["text"] for t in as_lines.json()["translations"]]
    assert texts == [t["text"] for t in as_list.json()["translations"]]
    assert len(texts) == 2


def test_the_answer_says_how_long_it_took(client):
    body = client.post("/translate", json={"text": ["good morning"]}).json()
    assert body["elapsed_ms"] > 0
    assert set(body) == {"translations", "elapsed_ms"}


def test_a_body_over_the_limit_is_413(client):
    response = client.post("/translate", json={"text": ["a" * 50] * 100})
    assert_error(response, 413, "max_body_bytes", "4000")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_far_over_the_limit_gets_its_413_read_by_urllib(demo_server, declared):
    # urllib sends the whole body before it reads the answer: a server that answers and
    # closes with megabytes unread makes the kernel reset the connection, answer and all
    body = b'{"text": ["' + b"a" * 10_000_000 + b'"]}'
    data = body if declared else iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    if not declared:
        headers["Transfer-Encoding"] = "chunked"
    request = urllib.request.Request(f"{demo_server.url}/translate", data, headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=60)
    assert answer.value.code == 413
    message = json.loads(answer.value.read())["error"]
    assert "max_body_bytes = 4000" in message


def test_a_client_gone_before_its_body_ended_is_no_internal_error(demo_server):
    tracebacks_before = sum("Traceback" in line for line in demo_server.log_lines())
    port = int(demo_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        head = "POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
        sock.sendall(f"{head}Authorization: Bearer {API_KEY}\r\n\r\n".encode() + b'{"te')
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1000) == b""  # closed without an answer: there is no one to answer
    time.sleep(0.5)  # the log line is written as the request ends
    lines = demo_server.log_lines()
    assert sum("Traceback" in line for line in lines) == tracebacks_before, "\n".join(lines[-30:])
    assert re.search(r"POST /translate 400 [\d.]+ ms 0 sentences$", lines[-1])


def test_too_many_sentences_is_422_naming_the_limit(client):
    response = client.post("/translate", json={"text": ["hi"] * 11})
    assert_error(response, 422, "max_sentences", "10")


def test_a_long_sentence_is_422_naming_the_limit(client):
    response = client.post("/translate", json={"text": ["hi", "x" * 61]})
    assert_error(response, 422, "max_sentence_chars", "sentence 2", "61")


def test_a_beam_over_the_limit_is_422(client):
    response = client.post("/translate", json={"text": ["hi"], "beam_size": 6})
    assert_error(response, 422, "max_beam_size")


def test_n_best_over_beam_size_is_422(client):
    response = client.post("/translate", json={"text": ["hi"], "beam_size": 2, "n_best": 3})
    assert_error(response, 422, "n_best", "beam_size")


def test_a_temperature_with_a_beam_is_422(client):
    response = client.post("/translate", json={"text": ["hi"], "temperature": 0.8, "beam_size": 2})
    assert_error(response, 422, "sampling", "beam search", "do not mix")


def test_a_temperature_too_high_to_compute_is_422_not_500(client):
    response = client.post("/translate", json={"text": ["hi"], "temperature": 1e308})
    assert_error(response, 422, "temperature", "at most 100")


def test_a_top_k_without_sampling_is_422(client):
    response = client.post("/translate", json={"text": ["hi"], "top_k": 3})
    assert_error(response, 422, "top-k", "temperature")


@pytest.mark.parametrize(
    ("checkpoints", "asked", "beam_size", "seed"),
    [
        ({"beam_size": 4}, {"temperature": 0.8, "seed": 3}, 1, 3),
        ({"temperature": 0.8}, {"beam_size": 2, "seed": 3}, 2, None),
    ],
)
def test_a_request_to_sample_or_search_overrides_the_checkpoints_other_choice(
    checkpoints, asked, beam_size, seed
):
    options = DecodingOptions.of(
        TranslateRequest(text=["hi"], **asked), DecodingConfig(**checkpoints)
    )
    assert (options.beam_size, options.seed) == (beam_size, seed)


def test_unk_replace_without_attention_is_422(client):
    response = client.post("/translate", json={"text": ["hi"], "unk_replace": True})
    assert_error(response, 422, "unk_replace", "attention")


def test_a_coverage_penalty_without_attention_is_422(client):
    body = {"text": ["hi"], "beam_size": 2, "coverage_penalty": 0.5}
    assert_error(client.post("/translate", json=body), 422, "coverage_penalty", "attention")


def test_a_coverage_penalty_serves_what_encdec_translate_gives(
    attention_server, tmp_path_factory, tmp_path
):
    sentences = [*SENTENCES, "see you later", "i am hungry."]
    body = {"text": sentences, "beam_size": 4, "coverage_penalty": 3.0}
    served = httpx.post(f"{attention_server.url}/translate", json=body, timeout=120).json()
    texts = [t["text"] for t in served["translations"]]
    options = ["--beam", "4", "--coverage-penalty", "3"]
    checkpoint = attention_checkpoint(tmp_path_factory)
    assert texts == encdec_translate(checkpoint, sentences, tmp_path, *options)
    api = Translator.load(checkpoint, device="cpu")
    assert texts == api.translate(sentences, beam=4, coverage_penalty=3.0)
    assert texts != api.translate(sentences, beam=4)  # the penalty chose other translations


def test_malformed_json_is_400(client):
    response = client.post(
        "/translate", content=b'{"text": ["hi"', headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "not valid JSON")
    assert_error(client.post("/translate", content=b"[" * 3000), 400, "not valid JSON")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text": ["hi"], "beam": 5}, ("unknown field 'beam'", "beam_size")),
        ({"beam_size": 2}, ("'text' is required",)),
        ({"text": ["hi", 3]}, ("text.1", "string")),
        ({"text": 5}, ("'text': must be a string (one sentence a line) or a list", "a number")),
        ({"text": None}, ("'text': must be a string", "not null")),
        ({"text": ["hi"], "beam_size": "5"}, ("beam_size",)),
        ({"text": ["hi"], "temperature": -1}, ("temperature",)),
        ({"text": ["hi"], "seed": 1.5}, ("seed",)),
        (["hi"], ("JSON object",)),
    ],
)
def test_a_bad_field_is_422_naming_it(client, body, words):
    assert_error(client.post("/translate", json=body), 422, *words)


def test_a_wrong_method_is_405(client):
    assert_error(client.get("/translate"), 405, "GET", "POST")
    assert_error(client.post("/health", json={}), 405, "POST")


def test_an_unknown_path_is_404(client):
    assert_error(client.get("/translations"), 404, "/translations")


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (None, "this server needs an API key"),
        (f"Bearer {API_KEY}x", "wrong API key"),
        (f"bearer  {API_KEY[:-1]}", "wrong API key"),
        (API_KEY, "send the API key as 'Authorization: Bearer <key>'"),
        ("Bearer", "send the API key as 'Authorization: Bearer <key>'"),
        (f"Basic {API_KEY}", "send the API key as 'Authorization: Bearer <key>'"),
    ],
)
def test_without_the_right_key_the_api_is_401_saying_what_is_wrong(
    demo_server, authorization, problem
):
    headers = {"Authorization": authorization} if authorization else {}
    for response in (
        httpx.post(f"{demo_server.url}/translate", json={"text": ["hi"]}, headers=headers),
        httpx.get(f"{demo_server.url}/info", headers=headers),
    ):
        assert_error(response, 401, "API key", problem)
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_page_needs_no_key_and_nothing_from_elsewhere(demo_server):
    page = httpx.get(demo_server.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    files = {"index.html": page.text}
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{demo_server.url}/web/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        files[name] = response.text
    assert 'src="/web/app.js"' in files["index.html"]
    assert all("http://" not in text and "https://" not in text for text in files.values())


def test_one_bad_request_does_not_affect_the_others(demo_server, demo_checkpoint, tmp_path):
    bad = [{"text": ["x" * 61]}, {"text": ["hi"], "n_best": 2}, {"text": ["hi"], "nope": 1}]
    good = [{"text": [s]} for s in SENTENCES]
    responses = post_concurrently(demo_server.url, [*bad, *good])
    assert [r.status_code for r in responses] == [422] * len(bad) + [200] * len(good)
    served = [r.json()["translations"][0]["text"] for r in responses[len(bad) :]]
    assert served == encdec_translate(demo_checkpoint, SENTENCES, tmp_path)


def test_one_log_line_per_request(client, demo_server):
    client.post("/translate", json={"text": ["good morning", "good night", "i love you"]})
    client.get("/no-such-page-7d1")
    time.sleep(0.5)  # the log line is written as the answer leaves
    lines = demo_server.log_lines()
    assert any(re.search(r"POST /translate 200 [\d.]+ ms 3 sentences$", line) for line in lines)
    assert sum("/no-such-page-7d1" in line for line in lines) == 1
    not_found = r"GET /no-such-page-7d1 404 [\d.]+ ms 0 sentences$"
    assert any(re.search(not_found, line) for line in lines)


def test_a_failing_batch_fails_only_the_request_that_broke_it():
    def decode(sentences: list[str], options: str) -> list[str]:
        if "poison" in sentences:
            raise ValueError("cannot decode poison")
        return [f"{sentence}/{options}" for sentence in sentences]

    async def requests() -> list:
        queue = BatchingQueue(decode, max_batch_sentences=16, max_wait_ms=50)
        async with queue.running():
            texts = [["a", "b"], ["poison"], ["c"], ["d"]]
            answers = await asyncio.gather(
                *(queue.translate(text, "greedy") for text in texts), return_exceptions=True
            )
            return answers, queue.stats

    answers, stats = asyncio.run(requests())
    assert answers[0] == ["a/greedy", "b/greedy"] and answers[2:] == [["c/greedy"], ["d/greedy"]]
    assert isinstance(answers[1], ValueError)
    assert stats.batches == 3  # the shared batch failed; each request was then decoded alone


def test_only_requests_with_equal_options_share_a_batch():
    batches = []

    def decode(sentences: list[str], options: str) -> list[str]:
        batches.append((options, sentences))
        return sentences

    async def requests() -> None:
        queue = BatchingQueue(decode, max_batch_sentences=3, max_wait_ms=50)
        async with queue.running():
            await asyncio.gather(
                queue.translate(["a", "b"], "beam"),
                queue.translate(["c"], "greedy"),
                queue.translate(["d", "e"], "beam"),
                queue.translate(["f"], "beam", alone=True),
            )

    asyncio.run(requests())
    assert sorted(batches) == [
        ("beam", ["a", "b"]),  # "d", "e" would make 4 sentences, over max_batch_sentences
        ("beam", ["d", "e"]),
        ("beam", ["f"]),  # alone, though its options match
        ("greedy", ["c"]),
    ]


def test_attention_comes_back_when_asked_for(attention_server):
    url = f"{attention_server.url}/translate"
    body = {"text": ["good morning", "thank you very much"], "attention": True, "beam_size": 3}
    translations = httpx.post(url, json=body, timeout=120).json()["translations"]
    for translation in translations:
        rows = translation["attention"]
        assert len(rows) == len(translation["tokens"])
        assert all(len(row) == len(translation["source_tokens"]) for row in rows)
        assert all(abs(sum(row) - 1) < 1e-2 for row in rows)
    without = httpx.post(url, json={**body, "attention": False}, timeout=120).json()
    assert all("attention" not in t for t in without["translations"])
    info = httpx.get(f"{attention_server.url}/info").json()
    assert info["attention"] is True and info["attention_kind"] == "general"


def test_translate_json_writes_what_the_server_answers(
    attention_server, tmp_path_factory, tmp_path
):
    sentences = ["good morning", "thank you very much", ""]
    body = {"text": sentences, "beam_size": 3, "n_best": 2, "attention": True}
    served = httpx.post(f"{attention_server.url}/translate", json=body, timeout=120).json()
    options = ("--beam", "3", "--n-best", "2", "--json")
    lines = encdec_translate(attention_checkpoint(tmp_path_factory), sentences, tmp_path, *options)
    written = [json.loads(line) for line in lines]
    assert len(written) == len(sentences)
    for mine, theirs in zip(written, served["translations"]):
        assert mine.keys() == theirs.keys()
        for key in ("text", "tokens", "source_tokens"):
            assert mine[key] == theirs[key]
        assert [t["tokens"] for t in mine["n_best"]] == [t["tokens"] for t in theirs["n_best"]]
        scores = [t["score"] for t in theirs["n_best"]]  # the server may run on a GPU
        assert [t["score"] for t in mine["n_best"]] == pytest.approx(scores, abs=1e-3)
        for row, served_row in zip(mine["attention"], theirs["attention"], strict=True):
            assert row == pytest.approx(served_row, abs=1e-3)


def test_an_ensemble_with_second_opinions_serves_what_encdec_translate_gives_for_it(
    demo_checkpoint, channel_checkpoint, tmp_path_factory, tmp_path
):
    members = [demo_checkpoint, attention_checkpoint(tmp_path_factory)]  # one without attention
    rescore = ["--rescore", str(members[1]), "--rescore-weight", "0.25"]
    rescore += ["--channel", str(channel_checkpoint), "--channel-weight", "0.15"]
    with serving(members, tmp_path / "serve.log", *rescore, "--beam", "3") as server:
        body = {"text": SENTENCES, "attention": True}  # the beam of --beam
        translations = httpx.post(f"{server.url}/translate", json=body, timeout=120).json()
        info = httpx.get(f"{server.url}/info").json()
    served = [t["text"] for t in translations["translations"]]
    assert served == encdec_translate(members, SENTENCES, tmp_path, "--beam", "3", *rescore)
    alone = [Translator.load(member, device="cpu") for member in members]
    assert info["models"] == 2
    assert info["rescorer"] == {"models": 1, "weight": 0.25}
    assert info["channel"] == {"models": 1, "weight": 0.15}
    assert info["decoding"]["beam_size"] == 3
    assert info["parameters"] == sum(translator.parameter_count for translator in alone)
    rows = translations["translations"][0]["attention"]  # the attending member's
    assert abs(sum(rows[0]) - 1) < 1e-2


def test_sigterm_finishes_the_request_in_flight_then_exits_0(demo_checkpoint, tmp_path):
    # a run folder serves its best.pt; a 3 s window keeps the request waiting in the queue
    options = ("--max-wait-ms", "3000")
    with serving(demo_checkpoint.parent, tmp_path / "serve.log", *options) as server:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post, f"{server.url}/translate", json={"text": ["good morning"]}, timeout=60
            )
            _wait_for_waiting_sentences(server.url)
            server.process.send_signal(signal.SIGTERM)
            _wait_until_refused(server.url)
            assert not in_flight.done()
            response = in_flight.result()
        assert response.status_code == 200
        assert response.json()["translations"][0]["text"] == "buenos días"
        assert server.process.wait(timeout=60) == 0
        assert "stopped: every request in flight has its answer" in server.log.read_text()


def _wait_for_waiting_sentences(url: str) -> None:
    for _ in range(600):
        with httpx.Client() as fresh:  # no kept-alive connection to hold the server open
            if fresh.get(f"{url}/info").json()["batching"]["waiting_sentences"] == 1:
                return
        time.sleep(0.05)
    raise AssertionError("the request never reached the queue")


def _wait_until_refused(url: str) -> None:
    for _ in range(100):
        try:
            httpx.get(f"{url}/health", timeout=5)
        except httpx.ConnectError:
            return
        except (httpx.ReadError, httpx.RemoteProtocolError):
            return  # accepted just as the listener closed, then dropped: stopped accepting
        time.sleep(0.02)
    raise AssertionError("the server still accepts connections after SIGTERM")


def test_an_unset_api_key_variable_is_a_clear_error(demo_checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("ENCDEC_UNSET_KEY", raising=False)
    assert main(["serve", str(demo_checkpoint), "--api-key-env", "ENCDEC_UNSET_KEY"]) == 2
    error = capsys.readouterr().err
    assert "ENCDEC_UNSET_KEY" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rescore", "DEMO"], "rerank a beam, but the checkpoint decodes greedily: add --beam 5"),
        (["--beam", "11"], "--beam 11 is above --max-beam-size 10"),
    ],
)
def test_a_default_beam_that_cannot_serve_is_refused_before_listening(
    demo_checkpoint, capsys, options, message
):
    options = [str(demo_checkpoint) if option == "DEMO" else option for option in options]
    assert main(["serve", str(demo_checkpoint), "--device", "cpu", "--port", "0", *options]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_the_request_body_shape_matches_the_issue(client):
    body = {"text": ["good morning"], "beam_size": 5, "n_best": 1, "temperature": 0}
    body |= {"seed": None, "attention": False}
    response = client.post("/translate", content=json.dumps(body))
    assert response.status_code == 200
    (translation,) = response.json()["translations"]
    assert set(translation) == {"text", "tokens", "score", "n_best", "source_tokens", "truncated"}


@pytest.mark.parametrize("body", [b'{"text": ["hi", "\\ud800"]}', b'{"text": "hi\\nx\\udfff"}'])
def test_a_lone_surrogate_is_422_naming_the_sentence(client, demo_server, body):
    response = client.post("/translate", content=body)
    assert_error(response, 422, "'text': sentence 2 holds", "lone surrogate")
    time.sleep(0.5)  # the log line is written as the answer leaves
    assert "Traceback" not in demo_server.log.read_text()


def test_an_internal_error_is_answered_500_and_logged_once(demo_checkpoint, caplog):
    from starlette.testclient import TestClient

    from encdec.serve import Limits
    from encdec.server import create_app

    translator = Translator.load(demo_checkpoint, device="cpu")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    translator.translations = broken
    app = create_app(translator, Limits(), 8, 1.0, None)
    # the exception must not leave the app: uvicorn (here the test client) would log it again
    with caplog.at_level(logging.ERROR), TestClient(app) as http:
        response = http.post("/translate", json={"text": ["hi"]})
    assert_error(response, 500, "internal error")
    logged = [record for record in caplog.records if record.exc_info]
    assert [record.getMessage() for record in logged] == ["internal error on POST /translate"]


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_a_port_outside_0_to_65535_is_refused_naming_it(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "best.pt", "--port", port])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --port: must be a TCP port, 0 to 65535, not '{port}'" in error
    assert "Traceback" not in error


def test_a_host_that_is_not_this_machines_blames_the_host_before_loading(tmp_path, capsys):
    # 10.99.99.99 is no address of the test machine: binding fails at once, sending nothing
    argv = ["serve", str(tmp_path / "not_loaded.pt"), "--host", "10.99.99.99", "--port", "0"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "cannot listen on 10.99.99.99 port 0" in error
    assert "--host must be an address of this machine" in error and "--port" not in error
