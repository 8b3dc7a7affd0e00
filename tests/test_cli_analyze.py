import datetime
import json
import math
import random
import subprocess

import pytest
from click.testing import CliRunner

from diag.cli import main
from tests.conftest import DIAG, child_env, require_tool

MiB = 1024 * 1024
GiB = 1024 * MiB


def _write(path, shape, hours=6, step=5):
    rng = random.Random(3)
    lines = ["t,value"]
    for i in range(int(hours * 3600 / step)):
        t = 1_700_000_000 + i * step  # epoch seconds: times stay on the input's clock
        lines.append(f"{t},{shape(i * step) + rng.gauss(0, 2 * MiB):.0f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_lines_one_per_input_with_alert_episodes(tmp_path):
    leak = _write(tmp_path / "rss.csv", lambda t: GiB + max(t - 3600, 0) * 0.1 * MiB)
    flat = _write(tmp_path / "flat.csv", lambda t: GiB + 0.1 * GiB * math.sin(t / 900))
    result = CliRunner().invoke(
        main, ["analyze", str(leak), str(flat), "--limit", "4GiB", "--json"]
    )
    assert result.exit_code == 1  # a leak was found: a finding to act on
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["file"] == str(leak) and second["file"] == str(flat)
    (alert,) = first["alerts"]
    assert set(alert) == {
        "start", "end", "series", "seconds_to_oom", "seconds_to_oom_low", "seconds_to_oom_high"
    }  # fmt: skip
    assert alert["series"] == "rss"
    assert alert["end"] is None
    assert 1_700_000_000 + 3600 < alert["start"] < 1_700_000_000 + 3 * 3600
    assert alert["seconds_to_oom_low"] <= alert["seconds_to_oom"] <= alert["seconds_to_oom_high"]
    assert second["alerts"] == []
    assert first["final"]["state"] == "leak"


def test_readable_summary_and_exit_0_without_leaks(tmp_path):
    flat = _write(tmp_path / "flat.csv", lambda t: GiB)
    result = CliRunner().invoke(main, ["analyze", str(flat)])
    assert result.exit_code == 0
    assert "no leak" in result.stdout
    assert "final verdict: steady" in result.stdout
    # A spreadsheet's export: a byte-order mark, Windows line ends. The same series.
    exported = tmp_path / "exported.csv"
    exported.write_bytes(b"\xef\xbb\xbf" + flat.read_bytes().replace(b"\n", b"\r\n"))
    again = CliRunner().invoke(main, ["analyze", str(exported)])
    assert again.exit_code == 0, again.stderr
    assert again.stdout.splitlines()[1:] == result.stdout.splitlines()[1:]


def test_exports_as_dashboards_write_them_are_read_as_the_same_series(tmp_path):
    # The same leak three ways: epoch seconds; epoch milliseconds (read as seconds, it spread
    # over 347 days and said "no leak"); Grafana's CSV export (a quoted header whose labels
    # hold commas, ISO date-times, empty and null cells where a scrape was missed).
    leak = _write(tmp_path / "rss.csv", lambda t: GiB + max(t - 3600, 0) * 0.1 * MiB)
    rows = [line.split(",") for line in leak.read_text().splitlines()[1:]]
    millis = tmp_path / "millis.csv"
    millis.write_text("time,rss\n" + "".join(f"{int(t) * 1000},{v}\n" for t, v in rows))
    grafana = tmp_path / "grafana.csv"
    lines = ['"Time","process_resident_memory_bytes{instance=""tts:9109"",job=""tts""}"']
    for i, (t, v) in enumerate(rows):
        moment = datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc)
        lines.append(f"{moment:%Y-%m-%d %H:%M:%S},{v}")
        if i % 500 == 0:
            lines.append(f"{moment:%Y-%m-%d %H:%M:%S},{'' if i % 1000 else 'null'}")
    grafana.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    documents = []
    for path in (leak, millis, grafana):
        result = runner.invoke(main, ["analyze", str(path), "--limit", "4GiB", "--json"])
        assert result.exit_code == 1, result.output  # the leak, each time
        documents.append(json.loads(result.stdout))
    seconds, from_millis, from_grafana = documents
    assert seconds["notes"] == []
    assert from_millis["notes"] == ["times read as epoch milliseconds"]
    assert from_grafana["notes"] == [f"{len(rows[::500]):,} rows without a value skipped (gaps)"]
    assert from_grafana["series"] == 'process_resident_memory_bytes{instance="tts:9109",job="tts"}'
    for document in (from_millis, from_grafana):
        assert document["samples"] == seconds["samples"]
        assert document["first_sample"] == seconds["first_sample"]
        assert document["alerts"] == [dict(a, series=document["series"]) for a in seconds["alerts"]]
    shown = runner.invoke(main, ["analyze", str(millis), "--limit", "4GiB"])
    assert "  (times read as epoch milliseconds)" in shown.stdout.splitlines()


