"""Clean tests that use files, sockets, threads, pools and processes and give them back."""

import os
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import corpus_state
import pytest

pytestmark = pytest.mark.no_leaks


def test_file_with_block(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with open(path) as f:
        assert f.read() == "hello"


def test_temporary_file():
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"abc")


def test_socket_closed():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()


def test_socketpair_round_trip():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"ping")
        assert b.recv(4) == b"ping"


def test_pipe_closed():
    r, w = os.pipe()
    os.write(w, b"x")
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)


def test_thread_joined():
    out = []
    t = threading.Thread(target=out.append, args=(1,))
    t.start()
    t.join()
    assert out == [1]


def test_lazy_module_pool():
    assert corpus_state.pool().submit(sum, [1, 2, 3]).result() == 6


def test_lazy_module_pool_map():
    assert list(corpus_state.pool().map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_pool_per_test_shut_down():
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert pool.submit(pow, 2, 10).result() == 1024


def test_thread_that_ends_right_after_the_test():
    started = threading.Event()

    def work():
        started.set()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    started.wait()  # the thread may outlive the test body by a moment


def test_timer_cancelled():
    timer = threading.Timer(60, print)
    timer.start()
    timer.cancel()
    timer.join()


def test_lock_and_condition():
    lock = threading.Lock()
    cond = threading.Condition()
    with lock, cond:
        cond.notify_all()


def test_subprocess_run_waits():
    out = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True)
    assert out.stdout.strip() == b"1"
