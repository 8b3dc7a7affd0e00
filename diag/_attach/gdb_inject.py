"""Runs inside gdb's Python (``gdb -p PID -batch -ex "source THIS" -ex "python ..."``).

It makes the target run one line (``diag.attach``'s: it runs the payload file), at a point
where running Python is safe. Never PyRun_SimpleString from an arbitrary stop (seen to crash a busy,
allocating target about one time in ten). Instead:

- The line is written into a fresh page of the target (mmap is a plain system call, safe from
  any stop; gdb's own string literals would call malloc in the target, unsafe if it was
  stopped inside malloc).
- A main thread blocked in a wait (Event.wait, a socket accept, a sleep) holds no lock of the
  interpreter's: run the line there between PyGILState_Ensure and PyGILState_Release.
- Otherwise queue it with Py_AddPendingCall: the interpreter runs pending calls itself, on the
  main thread, between bytecodes, holding the GIL, as soon as gdb detaches.
"""

import gdb  # type: ignore[import-not-found]

BLOCKING = ("futex", "wait", "poll", "select", "accept", "nanosleep", "sleep", "recv", "read",
            "sem_", "cond")  # fmt: skip


def _say(message):
    gdb.write(f"diag-attach: {message}\n")


def _top_frames(thread, depth=4):
    thread.switch()
    frame, names = gdb.newest_frame(), []
    while frame is not None and len(names) < depth:
        names.append(frame.name() or "?")
        frame = frame.older()
    return names


def _place(text):
    data = text.encode() + b"\0"
    size = (len(data) // 4096 + 1) * 4096
    address = int(gdb.parse_and_eval(f"(unsigned long)mmap(0, {size}, 3, 34, -1, 0)"))
    if address in (0, 2**64 - 1):
        raise gdb.GdbError("mmap in the target failed")
    gdb.selected_inferior().write_memory(address, data)
    return address


def diag_attach(line):
    threads = sorted(gdb.selected_inferior().threads(), key=lambda t: t.num)
    names = _top_frames(threads[0])
    address = _place(line)
    if any(word in name for name in names[:3] for word in BLOCKING):
        _say(f"main thread waits ({names[0]}): running with PyGILState_Ensure")
        state = int(gdb.parse_and_eval("(int)PyGILState_Ensure()"))
        result = int(gdb.parse_and_eval(f"(int)PyRun_SimpleString((char*){address})"))
        gdb.parse_and_eval(f"(void)PyGILState_Release({state})")
        _say(f"ran: {result}")
    else:
        queued = int(
            gdb.parse_and_eval(
                f"(int)Py_AddPendingCall((void*)PyRun_SimpleString, (void*){address})"
            )
        )
        _say(f"main thread busy ({names[0]}): pending call queued: {queued}")