def test_bad_inputs_are_one_line_each_and_exit_2(tmp_path):
    good = _write(tmp_path / "flat.csv", lambda t: GiB, hours=1)
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("1,2\n")
    bad_row = tmp_path / "bad_row.csv"
    bad_row.write_text("t,value\n1,2\n2,lots\n")
    # Python reads these as floats; none is a reading (the detector would skip it, and an
    # infinite time would leave every later row out of order).
    no_reading = tmp_path / "no_reading.csv"
    no_reading.write_text("t,value,requests\n0,2,0\n30,2,nan\n")
    infinite = tmp_path / "infinite.csv"
    infinite.write_text("t,value\n0,2\ninf,2\n60,2\n")
    backwards = tmp_path / "backwards.csv"  # two exports pasted together
    backwards.write_text("t,value\n0,2\n30,2\n30,2\n15,2\n")
    runner = CliRunner()
    inputs = [no_header, bad_row, no_reading, infinite, backwards, tmp_path / "missing.csv", good]
    result = runner.invoke(main, ["analyze", *map(str, inputs)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"diag: {no_header}: expected a header 't,value' (seconds, bytes) or 't,value,requests', "
        "found '1,2'",
        f"diag: {bad_row}:3: not 2 numbers: '2,lots'",
        f"diag: {no_reading}:3: not a reading (nan, an infinity, or beyond 1e100): '30,2,nan'",
        f"diag: {infinite}:3: not a reading (nan, an infinity, or beyond 1e100): 'inf,2'",
        f"diag: {backwards}:5: time goes back from 30 to 15; sort the rows by time",
        f"diag: {tmp_path / 'missing.csv'}: cannot read: No such file or directory",
    ]
    assert "flat.csv" in result.stdout  # the good input was still analysed
    result = runner.invoke(main, ["analyze", str(good), "--limit", "lots"])
    assert result.exit_code == 2
    assert "not a size: 'lots'" in result.stderr
    result = runner.invoke(main, ["analyze", str(good), "--limit", "0.5"])
    assert result.exit_code == 2
    assert "a limit must be a byte or more: '0.5'" in result.stderr
    for number in ("nan", "inf"):  # float() reads both; nan passes every bound
        result = runner.invoke(main, ["analyze", str(good), "--sensitivity", number])
        assert result.exit_code == 2
        assert f"'{number}' is not a finite number" in result.stderr


def test_a_prometheus_range_query_answer_is_read_series_by_series(tmp_path):
    # What `curl .../api/v1/query_range?query=process_resident_memory_bytes` saves: one result
    # per series, values as [time, "string"], a NaN where the series went stale.
    leak = _write(tmp_path / "rss.csv", lambda t: GiB + max(t - 3600, 0) * 0.1 * MiB)
    flat = _write(tmp_path / "flat.csv", lambda t: GiB)
    series = []
    for path, instance in ((leak, "tts-0:9109"), (flat, "tts-1:9109")):
        values = []
        for i, line in enumerate(path.read_text().splitlines()[1:]):
            t, v = line.split(",")
            values.append([int(t), "NaN" if i % 700 == 0 else v])
        metric = {"__name__": "process_resident_memory_bytes", "instance": instance}
        series.append({"metric": metric, "values": values})
    answer = tmp_path / "query_range.json"
    answer.write_text(json.dumps({"status": "success", "data": {"resultType": "matrix",
                                                                 "result": series}}))  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(main, ["analyze", str(answer), "--limit", "4GiB", "--json"])
    assert result.exit_code == 1, result.output  # the first holds a leak
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["series"] == 'process_resident_memory_bytes{instance="tts-0:9109"}'
    assert second["series"] == 'process_resident_memory_bytes{instance="tts-1:9109"}'
    gaps = len(range(0, len(series[0]["values"]), 700))
    assert first["notes"] == [f"{gaps} points without a value skipped (gaps)"]
    assert first["alerts"] and first["final"]["state"] == "leak"
    assert second["alerts"] == []
    # A single-instant query has no history to judge: said, with what is wanted.
    instant = tmp_path / "query.json"
    instant.write_text('{"status": "success", "data": {"resultType": "vector", "result": []}}')
    single = tmp_path / "single.json"  # one point: said as one
    single.write_text(json.dumps({"resultType": "matrix", "result": [series[0] | {
        "values": [[1_700_000_000, "1000"]]}]}))  # fmt: skip
    result = runner.invoke(main, ["analyze", str(single)])
    # Named in the text too: a Prometheus answer holds several series.
    assert result.stdout.splitlines()[0] == (
        f'{single} [process_resident_memory_bytes{{instance="tts-0:9109"}}]: 1 sample over 0 s'
    )
    result = runner.invoke(main, ["analyze", str(instant)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"diag: {instant}: expected a Prometheus range query's answer (/api/v1/query_range, "
        "resultType matrix) or a CSV with a header 't,value'\n"
    )


def test_a_bad_line_is_shown_as_written_and_a_long_one_cut(tmp_path):
    thousands = tmp_path / "thousands.csv"  # a spreadsheet's thousands separator, quoted
    thousands.write_text('t,value\n0,5\n"1,000",5\n')
    document = tmp_path / "grafana.html"  # a page saved instead of the export: one long line
    document.write_text("<html><head>" + "<script>x</script>" * 2000 + "</head></html>\n")
    result = CliRunner().invoke(main, ["analyze", str(thousands), str(document)])
    assert result.exit_code == 2
    shown, header = result.stderr.splitlines()
    assert shown == f"diag: {thousands}:3: not 2 numbers: '\"1,000\",5'"
    assert header.startswith(f"diag: {document}: expected a header 't,value'")
    assert header.endswith("…'") and len(header) < 300


def test_a_history_directory_is_analysed_series_by_series(tmp_path):
    from tests.test_report import _leaking_run

    _leaking_run(tmp_path / "20231114T221320Z-4242")
    result = CliRunner().invoke(main, ["analyze", str(tmp_path), "--json"])
    assert result.exit_code == 1, result.output
    (document,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert document["series"] == "20231114T221320Z-4242/process_resident_memory_bytes"
    assert len(document["alerts"]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["analyze", str(empty)])
    assert result.exit_code == 2
    assert "a directory without diag history runs" in result.stderr


def test_a_damaged_history_says_what_was_skipped_and_a_useless_one_is_one_line(tmp_path):
    from tests.test_report import _leaking_run

    run = tmp_path / "runs" / "20231114T221320Z-4242"
    _leaking_run(run)
    (segment,) = run.glob("seg-*.dh")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # damage in the middle
    segment.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "runs"), "--json"])
    (document,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert any("damaged bytes skipped" in note for note in document["notes"])
    # Nothing but garbage in a run: one line and exit 2, not silence and exit 0.
    garbage = tmp_path / "garbage" / "20231114T221320Z-4243"
    garbage.mkdir(parents=True)
    (garbage / "seg-000001.dh").write_bytes(random.Random(1).randbytes(4096))
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "garbage")])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"diag: {tmp_path / 'garbage'}: no memory series of two samples or more in its runs: "
    )


