"""ftscale.eval on fixed strings and a tiny random LLaMA (2 layers, hidden 64, CPU, fp32).

Log-likelihoods are checked against a direct forward pass of each (context + option) sequence
on its own; generation against a hand-written greedy loop; scores against values computed by
hand; sharded runs against the unsharded one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ftscale.errors import ConfigError, DataError  # noqa: E402
from ftscale.eval import lm  # noqa: E402
from ftscale.eval.runner import TaskSuite, flatten, merge_records  # noqa: E402
from ftscale.eval.scoring import (  # noqa: E402
    choice_accuracy, contains, distinct_n, exact_match, extract, normalize, rouge_l, score_generation,
)
from ftscale.eval.tasks import TaskConfig, load_tasks  # noqa: E402
from ftscale.train.model import load_model  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 128,
        "tie_word_embeddings": False}
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
WORDS = ("in the beginning god created the heaven and the earth and the earth was without form and void "
         "and darkness was upon the face of the deep light water bread king city river stone field house door")


@pytest.fixture(scope="module")
def model():
    return load_model(None, TINY, seed=3, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A real byte-level BPE tokenizer (vocab 300) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([WORDS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def direct_loglik(model, context: list[int], option: list[int]) -> float:
    ids = torch.tensor([context + option])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
    return sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(option))


# ------------------------------------------------------------------ scores on fixed strings

def test_exact_match_and_contains_after_normalisation():
    assert exact_match(normalize("  The  book of\nJohn "), normalize("The book of John")) == 1.0
    assert exact_match("john", "John") == 0.0
    assert exact_match(normalize("JOHN.", ignore_case=True, ignore_punctuation=True), "john") == 1.0
    assert contains("it is from the book of john", "john") == 1.0
    assert contains("it is from the book of john", "matthew") == 0.0
    assert contains("anything", "") == 0.0


def test_rouge_l_hand_computed():
    # LCS of "the cat sat on the mat" and "the cat lay on the mat": the cat on the mat (5 words)
    # P = R = 5/6 → F1 = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # prediction 3 words, reference 6, LCS 3 ("the", "on", "mat"): P 1, R 1/2 → F1 2/3
    assert rouge_l("the on mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("", "the cat") == 0.0
    assert rouge_l("Thy WORD is a lamp", "thy word is a lamp!") == pytest.approx(1.0)


def test_extractor_and_best_reference():
    import re

    pattern = re.compile(r"book of (\w+)")
    assert extract("It is from the book of Proverbs.", pattern) == "Proverbs"
    assert extract("no idea", pattern) == ""
    scores = score_generation("It is from the book of proverbs.", ["Psalms", "Proverbs"], ["exact_match", "contains"],
                              pattern=pattern, ignore_case=True)
    assert scores == {"exact_match": 1.0, "contains": 1.0}


def test_distinct_n_hand_computed():
    # unigrams: a b a c | a b → 6 total, distinct {a, b, c} = 3; bigrams: ab ba ac | ab → 4 total, 3 distinct
    assert distinct_n(["a b a c", "A b"], 1) == pytest.approx(3 / 6)
    assert distinct_n(["a b a c", "A b"], 2) == pytest.approx(3 / 4)
    assert distinct_n([], 2) == 0.0
    assert distinct_n(["same answer"] * 10, 2) == pytest.approx(0.1)


def test_choice_accuracy_and_length_normalisation():
    # item 1: option "b" wins on the sum; per character "aaaa" (−4/4 = −1) beats "b" (−2/1)
    logliks = [[-4.0, -2.0], [-1.0, -3.0]]
    choices = [["aaaa", "b"], ["x", "y"]]
    assert choice_accuracy(logliks, choices, [0, 0]) == {"acc": 0.5, "acc_norm": 1.0}
    assert choice_accuracy([[-1.0, -1.0]], [["a", "b"]], [0])["acc"] == 1.0  # ties: first option


# ------------------------------------------------------------------ model-level numbers

def test_choice_logliks_equal_direct_forward_passes(model):
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    # the last `shared` context tokens are the options' common first tokens, scored for each
    requests = [lm.ChoiceRequest(ids(7), [ids(1), ids(3), ids(2)]),
                lm.ChoiceRequest(ids(2) + ids(3), [ids(4), ids(1)], shared=3),
                lm.ChoiceRequest(ids(12), [ids(1), ids(1), ids(5), ids(2)]),
                lm.ChoiceRequest(ids(1) + ids(1), [ids(2), ids(1)], shared=1)]
    with torch.no_grad():
        got = lm.choice_logliks(model, requests, pad_id=0, device=torch.device("cpu"))
    for req, values in zip(requests, got):
        assert len(values) == len(req.options)
        cut = len(req.context) - req.shared
        for option, value in zip(req.options, values):
            direct = direct_loglik(model, req.context[:cut], req.context[cut:] + option)
            assert value == pytest.approx(direct, abs=1e-4)


def test_choice_request_moves_the_options_common_tokens_into_the_context(tokenizer):
    req = lm.choice_request(tokenizer, "the earth was", [" without form and void", " without form", " light"], 100)
    assert req.shared == 0  # " light" differs from the first token on
    req = lm.choice_request(tokenizer, "the earth was", [" without form and void", " without form"], 100)
    whole = [lm.encode_pair(tokenizer, "the earth was", o) for o in (" without form and void", " without form")]
    assert req.shared >= 1 and all(len(o) >= 1 for o in req.options)
    assert [req.context[len(whole[0][0]):] + o for o in req.options] == [c for _, c in whole]


def test_window_nll_equals_direct_forward(model):
    windows = [[1, 5, 9, 200, 17], [4, 8], [7, 7, 7, 7, 7, 7, 7, 7]]
    with torch.no_grad():
        got = lm.window_nll(model, windows, pad_id=0, device=torch.device("cpu"))
    for w, value in zip(windows, got):
        assert value == pytest.approx(-direct_loglik(model, w[:1], w[1:]), abs=1e-4)


def test_text_windows_predict_every_token_once(tokenizer):
    text = "in the beginning god created the heaven and the earth"
    ids = tokenizer.encode(text, add_special_tokens=False)
    windows = lm.text_windows(tokenizer, text, 4, prefix_id=99)
    assert sum(len(w) - 1 for w in windows) == len(ids)
    assert [t for w in windows for t in w[1:]] == ids
    assert windows[0][0] == 99 and all(len(w) <= 5 for w in windows)


def test_encode_pair_moves_trailing_space(tokenizer):
    ctx, cont = lm.encode_pair(tokenizer, "the earth was ", "void")
    assert ctx == tokenizer.encode("the earth was", add_special_tokens=False)
    assert ctx + cont == tokenizer.encode("the earth was void", add_special_tokens=False)


def test_generate_is_greedy_and_stops(model, tokenizer):
    prompts = ["in the beginning", "and the earth was without form and"]
    got = lm.generate(model, tokenizer, prompts, max_new_tokens=6, stop=[], device=torch.device("cpu"),
                      synced=False)
    for prompt, text in zip(prompts, got):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        out = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
                if nxt == tokenizer.eos_token_id:
                    break
                out.append(nxt)
        assert text == tokenizer.decode(out, skip_special_tokens=True)
    first = got[0]
    if len(first) > 2:  # a stop string cuts the text before its first occurrence
        cut = lm.generate(model, tokenizer, prompts[:1], max_new_tokens=6, stop=[first[1:3]],
                          device=torch.device("cpu"), synced=False)[0]
        assert cut == first[:first.find(first[1:3])]


# ------------------------------------------------------------------ tasks and suites

def write_tasks(tmp: Path) -> Path:
    books = ["Genesis", "Psalms", "Proverbs", "John"]
    mc = [{"prompt": f"Which book is this verse from? {w}", "choices": books, "answer": books[i % 4]}
          for i, w in enumerate(WORDS.split()[:9])]
    gen = [{"prompt": f"continue: {w}", "answer": [w, "the earth"]} for w in WORDS.split()[:5]]
    texts = [{"text": WORDS[: 40 + 9 * i]} for i in range(4)]
    for name, rows in (("mc.jsonl", mc), ("gen.jsonl", gen), ("texts.jsonl", texts)):
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "tasks.yaml").write_text(
        "tasks:\n"
        "  - {name: books, kind: multiple_choice, path: mc.jsonl, template: chat}\n"
        "  - {name: cont, kind: generate, path: gen.jsonl, metrics: [exact_match, rouge_l], max_new_tokens: 4}\n"
        "  - {name: ppl, kind: perplexity, path: texts.jsonl, window_tokens: 8}\n")
    return tmp / "tasks.yaml"


def test_sharded_run_equals_unsharded(model, tokenizer, tmp_path):
    suite = TaskSuite(load_tasks(write_tasks(tmp_path)), batch_size=3)
    cpu = torch.device("cpu")
    whole = suite.aggregate(suite.run_shard(model, tokenizer, device=cpu))
    parts = [suite.run_shard(model, tokenizer, device=cpu, rank=r, world_size=3) for r in range(3)]
    sharded = suite.aggregate(merge_records(parts))
    assert whole.keys() == sharded.keys() == {"books", "cont", "ppl"}
    for task in whole:
        for metric, value in whole[task].items():
            assert sharded[task][metric] == pytest.approx(value, abs=1e-6), (task, metric)
    assert whole["books"]["items"] == 9 and whole["cont"]["items"] == 5 and whole["ppl"]["items"] == 4
    flat = flatten(whole)
    assert {"task/books/acc", "task/books/acc_norm", "task/cont/rouge_l", "task/cont/distinct_2",
            "task/ppl/loss", "task/acc"} <= flat.keys()
    assert flat["task/ppl/ppl"] == pytest.approx(math.exp(flat["task/ppl/loss"]))


def test_multiple_choice_accuracy_matches_direct_scores(model, tokenizer, tmp_path):
    from ftscale.eval.runner import render_prompt

    tasks = load_tasks(write_tasks(tmp_path))
    suite = TaskSuite(tasks[:1], batch_size=4)
    records = suite.run_shard(model, tokenizer, device=torch.device("cpu"))["books"]
    correct = 0
    for rec in records:
        item = suite.items["books"][rec["index"]]
        context = render_prompt(tokenizer, tasks[0], item.prompt)
        direct = []
        for option in item.choices:
            ctx, cont = lm.encode_pair(tokenizer, context, option)
            direct.append(direct_loglik(model, ctx, cont))
        assert rec["logliks"] == pytest.approx(direct, abs=1e-4)
        correct += max(range(len(direct)), key=lambda i: (direct[i], -i)) == item.answer
    assert suite.aggregate({"books": records})["books"]["acc"] == pytest.approx(correct / len(records))


def test_task_config_errors_name_the_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: x, kind: multiple_choise, path: a.jsonl}\n")
    with pytest.raises(ConfigError, match=r"tasks\.0\.kind: 'multiple_choise' is not allowed"):
        load_tasks(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: x, kind: generate, path: a.jsonl, metric: [rouge_l]}\n")
    with pytest.raises(ConfigError, match="did you mean 'metrics'"):
        load_tasks(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: x, kind: perplexity}\n")
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_tasks(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: x, kind: generate, path: a.jsonl, extract: '('}\n")
    with pytest.raises(ConfigError, match="extract: not a valid regular expression"):
        load_tasks(tmp_path / "bad.yaml")


def test_bad_items_are_data_errors_with_line(tmp_path):
    from ftscale.eval.tasks import load_items

    path = tmp_path / "mc.jsonl"
    path.write_text('{"prompt": "q", "choices": ["a", "b"], "answer": 1}\n\n'
                    '{"prompt": "q", "choices": ["a", "b"], "answer": "c"}\n')
    task = TaskConfig(name="t", kind="multiple_choice", path=str(path))
    with pytest.raises(DataError, match=r"mc\.jsonl:3: field 'answer' must be an option's index"):
        load_items(task)
    path.write_text('{"prompt": "", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(DataError, match="field 'prompt' must be a non-empty string"):
        load_items(task)
    path.write_text('[1, 2]\n')
    with pytest.raises(DataError, match="expected a JSON object"):
        load_items(task)


def test_harness_bridge_scores_like_ftscale(model, tokenizer, tmp_path):
    """lm-evaluation-harness's own multiple-choice task on a local JSONL file, through
    ``ftscale eval``'s bridge, gives the accuracy ftscale computes on the same items."""
    pytest.importorskip("lm_eval")
    from ftscale.eval.harness import run_harness

    tasks = load_tasks(write_tasks(tmp_path))
    plain = TaskConfig(name="books", kind="multiple_choice", path=tasks[0].path)  # lm-eval's: prompt + " " + option
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "books.yaml").write_text(
        "task: books_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks[0].path}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{choices.index(answer)}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    got = run_harness(model, tokenizer, ["books_local"], str(tmp_path / "harness"), batch_size=4)
    suite = TaskSuite([plain], batch_size=4)
    ours = suite.aggregate(suite.run_shard(model, tokenizer, device=torch.device("cpu")))["books"]
    assert got["harness/books_local/acc"] == pytest.approx(ours["acc"])
    assert got["harness/books_local/acc_norm"] == pytest.approx(ours["acc_norm"])
    with pytest.raises(ConfigError, match="no task 'nope'"):
        run_harness(model, tokenizer, ["nope"], str(tmp_path / "harness"), batch_size=4)


def test_cli_eval_with_a_baseline_writes_results(model, tokenizer, tmp_path, capsys):
    """`ftscale eval DIR --tasks F --baseline DIR --out R.json` on a saved tiny model: the table
    and the JSON; the same model as its own baseline changes nothing."""
    from ftscale.cli import main

    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    tasks = write_tasks(tmp_path)
    out = tmp_path / "results.json"
    assert main(["eval", str(tmp_path / "model"), "--tasks", str(tasks), "--baseline", str(tmp_path / "model"),
                 "--batch-size", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"] == result["baseline"]["metrics"]
    assert result["change"].keys() == result["metrics"].keys() and not any(result["change"].values())
    assert len(result["outputs"]["cont"]) == 5 and {"prompt", "output", "references", "scores"} <= \
        result["outputs"]["cont"][0].keys()
    printed = capsys.readouterr().out
    assert "task/books/acc" in printed and "baseline" in printed and "change" in printed
    assert main(["eval", str(tmp_path / "model"), "--tasks", str(tasks), "--best"]) == 2  # not a run directory
