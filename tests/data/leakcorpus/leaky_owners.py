"""Leaking tests: each docstring's first line is the owner the report must name first, or
the measure it must say grew where no Python object holds it (memory C code keeps)."""

import asyncio
import os
import tempfile

import leakmods
import pytest

pytestmark = pytest.mark.no_leaks


def teardown_module():
    leakmods.cleanup()


def test_module_dict():
    """owner: leakmods._REGISTRY"""
    leakmods.register()


def test_module_dict_of_lists():
    """owner: leakmods._BY_USER[<str>]"""
    leakmods.remember_for_user()


def test_module_list_of_strings():
    """owner: leakmods._LOG_LINES"""
    leakmods.log_line()


def test_module_set():
    """owner: leakmods._SEEN"""
    leakmods.see()


def test_module_deque_of_bytes():
    """owner: leakmods._HISTORY"""
    leakmods.keep_history()


def test_kept_exceptions():
    """owner: leakmods._ERRORS"""
    leakmods.keep_error()


def test_class_attribute():
    """owner: leakmods.Session.instances"""
    leakmods.Session()


def test_list_in_a_closure():
    """owner: leakmods.record"""
    leakmods.record("call")


def test_defaultdict_of_lists():
    """owner: leakmods._EVENTS"""
    leakmods.add_event()


def test_instance_attribute_chain():
    """owner: leakmods.APP.service.cache.entries"""
    leakmods.handle()


def test_unbounded_lru_cache():
    """owner: leakmods.lookup"""
    leakmods.lookup_new()


def test_logging_handler_added_per_call():
    """owner: logging.Logger.manager.loggerDict[<str>].handlers"""
    leakmods.add_handler()


def test_tensor_dict():
    """owner: leakmods._AUDIO_CACHE"""
    leakmods.synthesize()


def test_tensor_list():
    """owner: leakmods._TENSORS"""
    leakmods.keep_tensor()


def test_numpy_arrays():
    """owner: leakmods._FRAMES"""
    leakmods.keep_array()


def test_bytesio_spool():
    """owner: leakmods._SPOOL"""
    leakmods.spool_audio()


@pytest.fixture
def journal():
    return leakmods.Journal()


def test_fixture_value(journal):
    """owner: fixture journal.entries"""
    leakmods.record_into(journal)


def test_native_memory():
    """measure: native memory"""
    leakmods.keep_native()


_LOG = os.path.join(tempfile.gettempdir(), "diag-leakcorpus.log")
open(_LOG, "a").close()


def test_open_files():
    """owner: leakmods._FILES"""
    leakmods.open_log(_LOG)


def test_sockets():
    """owner: leakmods._CONNS"""
    leakmods.connect()


def test_threads():
    """owner: thread 'poller'"""
    leakmods.start_poller()


def test_child_processes():
    """owner: leakmods._CHILDREN"""
    leakmods.spawn()


async def test_asyncio_tasks():
    """owner: pending tasks of wait_forever()"""
    asyncio.get_running_loop().create_task(leakmods.wait_forever())
    await asyncio.sleep(0)


def test_fds_without_python_objects():
    """owner: fds no Python object holds"""
    os.open(_LOG, os.O_RDONLY)
