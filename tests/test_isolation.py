"""The user's dual solver in a process of its own (convex_attention.bench.isolation): tiny
solver files that exit, crash, are killed, hang, raise every kind of exception, return
wrong types, stall halfway through a message, stop reading, or try to talk to the verifier
themselves; none hangs or fools it."""
import io
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from helpers import slow_beyond

import convex_attention as ca
from convex_attention.bench.isolation import (
    _CHILD_CODE,
    IsolatedSolver,
    SolverFailed,
    _frame,
    _pack,
    _read_duals,
    _unpack,
    describe,
    load_solver,
    parse_solver_spec,
    returned_duals,
)
from convex_attention.bench.verify import random_instances
from convex_attention.io.files import REASON_CHARS

H = ca.Hierarchy.grid([(4, 4), (2, 2)])
SCORES = [torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 2, dtype=torch.float64)]
TEMPS = [0.7, 1.3]


def _exact_duals(scores, h, temps):
    return ca.solve(scores, h, "exact", temperature=temps).duals


def _solver(tmp_path, body: str, name: str = "solver") -> str:
    """A solver file whose function ``f`` runs ``body``; returns its spec."""
    path = tmp_path / f"{name}.py"
    path.write_text("import os, sys, signal, time, ctypes\nimport torch\nimport convex_attention as ca\n\n"
                    "def f(scores, h, temps):\n" + textwrap.indent(body, "    ") + "\n")
    return f"{path}:f"


def _returns_within(solver: IsolatedSolver, call, seconds: float = 60):
    """``call()`` (a SolverFailed it raises is returned), or a test failure when it has not
    returned within ``seconds`` (generous: it is a hang that is tested, not a speed); the
    child is then killed so that the hung call ends."""
    outcome: list = []

    def run():
        try:
            outcome.append(call())
        except SolverFailed as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if solver._process is not None:
            solver._process.kill()
        thread.join(30)
        pytest.fail(f"the verifier hung: the call had not returned after {seconds} s")
    return outcome[0]


# ---------------------------------------------------------------- the check of what a solver returned

@pytest.mark.parametrize("raw, message", [
    (None, "returned a NoneType, not a list of 1 dual tensors"),
    (torch.zeros(2, 2, 2), "returned a Tensor, not a list"),
    ([torch.zeros(2, 2, 2)] * 2, "returned 2 dual tensors, expected 1"),
    ([torch.zeros(2, 2, 2, dtype=torch.complex128)], r"duals\[0\] has dtype torch.complex128; duals must be real "
                                                     r"floating tensors"),
    ([torch.zeros(2, 2, 2, dtype=torch.int64)], r"duals\[0\] has dtype torch.int64"),
    ([torch.zeros(2, 2, 2, dtype=torch.bool)], r"duals\[0\] has dtype torch.bool"),
    ([np.zeros((2, 2, 2))], r"duals\[0\] is a numpy.ndarray, not a torch.Tensor"),
    ([[[0.0, 0.0], [0.0, 0.0]]] * 1, r"duals\[0\] is a builtins.list, not a torch.Tensor"),
    ([object()], r"duals\[0\] is a builtins.object"),
    ([torch.zeros(2, 4)], r"duals\[0\] has shape \(2, 4\), expected \(2, 2, 2\)"),
    ([torch.zeros(1, 2, 2)], r"has shape \(1, 2, 2\), expected \(2, 2, 2\)"),
])
def test_returned_duals_must_be_real_floating_tensors_of_the_documented_shapes(raw, message):
    with pytest.raises(ValueError, match=message):
        returned_duals(raw, H, 2)


def test_returned_duals_of_any_real_floating_dtype_are_read_as_float64():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        got = returned_duals((torch.ones(2, 2, 2, dtype=dtype, requires_grad=True),), H, 2)
        assert got[0].dtype == np.float64 and got[0].shape == (2, 2, 2) and (got[0] == 1).all()


@pytest.mark.parametrize("arrays, message", [
    ([np.zeros((2, 2, 2), dtype=np.complex128)], r"duals\[0\] of dtype complex128 and shape \(2, 2, 2\), not float64"),
    ([np.zeros((2, 2, 2), dtype=np.float32)], r"duals\[0\] of dtype float32"),
    ([np.zeros((2, 2, 2)), np.zeros((2, 2, 2))], r"arrays \['d0', 'd1'\], not 1 duals"),
    ([np.zeros((2, 4))], r"duals\[0\] of dtype float64 and shape \(2, 4\)"),
    ([], r"arrays \[\], not 1 duals"),
])
def test_the_verifier_reads_exactly_one_float64_array_per_edge_from_the_child(arrays, message):
    """The verifier's own check of the child's archive (the child's check ran in the child's
    process): complex128 arrays of the right shapes, or one array more than the edges, were
    taken as duals (found by mutation testing)."""
    buf = io.BytesIO()
    np.savez(buf, **{f"d{i}": a for i, a in enumerate(arrays)})
    with pytest.raises(ValueError, match=message):
        _read_duals(buf.getvalue(), [(2, 2, 2)])


