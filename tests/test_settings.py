import pytest

from diag.settings import Settings


def test_defaults_are_safe():
    s = Settings()
    assert s.port is None  # /metrics is served only when a port is given
    assert s.address == "127.0.0.1"
    assert s.trace is False  # tracemalloc slows the host 9-18x: never on by default
    assert 1 <= s.interval <= 10


def test_environment_fills_in_and_arguments_win():
    env = {"DIAG_PORT": "9200", "DIAG_INTERVAL": "2.5", "DIAG_TRACE": "yes"}
    s = Settings.from_env(env, port=9300)
    assert s.port == 9300
    assert s.interval == 2.5
    assert s.trace is True
    assert s.problems == ()


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("DIAG_INTERVAL", "-1"),
        ("DIAG_INTERVAL", "soon"),
        # float() reads these: an agent that never ticks, a detector that calls any rise.
        ("DIAG_INTERVAL", "inf"),
        ("DIAG_INTERVAL", "nan"),
        ("DIAG_SENSITIVITY", "1e400"),
        ("DIAG_ESCALATION_INTERVAL", "inf"),
        ("DIAG_PORT", "70000"),
        ("DIAG_TRACE", "maybe"),
        ("DIAG_NAMESPACE", "9bad-name"),
    ],
)
def test_bad_environment_values_are_reported_not_raised(var, raw):
    s = Settings.from_env({var: raw})
    assert s == Settings()
    assert len(s.problems) == 1
    assert var in s.problems[0]


def test_bad_keyword_values_are_reported_not_taken():
    """probes.start(interval=0) asked for an agent that ticks without pause: explicit
    arguments are checked as the environment's are, reported, and the environment's value
    (else the default) is used."""
    s = Settings.from_env({"DIAG_INTERVAL": "3"}, interval=0, sensitivity=float("nan"))
    assert (s.interval, s.sensitivity) == (3.0, 1.0)
    assert s.problems == (
        "interval=0 ignored: must be from 0.01 to 86400 seconds",
        "sensitivity=nan ignored: must be a positive number",
    )
    good = Settings.from_env({}, interval=2, port=9109, trace=True, history="/var/lib/diag")
    assert (good.interval, good.port, good.trace, good.history) == (
        2.0,
        9109,
        True,
        "/var/lib/diag",
    )
    assert good.problems == ()
    # An argument not given (None, as diag run passes its unset options) leaves the
    # environment's value.
    unset = Settings.from_env({"DIAG_PORT": "9109", "DIAG_INTERVAL": "2"}, port=None, interval=None)
    assert (unset.port, unset.interval, unset.problems) == (9109, 2.0, ())


@pytest.mark.parametrize(
    ("env", "why"),
    [
        # A timer past a C long raises OverflowError in the sampler's thread; a tick every
        # nanosecond takes a core from the host.
        ({"DIAG_INTERVAL": "1e300"}, "from 0.01 to 86400 seconds"),
        ({"DIAG_INTERVAL": "1e-9"}, "from 0.01 to 86400 seconds"),
        ({"DIAG_DETAIL_INTERVAL": "99999999999999999999"}, "from 0.01 to 86400 seconds"),
        # tracemalloc on for months, slowing the host all along.
        ({"DIAG_ESCALATION_WINDOW": "1e7"}, "from 0 to 600 seconds (0: never)"),
        ({"DIAG_ESCALATION_INTERVAL": "1e300"}, "from 0 to 3.1536e+07 seconds"),
        # Memory preallocated for the series: 16 bytes a sample, for every series.
        ({"DIAG_SERIES_CAPACITY": "100000000"}, "from 1 to 10000000"),
        ({"DIAG_MAX_SERIES": "1000000"}, "from 1 to 32768"),
        ({"DIAG_SERIES_CAPACITY": "1000000"}, "the series would take 7.6 GiB (at most 1 GiB)"),
        # Label cardinality: one labelled series per site.
        ({"DIAG_TOP_SITES": "100000"}, "from 1 to 100 (one labelled series each)"),
        ({"DIAG_TRACE_FRAMES": "100000"}, "from 1 to 100"),
    ],
)
def test_values_that_would_cost_the_host_are_refused(env, why):
    s = Settings.from_env(env)
    assert s == Settings()  # the defaults, as for any bad value
    assert len(s.problems) == 1 and why in s.problems[0]


def test_settings_within_their_bounds_are_taken():
    s = Settings.from_env(
        {"DIAG_INTERVAL": "0.01", "DIAG_ESCALATION_WINDOW": "600", "DIAG_MAX_SERIES": "32768"}
    )
    assert (s.interval, s.escalation_window, s.max_series, s.problems) == (0.01, 600, 32768, ())


def test_unknown_keyword_is_a_programming_error():
    with pytest.raises(TypeError, match="unknown settings: colour"):
        Settings.from_env({}, colour="blue")


def test_to_env_round_trips():
    s = Settings(port=9109, interval=1.5, trace=True, history="/tmp/h")
    env = s.to_env()
    assert env == {
        "DIAG_INTERVAL": "1.5",
        "DIAG_PORT": "9109",
        "DIAG_TRACE": "1",
        "DIAG_HISTORY": "/tmp/h",
    }
    assert Settings.from_env(env) == s
