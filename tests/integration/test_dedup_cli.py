"""`ftscale dedup` end to end: real files in, Parquet + report out."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ftscale
from ftscale.cli import main

STAGE_KEYS = ("quarantined", "exact_duplicate", "near_duplicate", "contaminated", "kept")


def make_docs(seed: int, n: int = 200) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [f"w{rng.randrange(4000)}" for _ in range(rng.randrange(30, 90))]
        rows.append({"text": " ".join(words), "score": rng.random(), "id": i})
        if i % 5 == 0:
            copy = list(words)
            copy[len(copy) // 2] = "edited"
            rows.append({"text": " ".join(copy), "score": rng.random(), "id": 10_000 + i})
        if i % 7 == 0:
            rows.append({"text": "  " + " ".join(words).upper(), "score": rng.random(), "id": 20_000 + i})
    return rows


def planted_jaccard(rows: list[dict], i: int) -> float:
    """Exact 5-word-shingle Jaccard between doc id i and its edited copy (id 10000 + i)."""
    by_id = {r["id"]: r["text"] for r in rows}

    def shingles(t: str) -> set:
        w = t.lower().split()
        return {tuple(w[k:k + 5]) for k in range(len(w) - 4)}

    a, b = shingles(by_id[i]), shingles(by_id[10_000 + i])
    return len(a & b) / len(a | b)


def write_jsonl(path: Path, rows: list, extra_lines: list[bytes] = ()) -> Path:
    with open(path, "wb") as f:
        for r in rows:
            f.write(json.dumps(r).encode() + b"\n")
        for line in extra_lines:
            f.write(line + b"\n")
    return path


BAD_LINES = [b"{not json", b"\xff\xfe bad utf8", b'{"other": "no text"}', b'{"text": ""}',
             b'{"text": "   "}', b'{"text": 17}', b'{"text": null}', b'{"text": ["a"]}', b"[1, 2]"]


def run(*args: str) -> int:
    return main(list(args))


def test_counts_are_conserved_and_outputs_consistent(tmp_path, capsys):
    rows = make_docs(0)
    src = write_jsonl(tmp_path / "train.jsonl", rows, BAD_LINES)
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"text": rows[3]["text"]}])
    out = tmp_path / "out"
    assert run("dedup", str(src), "--out", str(out), "--decontaminate", str(evals), "--audit", "10", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    counts = report["sources"]["train"]
    assert counts["read"] == len(rows) + len(BAD_LINES)
    assert counts["read"] == sum(counts[k] for k in STAGE_KEYS)
    assert counts["quarantined"] == len(BAD_LINES)
    assert counts["exact_duplicate"] == sum(1 for i in range(200) if i % 7 == 0)
    # Planted copies differ in one word; those clearly above the threshold must all be found,
    # and nothing clearly below it may be merged.
    sims = [planted_jaccard(rows, i) for i in range(0, 200, 5)]
    assert sum(s >= 0.85 for s in sims) <= counts["near_duplicate"] <= sum(s >= 0.7 for s in sims)
    assert counts["contaminated"] == 1
    data = pq.read_table(out / "data" / "train")
    decisions = pq.read_table(out / "removed" / "decisions.parquet").to_pylist()
    quarantine = pq.read_table(out / "quarantine" / "train.parquet")
    assert data.num_rows == counts["kept"] and quarantine.num_rows == len(BAD_LINES)
    assert {"text", "score", "id", "uid", "source", "file", "row"} <= set(data.column_names)
    kept = set(data.column("uid").to_pylist())
    assert len(decisions) == counts["exact_duplicate"] + counts["near_duplicate"] + counts["contaminated"]
    contaminated = {d["uid"] for d in decisions if d["reason"] == "contaminated"}
    for d in decisions:
        assert d["uid"] not in kept
        if d["reason"] in ("exact_duplicate", "near_duplicate"):
            assert d["kept_uid"] in kept | contaminated
            assert d["matched_uid"] is not None and d["similarity"] > 0.5
    leak = [d for d in decisions if d["reason"] == "contaminated"]
    assert leak[0]["eval_set"] == "eval" and len(leak[0]["eval_items"]) == 1
    assert report["decontamination"]["eval"]["eval_items_leaked"] == 1
    assert set(quarantine.column("reason").to_pylist()) >= {"malformed_json", "invalid_utf8", "missing_field",
                                                             "empty_text", "wrong_type", "not_an_object"}
    assert "precision" in report["audit"]
    # Decisions are traceable to the signature scheme that made them.
    assert report["near_dedup"]["minhash_signature_version"] == ftscale.MINHASH_SIGNATURE_VERSION >= 2


def test_output_identical_for_any_threads_workers_and_budget(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(1), BAD_LINES)
    outs = []
    for flags in (["--threads", "1", "--workers", "1"], ["--threads", "2", "--workers", "4", "--memory-budget", "256MiB"],
                  ["--part-rows", "100"]):
        out = tmp_path / f"out{len(outs)}"
        assert run("dedup", str(src), "--out", str(out), *flags) == 0
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["data/in/part-00000.parquet", "quarantine/in.parquet", "removed/decisions.parquet",
                                       "report.json"]
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    # --part-rows cuts the same records into more parts (the work directory is gone after success).
    one, parts = pq.read_table(outs[0] / "data" / "in"), pq.read_table(outs[2] / "data" / "in")
    assert one.equals(parts) and len(list((outs[2] / "data" / "in").iterdir())) == -(-one.num_rows // 100)
    assert not (outs[0] / ".ftscale-work").exists()


def test_repartitioned_input_keeps_the_same_records(tmp_path):
    rows = make_docs(2)
    one = write_jsonl(tmp_path / "one.jsonl", rows)
    parts = tmp_path / "parts"
    parts.mkdir()
    shuffled = list(rows)
    random.Random(4).shuffle(shuffled)
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(shuffled[k::3]), parts / f"part-{k}.parquet")
    kept = []
    for name, src in (("a", one), ("b", parts)):
        out = tmp_path / name
        assert run("dedup", str(src), "--out", str(out), "--keep", "max:score") == 0
        kept.append(sorted(pq.read_table(out / "data").column("id").to_pylist()))
    assert kept[0] == kept[1] and len(kept[0]) < len(rows)


def test_chat_records_decontaminated_by_role(tmp_path, capsys):
    secret = " ".join(f"s{i}" for i in range(20))
    chats = [
        {"messages": [{"role": "user", "content": secret}, {"role": "assistant", "content": "fine " * 20}]},
        {"messages": [{"role": "user", "content": "hello " * 5}, {"role": "assistant", "content": secret}]},
        {"instruction": "say hi to everyone in the room now please", "output": "hi " * 30},
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", chats)
    evals = write_jsonl(tmp_path / "ev.jsonl", [{"question": secret}])
    out = tmp_path / "out"
    assert run("dedup", str(src), "--out", str(out), "--messages-field", "messages", "--eval-text-field",
               "question", "--decontaminate", str(evals), "--decontam-roles", "user", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sources"]["chat"]["contaminated"] == 1
    data = pq.read_table(out / "data" / "chat").to_pylist()
    assert len(data) == 2 and data[0]["messages"][1]["content"] == secret


@pytest.mark.parametrize("case", ["missing", "format", "unwritable", "bad_option"])
def test_user_errors_are_one_clear_line(tmp_path, capsys, case):
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(3, 5))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "data.csv").write_text("a,b\n")
    args = {
        "missing": [str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")],
        "format": [str(tmp_path / "data.csv"), "--out", str(tmp_path / "o")],
        "unwritable": [str(src), "--out", str(blocker / "sub")],
        "bad_option": [str(src), "--out", str(tmp_path / "o"), "--threshold", "2"],
    }[case]
    assert run("dedup", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ftscale dedup: error: ")
    expected = {"missing": "not found", "format": ".csv", "unwritable": "--out", "bad_option": "--threshold"}[case]
    assert expected in err


def test_console_script_starts_without_heavy_imports():
    code = ("import sys, ftscale.cli; ftscale.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'pyarrow', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"


def test_a_work_dir_that_is_not_ours_is_never_emptied(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(5, 20))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert run("dedup", str(src), "--out", str(tmp_path / "o"), "--work-dir", str(precious)) == 2
    assert "not an ftscale work directory" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"
    # An empty one is used, and removed after success with everything the job put in it.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("dedup", str(src), "--out", str(tmp_path / "o"), "--work-dir", str(empty)) == 0
    assert not empty.exists()
