"""Clean tests whose first runs fill caches: none of them leaks."""

import collections
import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import importlib
import inspect
import json
import logging
import logging.config
import re
import string
import struct
import typing
import uuid
import warnings

import corpus_state
import pytest

pytestmark = pytest.mark.no_leaks


def test_module_cache_filled_once():
    assert corpus_state.config("db")["key"] == "db"


def test_module_cache_two_keys():
    corpus_state.config("a")
    corpus_state.config("b")


def test_lru_cache_with_maxsize():
    assert corpus_state.squares(50)[7] == 49


def test_lru_cache_several_args_within_maxsize():
    for n in range(10):
        corpus_state.squares(n)


def test_functools_cache():
    assert corpus_state.parse_version("1.2.3") == (1, 2, 3)


def test_regex_compile():
    assert re.compile(r"(?P<user>\w+)@(?P<host>[\w.]+)").match("a@b.c")


def test_regex_module_functions_cache():
    assert re.findall(r"\d+", "a1b22c333") == ["1", "22", "333"]
    assert re.sub(r"\s+", " ", "a   b") == "a b"


def test_precompiled_regex():
    assert corpus_state.words("hello big world") == ["hello", "big", "world"]


def test_logging_get_logger():
    logging.getLogger("corpus.module").debug("not shown %s", 1)


def test_logging_basic_config():
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("corpus").info("ignored")


def test_logging_handler_added_once():
    corpus_state.logger().warning("handled by a NullHandler")


def test_logging_dict_config():
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"null": {"class": "logging.NullHandler"}},
            "loggers": {"corpus.configured": {"handlers": ["null"], "level": "INFO"}},
        }
    )
    logging.getLogger("corpus.configured").info("configured")


def test_struct_cache():
    assert struct.unpack("<IHd", struct.pack("<IHd", 1, 2, 3.0)) == (1, 2, 3.0)


def test_strptime_first_call():
    assert datetime.datetime.strptime("2024-05-01 12:00", "%Y-%m-%d %H:%M").hour == 12


def test_decimal_context():
    with decimal.localcontext() as ctx:
        ctx.prec = 10
        assert decimal.Decimal(1) / decimal.Decimal(7) > 0


def test_json_round_trip():
    data = {"a": [1, 2, 3], "b": {"c": "d"}}
    assert json.loads(json.dumps(data)) == data


def test_hashlib():
    assert len(hashlib.sha256(b"abc" * 100).hexdigest()) == 64


def test_uuid_and_string_format():
    value = uuid.uuid4()
    assert len(f"{value}") == 36
    assert string.Template("$a-$b").substitute(a=1, b=2) == "1-2"


def test_typing_caches():
    alias = typing.Optional[list[int]]  # noqa: UP045 (typing's caches)
    assert typing.get_origin(alias) is typing.Union


def test_dataclass_instances():
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    assert dataclasses.asdict(Point(1, 2)) == {"x": 1, "y": 2}


def test_enum_lookup():
    class Color(enum.Enum):
        RED = 1
        BLUE = 2

    assert Color(2) is Color.BLUE


def test_inspect_signature():
    assert list(inspect.signature(corpus_state.config).parameters) == ["key"]


def test_import_module_first_time():
    assert importlib.import_module("colorsys").rgb_to_hsv(1, 0, 0)[0] == 0


def test_warning_registry():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    assert caught


def test_exception_caught():
    with pytest.raises(KeyError):
        {}["missing"]


def test_counter_and_sorting():
    counts = collections.Counter("abracadabra")
    assert sorted(counts, key=counts.__getitem__)[-1] == "a"


def test_partial_and_reduce():
    add = functools.partial(lambda a, b: a + b, 1)
    assert functools.reduce(lambda a, b: a + b, map(add, range(10))) == 55


def test_generator_and_comprehensions():
    gen = (i * 2 for i in range(1000))
    assert sum(x for x in gen if x % 3) > 0