def test_the_verifier_reads_only_arrays_named_as_duals_and_unpickles_nothing():
    """An archive of one array under another name is refused like any other wrong archive
    (a check of the number of arrays alone let it through to a KeyError, which is no
    SolverFailed), and an archive of pickled objects is refused without running them."""
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"the child sent arrays \['x'\], not 1 duals"):
        _read_duals(buf.getvalue(), [(2, 2, 2)])
    ran = []
    buf = io.BytesIO()
    np.savez(buf, d0=np.array([_RunsWhenUnpickled(ran)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        _read_duals(buf.getvalue(), [(1,)])
    assert ran == []


class _RunsWhenUnpickled:
    """An object whose unpickling appends to a list (code run by whoever unpickles it)."""

    def __init__(self, ran: list):
        self.ran = ran

    def __reduce__(self):
        return (self.ran.append, ("unpickled",))


def test_a_message_is_a_length_a_json_header_with_a_status_and_a_body():
    """The verifier's reading of the child's bytes: a message as the child packs it comes back
    whole; anything shorter than its header, or whose header is not a JSON object with a string
    status, is a ValueError (which stops the child), never a crash of another kind."""
    body = b"\x00archive bytes"
    assert _unpack(_pack({"status": "duals", "instance": 3}) + body) == ({"status": "duals", "instance": 3}, body)
    assert _unpack(_pack({"status": "started"})) == ({"status": "started"}, b"")
    head = b'{"status": "ready"}'
    bad = [b"", b"\x00\x00", struct.pack("!I", len(head) + 2) + head,  # the header runs past the message's end
           struct.pack("!I", 3) + b"[1]", struct.pack("!I", 2) + b"{}", struct.pack("!I", 13) + b'{"status": 1}',
           struct.pack("!I", 2) + b"\xff\xfe", struct.pack("!I", 4) + b"null"]
    for data in bad:
        with pytest.raises(ValueError):
            _unpack(data)


def test_an_exception_is_described_in_one_line_of_bounded_length():
    assert describe(SystemExit(2)) == "called sys.exit(2)"
    assert describe(SystemExit()) == "called sys.exit(None)"
    assert describe(RuntimeError()) == "raised RuntimeError"
    assert describe(ValueError("first line\n   second")) == "raised ValueError: first line second"
    long = describe(RuntimeError("x" * 1000))
    assert long.startswith("raised RuntimeError: xxx") and long.endswith("...")
    assert len(long) == len("raised RuntimeError: ") + REASON_CHARS
    odd = type("Odd\nName" + "N" * 1000, (Exception,), {})  # a class name of its own making
    text = describe(odd("message"))
    assert "\n" not in text and text.startswith("raised Odd Name") and len(text) <= 400


def test_a_spec_is_split_at_its_last_colon_and_a_py_spec_must_name_a_file(tmp_path):
    folder = tmp_path / "a:b"
    folder.mkdir()
    (folder / "mod.py").write_text("")
    assert parse_solver_spec(f"{folder / 'mod.py'}:f") == (str(folder / "mod.py"), "f")
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(ValueError, match="does not exist"):
        parse_solver_spec(f"{tmp_path / 'folder.py'}:f")
    for spec in (None, 3, b"mod:f"):
        with pytest.raises(ValueError, match="must look like module:function"):
            parse_solver_spec(spec)


@pytest.mark.parametrize("module, message", [
    ("raise SystemExit(4)\n", r"importing .* failed: called sys.exit\(4\)"),
    ("raise KeyboardInterrupt\n", "importing .* failed: raised KeyboardInterrupt$"),
    ("g = 1\n", "has no function 'f'"),
    ("f = 1\n", "is a int, not a function"),
])
def test_load_solver_turns_whatever_the_import_does_into_a_value_error(tmp_path, module, message):
    """In this process (the child's part of it; the tests above run it in a child)."""
    (tmp_path / "mod.py").write_text(module)
    with pytest.raises(ValueError, match=message):
        load_solver(f"{tmp_path / 'mod.py'}:f")


def test_a_value_error_of_the_solvers_module_says_that_importing_it_failed(tmp_path):
    (tmp_path / "mod.py").write_text("raise ValueError('bad config')\n")
    with pytest.raises(ValueError, match=r"importing .*mod\.py' failed: raised ValueError: bad config"):
        load_solver(f"{tmp_path / 'mod.py'}:f")


def test_load_solver_gives_the_function(tmp_path):
    (tmp_path / "mod.py").write_text("def f(scores, h, temps):\n    return 'mine'\n")
    assert load_solver(f"{tmp_path / 'mod.py'}:f")(None, None, None) == "mine"


# ---------------------------------------------------------------- in a process of its own

@pytest.mark.slow  # a solver in a process of its own (~1.2 s)
def test_a_correct_solver_gives_its_duals_and_its_prints_do_not_reach_stdout(tmp_path, capfd):
    spec = _solver(tmp_path, "print('chatty solver')\nreturn ca.solve(scores, h, 'exact', temperature=temps).duals",
                   "good")
    with IsolatedSolver(spec, timeout=60) as solver:
        assert solver.name == "f"
        child = solver._process.pid
        # a session and process group of its own: signals to the verifier's group do not reach it
        assert os.getsid(child) == child != os.getsid(0) and os.getpgid(child) != os.getpgid(0)
        got = solver.solve(SCORES, H, TEMPS)
        again = solver.solve(SCORES, H, TEMPS)  # one process serves every instance
    want = _exact_duals(SCORES, H, TEMPS)
    np.testing.assert_array_equal(got[0], want[0].numpy())
    np.testing.assert_array_equal(again[0], got[0])
    out, err = capfd.readouterr()
    assert "chatty solver" not in out and "chatty solver" in err


@pytest.mark.slow  # a Python process, a dozen instances; the pure checks have fast tests above
def test_every_exception_and_every_wrong_return_is_a_failure_with_its_reason(tmp_path):
    """One process, one behaviour per call (a counter file), none of which ends it."""
    counter = tmp_path / "calls"
    counter.write_text("0")
    behaviours = [
        ("raise GeneratorExit", "raised GeneratorExit"),
        ("raise KeyboardInterrupt", "raised KeyboardInterrupt"),
        ("raise SystemExit(0)", "called sys.exit(0)"),
        ("sys.exit(3)", "called sys.exit(3)"),
        ("raise ZeroDivisionError('boom')", "raised ZeroDivisionError: boom"),
        ("return [torch.zeros((2, 2, 2), dtype=torch.complex64)]", "dtype torch.complex64; duals must be real"),
        ("return [torch.zeros((2, 2, 2), dtype=torch.int32)]", "dtype torch.int32"),
        ("return [object()]", "is a builtins.object, not a torch.Tensor"),
        ("return 'duals'", "returned a str, not a list"),
        ("return [torch.zeros(3)]", "has shape (3,), expected (2, 2, 2)"),
        ("return type('Odd\\nName' + 'N' * 1000, (), {})()", "returned a Odd Name"),  # a name of its own making
        ("class Bad(list):\n    def __len__(self):\n        raise MemoryError('no')\nreturn Bad()",
         "returned a value that raised MemoryError: no when read"),
    ]
    body = (f"n = int(open({str(counter)!r}).read())\nopen({str(counter)!r}, 'w').write(str(n + 1))\n"
            + "".join(f"if n == {i}:\n" + textwrap.indent(code, "    ") + "\n"
                      for i, (code, _) in enumerate(behaviours))
            + "return ca.solve(scores, h, 'exact', temperature=temps).duals")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        pid = solver._process.pid
        for code, message in behaviours:
            with pytest.raises(SolverFailed) as err:
                solver.solve(SCORES, H, TEMPS)
            assert message in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) <= 400, code
        assert solver._process.pid == pid  # the same process throughout
        np.testing.assert_array_equal(solver.solve(SCORES, H, TEMPS)[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())


@pytest.mark.parametrize("body, message", slow_beyond(keep=0, cases=[
    ("os._exit(0)", "ended its process with exit status 0 without returning"),
    ("os._exit(7)", "ended its process with exit status 7 without returning"),
    ("ctypes.string_at(0)", "was killed by SIGSEGV without returning"),
    ("os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL without returning"),
    ("os.kill(os.getpid(), signal.SIGRTMIN + 1)", r"was killed by signal \d+ without returning"),  # no name
]))
def test_a_solver_that_ends_or_crashes_its_process_fails_and_the_next_instance_gets_a_fresh_one(tmp_path, body,
                                                                                                message):
    marker = tmp_path / "done-once"
    code = (f"if not os.path.exists({str(marker)!r}):\n    open({str(marker)!r}, 'w').close()\n"
            + textwrap.indent(body, "    ") + "\nreturn ca.solve(scores, h, 'exact', temperature=temps).duals")
    with IsolatedSolver(_solver(tmp_path, code), timeout=60) as solver:
        with pytest.raises(SolverFailed, match=message):
            solver.solve(SCORES, H, TEMPS)
        np.testing.assert_array_equal(solver.solve(SCORES, H, TEMPS)[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())


@pytest.mark.slow  # a Python process of its own
def test_a_solver_that_hangs_is_stopped_at_the_timeout(tmp_path):
    """Stopped with what it started in its process group (here a process that would sleep on)."""
    pid_file = tmp_path / "grandchild"
    body = (f"import subprocess\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\ntime.sleep(600)")
    with IsolatedSolver(_solver(tmp_path, body), timeout=1.5) as solver:
        start = time.monotonic()
        with pytest.raises(SolverFailed, match=r"did not return within 1.5 s \(--timeout\); its process was stopped"):
            solver.solve(SCORES, H, TEMPS)
        assert time.monotonic() - start < 60
        process = solver._process
    assert process is None  # stopped, not left running
    if pid_file.exists():  # the grandchild started in time: it is stopped too
        _assert_stopped(int(pid_file.read_text()))


def _assert_stopped(pid: int) -> None:
    """Fails (and kills it) unless process ``pid`` ends within 30 s."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to see whether a process runs")

    def running():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except OSError:
            return False

    for _ in range(300):
        if not running():
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail("the solver's own process outlived the stopped child")


@pytest.mark.slow  # a Python process of its own (the fast suite keeps three: a correct solver, failures, a stall)
def test_what_a_solver_started_is_stopped_when_it_exits_on_its_own(tmp_path):
    """The child was reaped (to tell how it ended) before its process group was signalled,
    so a process it started outlived it (found by a review)."""
    pid_file = tmp_path / "grandchild"
    body = (f"import subprocess\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\nos._exit(3)")
    with IsolatedSolver(_solver(tmp_path, body), timeout=30) as solver:
        with pytest.raises(SolverFailed, match="ended its process with exit status 3 without returning"):
            solver.solve(SCORES, H, TEMPS)
    _assert_stopped(int(pid_file.read_text()))


@pytest.mark.slow  # three processes
def test_a_solver_cannot_send_the_verifier_its_own_messages(tmp_path):
    """The solver finds the channel to the verifier (its file descriptor is in argv) and
    writes to it: a pickle that would run code if unpickled, a well-formed 'duals'
    message whose archive holds a pickled object that would run code, and a message far
    larger than the instance's duals.  Nothing is unpickled (the marker file is never
    made), and each fails its instance."""
    marker = tmp_path / "code-ran"
    counter = tmp_path / "calls"
    counter.write_text("0")
    body = textwrap.dedent(f"""\
        import io, pickle
        import numpy as np
        from multiprocessing.connection import Connection
        from convex_attention.bench.isolation import _pack

        class Exploit:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))

        out = Connection(int(sys.argv[2]), readable=False)
        n = int(open({str(counter)!r}).read())
        open({str(counter)!r}, 'w').write(str(n + 1))
        if n == 0:
            out.send_bytes(pickle.dumps(Exploit()))
        elif n == 2:
            out.send_bytes(b"x" * (8 << 20))  # far more than the duals of the instance
        else:
            number = sys._getframe(1).f_locals.get("number")  # the tag of this instance's answer
            buf = io.BytesIO()
            np.savez(buf, d0=np.array([Exploit()], dtype=object))
            out.send_bytes(_pack({{"status": "duals", "instance": number}}) + buf.getvalue())
        time.sleep(600)""")
    with IsolatedSolver(_solver(tmp_path, body), timeout=30) as solver:
        with pytest.raises(SolverFailed, match="sent something that is not a message"):
            solver.solve(SCORES, H, TEMPS)
        with pytest.raises(SolverFailed, match="sent unreadable duals .*allow_pickle"):
            solver.solve(SCORES, H, TEMPS)
        with pytest.raises(SolverFailed, match=r"sent more than \d+ bytes; it was stopped"):
            solver.solve(SCORES, H, TEMPS)
    assert not marker.exists()


# The child's end of its pipe to the verifier, and a frame as Connection.recv_bytes reads it.
_RAW = "out = int(sys.argv[2])\nimport struct\n"


@pytest.mark.parametrize("body", slow_beyond(keep=0, cases=[  # waits out a 1.5 s timeout: slow, in CI
    "os.write(out, b'\\x00\\x00')",  # half the length of a message
    "os.write(out, struct.pack('!i', 100) + b'{\"status\"')",  # the length, then a tenth of the message
]))
def test_a_solver_that_sends_part_of_a_message_and_stalls_is_stopped_at_the_timeout(tmp_path, body):
    """The timeout covers the whole answer, not its first byte."""
    with IsolatedSolver(_solver(tmp_path, _RAW + body + "\ntime.sleep(600)"), timeout=1.5) as solver:
        err = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
        assert isinstance(err, SolverFailed), err
        assert str(err) == "did not return within 1.5 s (--timeout); its process was stopped"
        assert solver._process is None


def _times_out_on_an_instance_larger_than_a_pipe(spec: str) -> None:
    """The solver ``spec``, given an instance of 320 KiB (more than a pipe holds, so handing
    it over waits for the child to read), fails at a timeout of 1.5 s and is stopped."""
    h = ca.Hierarchy.grid([(128, 128), (64, 64)])
    scores = [torch.zeros((2,) + s, dtype=torch.float64) for s in h.shapes]
    with IsolatedSolver(spec, timeout=1.5) as solver:
        err = _returns_within(solver, lambda: solver.solve(scores, h, [1.0, 1.0]))
        assert isinstance(err, SolverFailed), err
        assert str(err) == "did not return within 1.5 s (--timeout); its process was stopped"
        assert solver._process is None  # stopped, not left with half an instance in its pipe


@pytest.mark.slow  # a 1.5 s timeout run out (the fast suite keeps one: the stalled message above)
def test_a_child_that_stops_reading_its_instances_is_stopped_at_the_timeout(tmp_path):
    """Its module makes the child's reads hang; an instance larger than a pipe's buffer
    cannot be handed over, and the verifier stops waiting at the timeout."""
    path = tmp_path / "deaf.py"
    path.write_text("import time\nfrom multiprocessing.connection import Connection\n"
                    "Connection.recv_bytes = lambda self, *args: time.sleep(600)\n"
                    "def f(scores, h, temps):\n    return None\n")
    _times_out_on_an_instance_larger_than_a_pipe(f"{path}:f")


@pytest.mark.parametrize("late, message", slow_beyond(keep=0, cases=[  # a Python process each
    (True, "sent a message before it was given this instance (unasked)"),
    (False, "sent a message that is not its answer to this instance (unasked)"),
]))
def test_a_message_sent_unasked_is_never_taken_as_an_answer(tmp_path, late, message):
    """The solver sends a well-formed answer of zeros tagged for another instance: after its
    answer, tagged for the next instance (it would be read as that one's answer), or before
    its answer with the tag of an earlier one.  The forged zeros never come back as duals."""
    sent = tmp_path / "sent"
    body = textwrap.dedent(f"""\
        import threading
        import numpy as np
        from convex_attention.bench.isolation import _pack
        from multiprocessing.connection import Connection
        number = sys._getframe(1).f_locals.get("number", 0)
        zeros = [np.zeros((2,) + tuple(h.shapes[b])) for _, b in h.edges]

        def forge(tag):
            Connection(int(sys.argv[2]), readable=False).send_bytes(_pack({{"status": "duals", "instance": tag}},
                                                                          zeros))
            open({str(sent)!r}, "w").close()

        if {late!r}:
            threading.Timer(0.2, forge, (number + 1,)).start()  # once the answer is on its way
        else:
            forge(number - 1)
            time.sleep(600)  # the forged message is all it sends
        return ca.solve(scores, h, 'exact', temperature=temps).duals""")
    other = [s + 1 for s in SCORES]
    with IsolatedSolver(_solver(tmp_path, body), timeout=30) as solver:
        first = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
        for _ in range(600 if late else 0):  # until the forged message is in the pipe
            if sent.exists():
                break
            time.sleep(0.1)
        second = _returns_within(solver, lambda: solver.solve(other, H, TEMPS))
    failed = first if not late else second
    assert isinstance(failed, SolverFailed) and message in str(failed) and "it was stopped" in str(failed), failed
    for got, scores in zip((first, second), (SCORES, other)):
        if not isinstance(got, SolverFailed):  # an answer is the solver's own, never the forged zeros
            np.testing.assert_array_equal(got[0], _exact_duals(scores, H, TEMPS)[0].numpy())


def _a_forged_answer_is_refused(tmp_path, sent: str, pattern: str, setup: str = "") -> None:
    """The solver writes ``sent`` (an expression of ``_pack``, ``np``, the instance's ``number``,
    the solve's arguments and what the one-line ``setup`` defines) to its pipe itself, past the
    child's checks, and sleeps: the instance fails with a message matching ``pattern``, and the
    child is stopped."""
    body = textwrap.dedent(f"""\
        import numpy as np
        from convex_attention.bench.isolation import _pack
        from multiprocessing.connection import Connection
        number = sys._getframe(1).f_locals.get("number")
        {setup}
        Connection(int(sys.argv[2]), readable=False).send_bytes({sent})
        time.sleep(600)  # the forged message is all it sends""")
    with IsolatedSolver(_solver(tmp_path, body), timeout=30) as solver:
        err = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
        assert isinstance(err, SolverFailed), err
        assert re.search(pattern, str(err)), err
        assert solver._process is None


@pytest.mark.parametrize("arrays, message", slow_beyond(keep=0, cases=[  # the fast suite: the direct test above
    ("[np.zeros((2, 2, 2), dtype=np.complex128)]", r"duals\[0\] of dtype complex128"),
    ("[np.zeros((2, 2, 2))] * 2", r"arrays \['d0', 'd1'\], not 1 duals"),
]))
def test_forged_duals_that_are_not_one_float64_array_per_edge_are_refused_and_the_child_stopped(tmp_path, arrays,
                                                                                                message):
    """The solver sends a well-formed answer to its instance itself, past the child's check:
    complex arrays, or one more array than the edges (found by mutation testing: without
    the verifier's dtype check, or with a names check that let extra arrays through, they
    came back as the instance's duals)."""
    _a_forged_answer_is_refused(tmp_path, f'_pack({{"status": "duals", "instance": number}}, {arrays})',
                                r"sent unreadable duals \(.*" + message + r".*\); it was stopped")


@pytest.mark.slow  # a child process; the reading itself is checked fast above
def test_an_answer_that_is_a_damaged_archive_stops_the_child(tmp_path):
    """Before: a body with the zip signature and nothing readable raised BadZipFile, which the
    reader did not catch: the instance failed, but the same child served the next one (an
    adversarial review)."""
    _a_forged_answer_is_refused(tmp_path,
                                '_pack({"status": "duals", "instance": number}) + b"PK\\x03\\x04 not an archive"',
                                r"sent unreadable duals \(raised BadZipFile.*\); it was stopped")


@pytest.mark.slow  # 2.5 s; the timeout's path is in the fast suite through the tests above
def test_the_timeout_covers_taking_the_instance_and_the_answer_together(tmp_path):
    """One deadline, set before the instance is handed over: a child that takes 0.9 s to take
    the instance and 0.9 s more to answer is late at a timeout of 1.5 s (found by mutation
    testing: a deadline restarted once the instance was taken let it through).  Its reads
    start their delay only once the instance is there, so it can only be later, never in time."""
    path = tmp_path / "slow_twice.py"
    path.write_text(textwrap.dedent("""\
        import select, time
        import torch
        from multiprocessing.connection import Connection
        _recv_bytes = Connection.recv_bytes

        def recv_bytes(self, *args):
            select.select([self.fileno()], [], [])  # the instance is there
            time.sleep(0.9)
            return _recv_bytes(self, *args)

        Connection.recv_bytes = recv_bytes

        def f(scores, h, temps):
            time.sleep(0.9)
            return [torch.zeros((scores[0].shape[0],) + tuple(h.shapes[b])) for _, b in h.edges]
        """))
    _times_out_on_an_instance_larger_than_a_pipe(f"{path}:f")


@pytest.mark.slow  # two Python processes of their own
def test_the_child_ends_itself_when_the_verifiers_process_is_gone(tmp_path):
    """A child of its own session gets no hang-up from the verifier's terminal: it watches
    its parent instead.  Here it is told a parent that is not its own, as if the verifier
    had died: it ends (exit status 1) while its solver module still hangs in its import."""
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(600)\ndef f(scores, h, temps):\n    pass\n")
    read_a, write_a = os.pipe()
    read_b, write_b = os.pipe()
    env = {**os.environ, "CONVEX_ATTENTION_VERIFY_PATH": __import__("json").dumps(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, str(read_a), str(write_b), str(os.getpid() + 10**6),
                                f"{tmp_path / 'slow.py'}:f"], pass_fds=(read_a, write_b), env=env,
                               stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert process.wait(120) == 1
    finally:
        process.kill()
        process.wait()
        for fd in (read_a, write_a, read_b, write_b):
            os.close(fd)


@pytest.mark.parametrize("module, message", slow_beyond(keep=0, cases=[
    ("import os\nos._exit(0)\n", "ended its process with exit status 0 without returning"),
    ("raise KeyboardInterrupt\n", "importing .* failed: raised KeyboardInterrupt"),
    ("import sys\nsys.exit(4)\n", r"called sys.exit\(4\)"),
    ("import time\ntime.sleep(600)\n", r"did not finish importing within 1.5 s"),
    ("VALUE = 1\n", "is a int, not a function"),
]))
def test_a_solver_module_that_fails_to_import_is_a_value_error_before_any_instance(tmp_path, module, message):
    (tmp_path / "mod.py").write_text(module.replace("VALUE", "f"))
    # a short timeout only where the timeout is what is tested: a loaded machine may stall a second
    solver = IsolatedSolver(f"{tmp_path / 'mod.py'}:f", timeout=1.5 if "sleep" in module else 60)
    with pytest.raises(ValueError, match=message):
        solver.start()
    assert solver._process is None


@pytest.mark.slow  # a Python process of its own
def test_an_importable_module_is_found_on_the_verifiers_path(tmp_path, monkeypatch):
    (tmp_path / "my_duals_module_16.py").write_text(
        "import convex_attention as ca\ndef solve_duals(scores, h, temps):\n"
        "    return ca.solve(scores, h, 'exact', temperature=temps).duals\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, h, scores, temps = next(iter(random_instances(1, quick=True)))
    with IsolatedSolver("my_duals_module_16:solve_duals", timeout=60) as solver:
        assert solver.name == "solve_duals"
        got = solver.solve(scores, h, temps)
    for a, b in zip(got, _exact_duals(scores, h, temps)):
        np.testing.assert_array_equal(a, b.numpy())


def test_a_malformed_spec_or_a_missing_file_is_refused_before_a_child_starts(tmp_path):
    for spec, message in (("no_colon", "must look like module:function"), (":f", "must look like"),
                          ("mod:", "must look like"), (f"{tmp_path / 'none.py'}:f", "does not exist")):
        with pytest.raises(ValueError, match=message):
            IsolatedSolver(spec, timeout=60)  # raised by the constructor: no process to stop
    (tmp_path / "mod.py").write_text("")
    assert parse_solver_spec(f"{tmp_path / 'mod.py'}:f") == (str(tmp_path / "mod.py"), "f")
    assert parse_solver_spec("package.module:solve") == ("package.module", "solve")


def test_the_timeout_must_be_positive():
    for bad in (0, -1, float("nan"), True, "5"):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            IsolatedSolver("m:f", timeout=bad)


@pytest.mark.slow  # a Python process of its own
def test_the_child_imports_the_verifiers_own_package(tmp_path):
    """Its import path is the verifier's: the toolkit it runs is this checkout's."""
    with IsolatedSolver(_solver(tmp_path, "raise RuntimeError(ca.__file__)"), timeout=60) as solver:
        with pytest.raises(SolverFailed) as err:
            solver.solve(SCORES, H, TEMPS)
    assert str(err.value) == f"raised RuntimeError: {ca.__file__}"


@pytest.mark.slow  # a Python process of its own
def test_a_solver_files_sibling_modules_import(tmp_path):
    """As for `python solver.py`, the file's own folder is on its import path (a review found
    `from helper import ...` in a solver file failing with "No module named 'helper'")."""
    (tmp_path / "helper_of_the_solver_17.py").write_text(
        "import convex_attention as ca\ndef duals(scores, h, temps):\n"
        "    return ca.solve(scores, h, 'exact', temperature=temps).duals\n")
    spec = _solver(tmp_path, "from helper_of_the_solver_17 import duals\nreturn duals(scores, h, temps)")
    with IsolatedSolver(spec, timeout=60) as solver:
        got = solver.solve(SCORES, H, TEMPS)
    for a, b in zip(got, _exact_duals(SCORES, H, TEMPS)):
        np.testing.assert_array_equal(a, b.numpy())


# ---------------------------------------------------------------- found by mutation testing (the slow suite)

class _Sized:
    """Stands for a payload of ``size`` bytes without taking them: ``_frame`` reads its length
    and adds it after the frame's header, which is all that is kept."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __radd__(self, header: bytes) -> bytes:
        return header


def test_a_frame_has_the_length_prefix_of_connection_send_bytes():
    """A signed 32-bit length, or -1 and an unsigned 64-bit length from 2 GiB on (as
    ``Connection.send_bytes`` writes it and ``recv_bytes`` in the child reads it): an instance
    of 2 GiB or more was framed with a length that does not fit, or was cut to 32 bits."""
    assert _frame(b"abc") == struct.pack("!i", 3) + b"abc"
    assert _frame(_Sized(0x7FFFFFFF)) == struct.pack("!i", 0x7FFFFFFF)
    for size in (0x80000000, 0x1_0000_0000, 0x1_2345_6789):
        assert _frame(_Sized(size)) == struct.pack("!i", -1) + struct.pack("!Q", size)


@pytest.mark.slow  # a Python process of its own
def test_ctrl_c_sent_to_the_child_between_instances_is_ignored(tmp_path):
    """The child ignores Ctrl-C (the verifier stops it): a SIGINT it gets while it waits for an
    instance neither ends it nor fails the next instance."""
    with IsolatedSolver(_solver(tmp_path, "return ca.solve(scores, h, 'exact', temperature=temps).duals"),
                        timeout=60) as solver:
        solver.solve(SCORES, H, TEMPS)
        pid = solver._process.pid
        os.kill(pid, signal.SIGINT)
        time.sleep(1)  # time to act on it, were it not ignored
        assert solver._process.poll() is None
        np.testing.assert_array_equal(solver.solve(SCORES, H, TEMPS)[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())
        assert solver._process.pid == pid


@pytest.mark.slow  # a Python process of its own
def test_what_a_solver_writes_to_file_descriptor_1_does_not_reach_stdout(tmp_path, capfd):
    """Not only its prints: the output of C code or of a process it starts goes to stderr too."""
    spec = _solver(tmp_path, "os.write(1, b'raw chatty solver\\n')\n"
                             "return ca.solve(scores, h, 'exact', temperature=temps).duals")
    with IsolatedSolver(spec, timeout=60) as solver:
        solver.solve(SCORES, H, TEMPS)
    out, err = capfd.readouterr()
    assert "raw chatty solver" not in out and "raw chatty solver" in err


@pytest.mark.slow  # a Python process of its own
def test_a_message_sent_while_the_module_imports_is_refused_before_any_instance(tmp_path):
    """The solver's module writes a 'ready' of its own to the verifier's channel: the child's
    second message must be its own 'ready', never the module's."""
    path = tmp_path / "early.py"
    path.write_text(textwrap.dedent("""\
        import sys
        from multiprocessing.connection import Connection
        from convex_attention.bench.isolation import _pack
        Connection(int(sys.argv[2]), readable=False).send_bytes(_pack({"status": "duals", "instance": 1}))

        def f(scores, h, temps):
            return None
        """))
    solver = IsolatedSolver(f"{path}:f", timeout=60)
    with pytest.raises(ValueError, match="sent an unexpected message while importing"):
        solver.start()
    assert solver._process is None


@pytest.mark.slow  # a Python process of its own
def test_a_long_function_name_is_cut_to_100_characters(tmp_path):
    """The name labels every row of the solver's checks: a name of its own making is cut."""
    spec = _solver(tmp_path, "return None")
    with open(spec.rsplit(":", 1)[0], "a") as f:
        f.write("f.__name__ = 'n' * 1000\n")
    with IsolatedSolver(spec, timeout=60) as solver:
        assert solver.name == "n" * 100


@pytest.mark.slow  # a Python process of its own
def test_why_a_solver_file_cannot_be_used_is_said_in_one_line(tmp_path):
    """A file whose name has a newline in it, without the function named: the reason (which
    names the file) is one line."""
    path = tmp_path / "two\nlines.py"
    path.write_text("def f(scores, h, temps):\n    return None\n")
    solver = IsolatedSolver(f"{path}:g", timeout=60)
    with pytest.raises(ValueError, match="has no function 'g'") as err:
        solver.start()
    assert "\n" not in str(err.value) and "two lines.py" in str(err.value)
    assert solver._process is None


@pytest.mark.slow  # a Python process of its own
def test_an_answer_framed_as_a_message_of_2_gib_or_more_is_read(tmp_path):
    """Duals of 2 GiB or more come with the long length prefix (-1, then 64 bits): the
    verifier reads it (here around a small answer the solver sends itself, with the duals it
    would return)."""
    body = textwrap.dedent("""\
        import struct
        from convex_attention.bench.isolation import _pack
        number = sys._getframe(1).f_locals.get("number")
        duals = [d.numpy() for d in ca.solve(scores, h, 'exact', temperature=temps).duals]
        message = _pack({"status": "duals", "instance": number}, duals)
        os.write(int(sys.argv[2]), struct.pack("!i", -1) + struct.pack("!Q", len(message)) + message)
        time.sleep(600)  # the message it wrote is all it sends""")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        got = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
    assert not isinstance(got, SolverFailed), got
    np.testing.assert_array_equal(got[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())


@pytest.mark.parametrize("header, message", [
    ("{'status': 'duals'}", "sent a message that is not its answer to this instance (unasked); it was stopped"),
    ("{'status': 'ready', 'instance': number}", "sent an unexpected message; it was stopped"),
])
@pytest.mark.slow  # a Python process each
def test_only_a_duals_message_tagged_with_the_instance_is_its_answer(tmp_path, header, message):
    """Well-formed duals (the exact ones) under a header without the instance's tag, or with
    its tag but another status, are not an answer."""
    body = textwrap.dedent(f"""\
        from multiprocessing.connection import Connection
        from convex_attention.bench.isolation import _pack
        number = sys._getframe(1).f_locals.get("number")
        duals = [d.numpy() for d in ca.solve(scores, h, 'exact', temperature=temps).duals]
        Connection(int(sys.argv[2]), readable=False).send_bytes(_pack({header}, duals))
        time.sleep(600)  # the forged message is all it sends""")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        err = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
        assert isinstance(err, SolverFailed) and message in str(err), err
        assert solver._process is None


@pytest.mark.slow  # a Python process of its own
def test_an_answer_tagged_with_an_earlier_instance_is_not_taken_for_a_later_one(tmp_path):
    """The first call answers and leaves a thread that sends forged zeros tagged with the
    first instance's number once the second instance has been handed over: they are not the
    second instance's answer."""
    go, sent = tmp_path / "go", tmp_path / "sent"
    body = textwrap.dedent(f"""\
        import threading
        import numpy as np
        from multiprocessing.connection import Connection
        from convex_attention.bench.isolation import _pack
        number = sys._getframe(1).f_locals.get("number")
        zeros = [np.zeros((2,) + tuple(h.shapes[b])) for _, b in h.edges]

        def forge():
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            Connection(int(sys.argv[2]), readable=False).send_bytes(_pack({{"status": "duals", "instance": number}},
                                                                          zeros))
            open({str(sent)!r}, "w").close()

        if not os.path.exists({str(go)!r}) and not hasattr(sys, "forger_started"):
            sys.forger_started = True
            threading.Thread(target=forge, daemon=True).start()
        else:
            open({str(go)!r}, "w").close()
            while not os.path.exists({str(sent)!r}):
                time.sleep(0.05)
        return ca.solve(scores, h, 'exact', temperature=temps).duals""")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        first = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
        second = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
    np.testing.assert_array_equal(first[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())
    assert isinstance(second, SolverFailed) and "not its answer to this instance (unasked)" in str(second), second


def _on_the_first_call_only(tmp_path, code: str) -> str:
    """Lines of a solver's body that run on its first call only (of any of its processes: a
    marker file remembers), then its other lines."""
    marker = tmp_path / "done-once"
    return (f"if not os.path.exists({str(marker)!r}):\n    open({str(marker)!r}, 'w').close()\n"
            + textwrap.indent(code, "    ") + "\n")


@pytest.mark.slow  # two Python processes
def test_a_child_that_ends_after_its_answer_is_replaced_for_the_next_instance(tmp_path):
    """The solver answers and ends its process from a thread a moment later: no instance was
    asked of it, and a fresh one serves the next."""
    # the timer starts once the answer is computed: started before, it ended a child whose first solve took
    # longer than 0.2 s (Python 3.13 and torch 2.15 in a loaded run) before it answered
    body = ("duals = ca.solve(scores, h, 'exact', temperature=temps).duals\n"
            + _on_the_first_call_only(tmp_path, "import threading\nthreading.Timer(0.2, os._exit, (0,)).start()")
            + "return duals")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        solver.solve(SCORES, H, TEMPS)
        first = solver._process
        assert first.wait(60) == 0
        np.testing.assert_array_equal(solver.solve(SCORES, H, TEMPS)[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())
        assert solver._process is not first


@pytest.mark.slow  # two Python processes; 5 s waiting to see whether the first one ends
def test_a_child_that_closed_its_end_of_the_pipe_is_stopped(tmp_path):
    """The solver swaps the pipe it is given instances on for one nobody writes to, and
    answers: handing it the next instance fails (a broken pipe), the child is stopped, and a
    fresh one serves the instance after."""
    body = (_on_the_first_call_only(tmp_path, "read, sys.write_end_kept_open = os.pipe()\n"
                                               "os.dup2(read, int(sys.argv[1]))")
            + "return ca.solve(scores, h, 'exact', temperature=temps).duals")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        solver.solve(SCORES, H, TEMPS)
        child = solver._process
        err = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
        assert isinstance(err, SolverFailed) and "before it was given the instance" in str(err), err
        assert solver._process is None and child.poll() is not None
        np.testing.assert_array_equal(solver.solve(SCORES, H, TEMPS)[0], _exact_duals(SCORES, H, TEMPS)[0].numpy())


@pytest.mark.slow  # two Python processes
def test_a_solver_that_cannot_be_imported_again_fails_its_instance(tmp_path):
    """Its process ended with the first instance; the fresh one's import fails: a failure of
    the instance (SolverFailed), not a usage error."""
    marker = tmp_path / "imported-once"
    path = tmp_path / "once.py"
    path.write_text(f"import os\nif os.path.exists({str(marker)!r}):\n    raise RuntimeError('not twice')\n"
                    f"open({str(marker)!r}, 'w').close()\n\ndef f(scores, h, temps):\n    os._exit(3)\n")
    with IsolatedSolver(f"{path}:f", timeout=60) as solver:
        with pytest.raises(SolverFailed, match="exit status 3"):
            solver.solve(SCORES, H, TEMPS)
        with pytest.raises(SolverFailed, match="could not be imported again: .*raised RuntimeError: not twice"):
            solver.solve(SCORES, H, TEMPS)


@pytest.mark.slow  # a Python process of its own
def test_a_message_just_larger_than_the_instances_duals_can_take_is_not_read(tmp_path):
    """What a message may take: 1 MiB for its header, 8 bytes a value and 4 KiB an array of
    the archive (the instance's duals: 8 values in one array).  One byte more is refused
    unread (the 8 MiB of the test above left a bound 100 times too large unnoticed)."""
    limit = (1 << 20) + 8 * 8 + 4096
    body = (f"from multiprocessing.connection import Connection\n"
            f"Connection(int(sys.argv[2]), readable=False).send_bytes(b'x' * {limit + 1})\ntime.sleep(600)")
    with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
        err = _returns_within(solver, lambda: solver.solve(SCORES, H, TEMPS))
    assert isinstance(err, SolverFailed) and f"sent more than {limit} bytes; it was stopped" in str(err), err


# ---------------------------------------------------------------- review ca_rev73

@pytest.mark.slow  # a Python process of its own
def test_rev73_a_crashed_solver_is_an_error_row_even_where_the_reference_failed(tmp_path, monkeypatch):
    """docs/results_format.md: whatever the solver does becomes its instance's <name>.run row with
    status error and the reason; an instance whose reference also failed must keep that row."""
    from convex_attention.bench import verify

    def reference_fails(*args, **kwargs):
        raise RuntimeError("the CVXPY reference failed (simulated)")

    monkeypatch.setattr(verify, "get_layer", reference_fails)
    with IsolatedSolver(_solver(tmp_path, "os._exit(3)"), timeout=60) as solver:
        results = verify.verify_instances(list(random_instances(1, seed=0, quick=True)), dual_solver=solver,
                                          progress=False, backends=[])
    runs = [r for r in results if r.check == "f.run"]
    assert runs and runs[0].status == "error" and "exit status 3" in runs[0].message, \
        [(r.check, r.status, r.message) for r in results if r.check.startswith("f.")]


@pytest.mark.slow  # two Python processes
def test_rev73_what_a_child_that_ended_after_its_answer_started_in_its_group_is_stopped(tmp_path):
    """A child is stopped with its process group; one that ends on its own after answering is
    reaped by the next solve() (poll) before its group is killed, so what it started there
    (here a sleep) outlives the verifier's close().  The child ends 2 s into its first call:
    after its answer (0.2 s let it end before answering, now and then, under CI's load)."""
    pid_file = tmp_path / "pid"
    code = (f"import subprocess, threading\np = subprocess.Popen(['sleep', '60'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\nthreading.Timer(2.0, os._exit, (0,)).start()")
    body = _on_the_first_call_only(tmp_path, code) + "return ca.solve(scores, h, 'exact', temperature=temps).duals"
    pid = None
    try:
        with IsolatedSolver(_solver(tmp_path, body), timeout=60) as solver:
            solver.solve(SCORES, H, TEMPS)
            pid = int(pid_file.read_text())
            child, deadline = solver._process.pid, time.monotonic() + 60
            # ended, not reaped, as solve() finds it: waitable, not merely "Z" in /proc (a leader
            # whose thread called os._exit shows Z while that thread is still ending; solve() then
            # handed this child the instance, 1 run in 10 of the two tests together)
            while time.monotonic() < deadline and os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) \
                    is None:
                time.sleep(0.05)
            solver.solve(SCORES, H, TEMPS)  # a fresh child
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if _state(pid) == "Z":
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"process {pid}, started in the ended child's group, is still running after close()")
    except FileNotFoundError:
        pass  # gone (reaped): stopped
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _state(pid: int) -> str:
    """The state letter of process ``pid`` (``Z``: ended, not reaped); FileNotFoundError once it is gone."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# ---- ca_rev217 (hostile review of 1ff9b14; its strict xfails now pass)


def test_ca_rev217_returned_duals_reads_a_real_tensor_with_the_negative_bit():
    """Run: a solver that forms its duals as the imaginary part of a conjugated complex tensor
    (``z.conj().imag``: a real float64 tensor of the right shape, a lazy negation view) returns them.
    Expected: read as any real floating tensor (the values, negated), so a correct solver passes.
    Observed: RuntimeError "Can't call numpy() on Tensor that has negative bit set": the instance
    fails as "returned a value that raised RuntimeError ... when read"."""
    values = torch.arange(8, dtype=torch.float64).reshape(2, 2, 2)
    duals = torch.complex(torch.zeros_like(values), values).conj().imag
    assert duals.dtype == torch.float64 and duals.is_neg()
    got = returned_duals([duals], H, 2)
    np.testing.assert_array_equal(got[0], -values.numpy())


# ---- ca_rev248 (hostile review of bench.isolation)


def _compressed_archive(values: int) -> bytes:
    """An archive of one compressed member ``d0.npy`` declaring ``values`` float64 zeros (a few
    hundred bytes for 80 MB: what a solver writing to its pipe itself could send)."""
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": (values,)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_BZIP2) as archive:
        with archive.open("d0.npy", "w", force_zip64=True) as member:
            member.write(head.getvalue())
            for _ in range(values // (1 << 20)):
                member.write(bytes(8 << 20))
            member.write(bytes(8 * (values % (1 << 20))))
    return buf.getvalue()


def test_ca_rev248_a_compressed_archive_is_refused_before_it_is_inflated():
    """Run: the child's answer is an archive whose member is compressed: bzip2 of 10**7 float64
    zeros (80 MB, a few hundred bytes sent), and np.savez_compressed of right duals.
    Expected: refused without inflating it, as no child of this module compresses.
    Observed: numpy inflated every declared byte after the deadline, outside the size limit:
    1.4 kB declaring 1.6 GB took the verifier 10.8 s at --timeout 1 and 3.2 GB of memory."""
    import tracemalloc

    bomb = _compressed_archive(10 ** 7)
    assert len(bomb) < 4096
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="compressed"):
            _read_duals(bomb, [(2, 2, 2)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # 80 MB when inflated
    buf = io.BytesIO()
    np.savez_compressed(buf, d0=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="compressed"):
        _read_duals(buf.getvalue(), [(2, 2, 2)])
    _read_duals(_unpack(_pack({"status": "ok"}, [np.zeros((2, 2, 2))]))[1], [(2, 2, 2)])  # stored: read


@pytest.mark.slow  # a Python process of its own
def test_ca_rev248_a_solver_that_sends_a_compressed_answer_itself_fails_and_is_stopped(tmp_path):
    """Run: the solver writes a well-formed answer tagged with its instance to its pipe, the
    archive a bzip2 member declaring 10**7 float64 values, and sleeps.
    Expected: the instance fails at once, the child stopped, nothing inflated in the verifier.
    Observed: the verifier inflated all of it (see the test above) before the shape check."""
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_compressed_archive(10 ** 7))
    _a_forged_answer_is_refused(tmp_path,
                                f'_pack({{"status": "duals", "instance": number}}) + open({str(bomb)!r}, "rb").read()',
                                r"sent unreadable duals \(.*compressed.*\); it was stopped")


def test_ca_rev248_a_deadline_without_end_waits_instead_of_overflowing():
    """Run: IsolatedSolver(spec, timeout=float("inf")) (the API accepts any positive number; the
    CLI caps --timeout at a day): its waits get the deadline inf.
    Expected: a wait that never runs late.  Observed: select() raised OverflowError ("cannot
    convert float infinity to integer"; 1e9 s: "timeout is too large") out of start(), a
    traceback, and the child it had started was left running."""
    import selectors

    from convex_attention.bench.isolation import _wait_for

    read, write = os.pipe()
    try:
        os.write(write, b"x")
        for deadline in (float("inf"), time.monotonic() + 1e9, time.monotonic() + 1e300):
            _wait_for(read, selectors.EVENT_READ, deadline)  # ready: returns
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.slow  # a Python process
@pytest.mark.parametrize("tag", ["float(number)", "bool(number)"])
def test_an_answer_tagged_with_a_number_that_is_not_the_int_sent_is_not_taken(tmp_path, tag):
    """ca_rev248's note: ``1.0`` and ``true`` equal the tag 1; the solver's own exact duals, forged under
    such a tag (``false`` for the first instance, number 0), are refused all the same."""
    _a_forged_answer_is_refused(tmp_path, f'_pack({{"status": "duals", "instance": {tag}}}, duals)',
                                r"not its answer to this instance \(unasked\)",
                                setup="duals = [d.double().numpy() for d in ca.solve(scores, h, 'exact', "
                                      "temperature=temps).duals]")