@pytest.mark.e2e
def test_an_unreadable_input_is_one_line_and_the_others_are_read(tmp_path):
    """Run without the capabilities that let root read any file (as another user would)."""
    setpriv = require_tool("setpriv")
    good = _write(tmp_path / "good.csv", lambda t: 500 * MiB, hours=1)
    unreadable = _write(tmp_path / "unreadable.csv", lambda t: 500 * MiB, hours=1)
    unreadable.chmod(0)
    command = [setpriv, "--bounding-set=-all", "--inh-caps=-all", *DIAG, "analyze"]
    result = subprocess.run([*command, str(unreadable), str(good)], capture_output=True,
                            text=True, timeout=120, env=child_env())  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == f"diag: {unreadable}: cannot read: Permission denied\n"
    assert result.stdout.startswith(f"{good}: 720 samples")


def test_a_requests_column_tells_load_from_a_leak_and_sensitivity_is_a_knob(tmp_path):
    from tests.test_detect import GiB, MiB, _bursty_rate, _with_requests

    times, values, counts = _with_requests(
        _bursty_rate, 18, lambda t, served: 1 * GiB + 12 * MiB * _bursty_rate(t)
    )
    with_counts = tmp_path / "bursts.csv"
    with_counts.write_text(
        "t,value,requests\n"
        + "".join(f"{t},{v},{n}\n" for t, v, n in zip(times, values, counts, strict=True))
    )
    bare = tmp_path / "bare.csv"
    bare.write_text("t,value\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values, strict=True)))
    runner = CliRunner()
    limit = str(int(1.6 * GiB))
    assert runner.invoke(main, ["analyze", str(with_counts), "--limit", limit]).exit_code == 0
    assert runner.invoke(main, ["analyze", str(bare), "--limit", limit]).exit_code == 1
    # The knob reaches the detector: more eager, the same leak is called earlier.
    leak = _write(tmp_path / "leak.csv", lambda t: 1 * GiB + 0.05 * MiB * max(t - 3600, 0))
    starts = {}
    for sensitivity in ("1", "4"):
        result = runner.invoke(
            main, ["analyze", str(leak), "--limit", "4GiB", "--sensitivity", sensitivity, "--json"]
        )
        assert result.exit_code == 1, result.output
        starts[sensitivity] = json.loads(result.stdout)["alerts"][0]["start"]
    assert starts["4"] < starts["1"]
    refused = runner.invoke(main, ["analyze", str(bare), "--sensitivity", "0"])
    assert refused.exit_code == 2


def test_gzip_compressed_inputs_are_read_and_a_cut_off_one_keeps_its_whole_rows(tmp_path):
    """A ``.csv.gz`` export (written in members, as the recorded library's are) and a
    compressed range query's answer read as the plain files do. A compressed file cut off
    mid-way (a copy interrupted, a disk that filled) keeps the rows before the cut, and says
    so; one cut inside its header, or damaged, is one line and exit 2."""
    import gzip

    leak = _write(tmp_path / "rss.csv", lambda t: GiB + max(t - 3600, 0) * 0.1 * MiB)
    text = leak.read_text()
    head, body = text.split("\n", 1)
    packed = tmp_path / "rss.csv.gz"
    packed.write_bytes(gzip.compress((head + "\n").encode()) + gzip.compress(body.encode()))
    runner = CliRunner()

    def analysed(path):
        result = runner.invoke(main, ["analyze", str(path), "--limit", "4GiB", "--json"])
        return result.exit_code, json.loads(result.stdout)

    code, plain = analysed(leak)
    assert code == 1
    code, unpacked = analysed(packed)
    assert code == 1
    assert {**unpacked, "file": None} == {**plain, "file": None}

    answer = {"resultType": "matrix", "result": [{"metric": {"__name__": "rss"}, "values": [
        [float(t), v] for t, v in (line.split(",") for line in body.splitlines())]}]}  # fmt: skip
    query = tmp_path / "query_range.json.gz"
    query.write_bytes(gzip.compress(json.dumps(answer).encode()))
    code, from_query = analysed(query)
    assert code == 1 and from_query["samples"] == plain["samples"]
    assert from_query["alerts"] == plain["alerts"]

    whole = gzip.compress(text.encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    code, kept = analysed(cut)
    assert code in (0, 1)
    cut_note = "the gzip file ends early (cut off): the rows before the cut were read"
    assert kept["notes"] == [cut_note]
    rows = body.splitlines()
    assert 0.3 * len(rows) < kept["samples"] < len(rows)
    assert kept["last_sample"] == float(rows[kept["samples"] - 1].split(",")[0])

    header_cut = tmp_path / "header_cut.csv.gz"
    header_cut.write_bytes(whole[:12])
    damaged = tmp_path / "damaged.csv.gz"
    damaged.write_bytes(whole[:200] + bytes(b ^ 0x5A for b in whole[200:400]) + whole[400:])
    result = runner.invoke(main, ["analyze", str(header_cut), str(damaged)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"diag: {header_cut}: the gzip file is cut off before its first row"
    assert len(lines) == 2 and lines[1].startswith(f"diag: {damaged}: "), lines


def test_an_input_without_line_ends_is_refused_in_bounded_memory(tmp_path, monkeypatch):
    """A file with no line end (a binary, /dev/zero, a gzip bomb of zeros) was read whole as
    one line (4 GB of memory for 2 GiB of zeros) before any error."""
    import gzip
    import resource

    from diag import series_io

    bomb = tmp_path / "zeros.csv.gz"
    with gzip.open(bomb, "wb") as f:
        for _ in range(64):  # 64 MiB of zeros, in 64 KiB of gzip
            f.write(bytes(1 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in (str(bomb), "/dev/zero"):
        result = CliRunner().invoke(main, ["analyze", path])
        assert result.exit_code == 2
        assert result.stderr == (
            f"diag: {path}: line 1 runs past 1,048,576 characters without an end: not a CSV\n"
        )
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 32 * 1024  # a few MiB, not the file
    # A Prometheus answer is bounded too (here at 1 MiB, to keep the test small).
    monkeypatch.setattr(series_io, "MAX_JSON", 1 << 20)
    answer = tmp_path / "big.json"
    answer.write_text('{"data": {"resultType": "matrix", "result": []}}' + " " * (1 << 20))
    result = CliRunner().invoke(main, ["analyze", str(answer)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"diag: {answer}: over 1 MiB of JSON, too much to analyse at once; ask Prometheus for "
        "fewer series or a coarser step\n"
    )


def test_a_history_run_is_one_process_and_a_csv_may_span_restarts(tmp_path):
    """Half the memory freed at once, ten minutes before the end, with no request counts: in
    a history run (one process's life, the agent's or a watch's) a big free; in a CSV, which
    may span restarts, a restart, warming up again."""
    from diag.history import HistoryWriter
    from diag.model import Sample

    def rss(t):
        return GiB if t < 3 * 3600 else GiB / 2

    csv = _write(tmp_path / "rss.csv", rss, hours=3 + 1 / 6)
    run = tmp_path / "history" / "20231114T221320Z-4242"
    writer = HistoryWriter(str(run), flush_seconds=0.0)
    writer.write_event("start", 1_700_000_000.0, pid=4242, command=["python", "svc.py"])
    rng = random.Random(3)
    for i in range(int((3 + 1 / 6) * 3600 / 5)):
        value = rss(i * 5) + rng.gauss(0, 2 * MiB)
        writer.write_samples(
            1_700_000_000.0 + i * 5, [Sample("process_resident_memory_bytes", value)]
        )
    writer.close()
    states = {}
    for path in (csv, tmp_path / "history"):
        result = CliRunner().invoke(main, ["analyze", str(path), "--json"])
        assert result.exit_code == 0, result.output
        (document,) = [json.loads(line) for line in result.stdout.splitlines()]
        states[path.name] = document["final"]["state"]
    assert states == {"rss.csv": "warming_up", "history": "steady"}
    from reports import postmortem

    (series,) = postmortem.build(str(run), read_kernel_log=lambda: []).series  # replayed there
    assert series.verdict == "steady"
