"""``diag dump --graph``: the chain from a root to each holder, as DOT or drawn by graphviz."""

import pytest

from diag.errors import DiagError
from reports.dump import render_text
from reports.graph import graph_dot, write_graph

DOCUMENT = {
    "pid": 42,
    "taken_at": 0.0,
    "pause_seconds": 0.12,
    "complete": True,
    "cause": {"kind": "leak", "summary": "live objects are piling up in svc._AUDIO_CACHE",
              "evidence": ["RSS 1.0 GiB/h"]},
    "window_seconds": 30.0,
    "requests": 600,
    "allocation_sites": [{"site": "srv/tts_service.py:42", "bytes": 2048, "count": 12}],
    "notes": [],
    "owners": [
        {
            "path": "svc._AUDIO_CACHE",
            "kind": "dict",
            "retained_bytes": 4 * 2**30,
            "objects": 4210,
            "growth_bytes_per_second": 2 * 2**20,
            "growth_bytes_per_request": 1.9 * 2**20,
            "contents": [{"type": "torch.Tensor float32", "device": "cpu", "count": 4210,
                          "bytes": 4 * 2**30}],
            "allocation_stacks": [{"bytes": 2**30, "count": 1000, "frames": [
                {"file": "/srv/tts_service.py", "line": 42, "function": "synthesize"},
                {"file": "/srv/app.py", "line": 88, "function": "talk"}]}],
            "chain": [{"step": "svc", "type": "dict"}, {"step": "._AUDIO_CACHE", "type": "dict"}],
        }
    ],
}  # fmt: skip


def test_the_tree_reads_like_the_issue_asks():
    text = render_text(DOCUMENT)
    assert "svc._AUDIO_CACHE  dict, 4,210 entries, retains 4.0 GiB, +1.9 MiB per request" in text
    assert "4,210 × torch.Tensor float32 cpu" in text
    assert "allocated at tts_service.py:42 synthesize()  ← app.py:88 talk()" in text
    assert "cause: leak: live objects are piling up in svc._AUDIO_CACHE" in text


def test_dot_names_each_step_and_marks_the_holder():
    dot = graph_dot(DOCUMENT)
    assert dot.startswith("digraph holders {")
    assert '"dict\\nsvc"' in dot and "._AUDIO_CACHE" in dot and "4.0 GiB retained" in dot
    assert "n0 -> n1;" in dot


@pytest.mark.e2e
def test_graph_files_by_extension(tmp_path, monkeypatch):
    from tests.conftest import require_tool

    require_tool("dot")
    write_graph(DOCUMENT, str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text().startswith("digraph")
    write_graph(DOCUMENT, str(tmp_path / "g.svg"))
    assert "<svg" in (tmp_path / "g.svg").read_text()
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(DiagError, match="graphviz's `dot` is not installed"):
        write_graph(DOCUMENT, str(tmp_path / "h.png"))


def test_a_graph_that_cannot_be_written_is_one_line_naming_why(tmp_path):
    """A missing directory, a directory in the file's place."""
    with pytest.raises(DiagError, match=r"g\.dot: cannot write it: No such file or directory$"):
        write_graph(DOCUMENT, str(tmp_path / "missing" / "g.dot"))
    (tmp_path / "taken.dot").mkdir()
    with pytest.raises(DiagError, match=r"taken\.dot: cannot write it: Is a directory$"):
        write_graph(DOCUMENT, str(tmp_path / "taken.dot"))


@pytest.mark.e2e
def test_graphviz_writing_to_a_full_disk_is_no_success(tmp_path):
    """dot exits 0 when its own write fails, leaving an empty file: not "graph written"."""
    import os

    from tests.conftest import require_tool, small_tmpfs

    require_tool("dot")
    with small_tmpfs(tmp_path / "small", "16k") as mount:
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it to the last byte
            while os.write(filler, b"x" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        with pytest.raises(DiagError, match=r"g\.svg: dot wrote nothing there \(a full disk\?\)$"):
            write_graph(DOCUMENT, str(mount / "g.svg"))
        with pytest.raises(DiagError, match="cannot write it: No space left on device"):
            write_graph(DOCUMENT, str(mount / "g.dot"))
