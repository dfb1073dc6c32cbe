"""`ftscale report` of a dataset made by the real `ftscale prep` (the `tiny_dataset` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftscale.cli import main
from ftscale.report import render_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGE_KEYS = ("read", "quarantined", "exact_duplicate", "near_duplicate", "contaminated", "kept")


def test_dataset_report_shows_the_manifest_numbers(tiny_dataset: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    index = render_dataset(tiny_dataset, tmp_path / "report")
    page = index.read_text(encoding="utf-8")
    assert "<script" not in page
    for name, entry in manifest["sources"].items():
        c, tokens = entry["counts"], entry["tokens"]
        stage_cells = "".join(f"<td class=num>{c[k]:,}</td>" for k in STAGE_KEYS)
        assert f"<tr><td>{name}</td><td>{entry['kind']}</td>{stage_cells}<td class=num>yes</td>" \
               f"<td class=num>{c['train_docs']:,}</td><td class=num>{c['val_docs']:,}</td></tr>" in page
        assert f"<td class=num>{tokens['train']:,}</td><td class=num>{tokens['val']:,}</td>" in page
        assert f"{100 * entry['supervised_share']:.1f} %" in page
        data = (index.parent / f"lengths_{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert (index.parent / "stages.png").read_bytes().startswith(PNG_MAGIC)
    totals = {k: sum(e["counts"][k] for e in manifest["sources"].values()) for k in STAGE_KEYS}
    assert "<tr><td>total</td><td></td>" + "".join(f"<td class=num>{totals[k]:,}</td>" for k in STAGE_KEYS) in page
    assert "near dedup" in page

    assert main(["report", str(tiny_dataset), "--out", str(tmp_path / "cli")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "index.html")
