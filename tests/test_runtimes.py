"""The chapters' runtimes on the teaching page: read from executed notebooks' metadata, shown as a table."""

from __future__ import annotations

import json

import nbformat

from apem.book import runtimes


def write_nb(folder, stem, title, duration=None, params="smoke", status="executed", end="2026-01-02T03:04:05"):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {title}\n\ntext")])
    if duration is not None:
        nb.metadata["papermill"] = {"duration": duration, "end_time": end, "parameters": {"params": params}}
    nb.metadata["apem"] = {"params": params, "status": status}
    nbformat.write(nb, folder / f"{stem}.ipynb")


def test_runtimes_are_read_in_chapter_order_from_papermill_metadata(tmp_path):
    write_nb(tmp_path, "02_b", "2. Second", 59.4)
    write_nb(tmp_path, "00_a", "0. First", 12.25)
    write_nb(tmp_path, "10_c", "10. Tenth", None, status="failed")
    (tmp_path / "11_broken.ipynb").write_text("{not json")
    (tmp_path / ".out-03_x.ipynb").write_text(json.dumps({}))  # papermill's temporary output: not a chapter
    rows = runtimes.chapter_runtimes(tmp_path)
    assert [r["chapter"] for r in rows] == [0, 2, 10]
    assert [r["seconds"] for r in rows] == [12.25, 59.4, None]
    assert rows[0]["title"] == "0. First" and rows[0]["params"] == "smoke" and rows[2]["status"] == "failed"


def test_the_table_sums_the_timed_chapters_and_says_where_the_times_come_from(tmp_path):
    write_nb(tmp_path, "00_a", "0. First", 12.25)
    write_nb(tmp_path, "01_b", "1. Second", 184.0, params="default")
    write_nb(tmp_path, "02_c", "2. Third", None)
    md = runtimes.runtime_markdown(runtimes.chapter_runtimes(tmp_path))
    assert "| 0. First | `smoke` | executed | 12 s |" in md
    assert "| 1. Second | `default` | executed | 3.1 min |" in md
    assert "| 2. Third | `smoke` | executed | – |" in md
    assert "**all 2 timed chapters** | | | **3.3 min**" in md  # 196.25 s
    assert "papermill.duration" in md and "`default`, `smoke`" in md
    assert "run `apem book` first" in runtimes.runtime_markdown([])
