"""A SIGTERM whose raise is swallowed is raised again (compress.signals).

Python runs the SIGTERM handler wherever the main thread is, and a weakref callback or a
``__del__`` swallows what it raises ("Exception ignored in: <function WeakValueDictionary...remove>"
... "compress.signals.Terminated: 143" in a benchmark log; the run then went on). The handler also
records the signal; the safe points (phase boundaries, progress events, training steps and
evaluation batches) and the end of the ``cleanup_on_signals`` block raise it again.

Every test sends SIGTERM only after checking that slimforge's handler is installed, so a broken
install fails the test instead of killing pytest.
"""

from __future__ import annotations

import os
import signal
import sys
import weakref

import pytest
import torch
from torch import nn

from compress import compress
from compress import signals
from compress.phases import phase
from compress.signals import Terminated, cleanup_on_signals, raise_if_terminated
from compress.testing import TinyConvNet
from compress.training.loop import FitPlan, evaluate, fit

QUICK = {"progress": False, "latency_repeats": 3, "latency_warmup": 1, "memory": False, "mobile": False,
         "allow_slower": True}


@pytest.fixture(autouse=True)
def _sigterm_default_around_each_test():
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM is not at its default here; slimforge would not install its handler")
    yield
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "the SIGTERM handler was not restored"
    assert not signals._received.is_set(), "the record of a SIGTERM leaked out of the test"


@pytest.fixture()
def swallowed(monkeypatch):
    """The exceptions CPython swallowed ("Exception ignored in ..."), as ``sys.unraisablehook`` gets them."""
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    return seen


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class _SigtermOnDel:
    def __del__(self):
        _sigterm_self()


def _send_sigterm_where_it_is_swallowed(how: str, swallowed: list[BaseException]) -> None:
    """Deliver SIGTERM inside a ``__del__`` or a weakref callback, and check CPython swallowed the raise."""
    assert signal.getsignal(signal.SIGTERM) is signals._raise_terminated, "slimforge's handler is not installed"
    before = len(swallowed)
    if how == "__del__":
        obj = _SigtermOnDel()
        del obj
    else:
        class Target:
            pass

        target = Target()
        ref = weakref.ref(target, lambda _ref: _sigterm_self())
        del target
        assert ref() is None
    got = swallowed[before:]
    assert len(got) == 1 and isinstance(got[0], Terminated), f"the raise was not swallowed: {got!r}"


# ------------------------------------------------------------------ (a) a swallowed raise comes back


@pytest.mark.parametrize("how", ["__del__", "weakref callback"])
def test_a_sigterm_swallowed_in_a_del_or_weakref_callback_is_raised_at_the_next_safe_point(how, swallowed):
    reached = []
    with pytest.raises(Terminated) as exc:
        with cleanup_on_signals():
            _send_sigterm_where_it_is_swallowed(how, swallowed)
            reached.append("after the swallowed raise")  # the run went on: the defect's symptom
            raise_if_terminated()
            reached.append("past the safe point")
    assert reached == ["after the swallowed raise"]
    assert exc.value.code == 143 and exc.value.exit_code == 143


def test_a_safe_point_whose_raise_is_swallowed_in_turn_is_repeated_by_the_next(swallowed):
    class ChecksOnDel:
        def __del__(self):
            raise_if_terminated()

    with pytest.raises(Terminated):
        with cleanup_on_signals():
            _send_sigterm_where_it_is_swallowed("__del__", swallowed)
            obj = ChecksOnDel()
            del obj  # this check's raise is swallowed too
            assert len(swallowed) == 2 and isinstance(swallowed[1], Terminated)
            raise_if_terminated()
            pytest.fail("the second safe point did not raise")


def test_phase_boundaries_are_safe_points(swallowed):
    ran = []
    with pytest.raises(Terminated):  # at the end of the phase in which the signal was swallowed
        with cleanup_on_signals():
            with phase("export", limits={}):
                _send_sigterm_where_it_is_swallowed("__del__", swallowed)
                ran.append("export body")
            ran.append("after export")
    assert ran == ["export body"]

    started = []
    with pytest.raises(Terminated):  # at the start of the next phase
        with cleanup_on_signals():
            _send_sigterm_where_it_is_swallowed("__del__", swallowed)
            with phase("validate", limits={}, progress=lambda name, *a: started.append(name)):
                started.append("validate body")
    assert started == []


def test_training_steps_and_evaluation_batches_are_safe_points(swallowed):
    net = nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(6)]
    steps = []

    def step(batch):
        steps.append(len(steps))
        if len(steps) == 2:
            _send_sigterm_where_it_is_swallowed("__del__", swallowed)
        x, y = batch
        return nn.functional.cross_entropy(net(x), y)

    plan = FitPlan(modules=[net], optimizer=torch.optim.SGD(net.parameters(), lr=0.1), step=step, epochs=3)
    with pytest.raises(Terminated):
        with cleanup_on_signals():
            fit(plan, batches)
    assert steps == [0, 1], "training went on after the swallowed SIGTERM"

    seen = []

    def loader():
        for i, b in enumerate(batches):
            seen.append(i)
            if i == 1:
                _send_sigterm_where_it_is_swallowed("__del__", swallowed)
            yield b

    with pytest.raises(Terminated):
        with cleanup_on_signals():
            evaluate(net, loader())
    assert seen == [0, 1], "evaluation went on past the batch the SIGTERM came in"


def test_a_swallowed_sigterm_no_safe_point_saw_is_raised_when_the_block_ends(swallowed):
    done = []
    with pytest.raises(Terminated):
        with cleanup_on_signals():
            _send_sigterm_where_it_is_swallowed("__del__", swallowed)
            done.append("block finished")
    assert done == ["block finished"]

    with pytest.raises(Terminated) as exc:  # another exception escaping the block: exit as terminated
        with cleanup_on_signals():
            _send_sigterm_where_it_is_swallowed("__del__", swallowed)
            raise ValueError("a failure after the swallowed SIGTERM")
    assert isinstance(exc.value.__cause__, ValueError)


def test_cleanup_that_reaches_a_safe_point_while_terminated_unwinds_is_not_cut_short():
    cleaned = []
    with pytest.raises(Terminated):
        with cleanup_on_signals():
            assert signal.getsignal(signal.SIGTERM) is signals._raise_terminated
            try:
                _sigterm_self()  # not swallowed: raises here
                pytest.fail("SIGTERM did not raise")
            finally:
                raise_if_terminated()  # e.g. a progress event in a finally block
                cleaned.append("cleanup finished")
    assert cleaned == ["cleanup finished"]


# ------------------------------------------------------------------ (b) nothing leaks into the next run


@pytest.mark.parametrize("how", ["raised at once", "swallowed"])
def test_the_record_of_a_handled_sigterm_does_not_reach_a_later_block(how, swallowed):
    with pytest.raises(Terminated):
        with cleanup_on_signals():
            if how == "raised at once":
                assert signal.getsignal(signal.SIGTERM) is signals._raise_terminated
                _sigterm_self()
            else:
                _send_sigterm_where_it_is_swallowed("__del__", swallowed)
                raise_if_terminated()
    raise_if_terminated()  # outside any block: no-op
    finished = []
    with cleanup_on_signals():
        assert signal.getsignal(signal.SIGTERM) is signals._raise_terminated
        raise_if_terminated()
        with phase("export", limits={}):
            pass
        finished.append("fresh block")
    assert finished == ["fresh block"]


def test_a_nested_block_leaves_the_record_to_the_block_that_installed_the_handler(swallowed):
    with pytest.raises(Terminated):
        with cleanup_on_signals():  # as slimforge's CLI, around compress()'s own block
            with pytest.raises(Terminated):
                with cleanup_on_signals():
                    _send_sigterm_where_it_is_swallowed("__del__", swallowed)
                    raise_if_terminated()
            # the inner block ended with the SIGTERM handled by its caller, yet the process was told
            # to stop: the installing block still knows
            assert signals._received.is_set()
            raise_if_terminated()


# ------------------------------------------------------------------ (c) end to end


def test_compress_ends_in_terminated_when_sigterm_is_swallowed_inside_a_phase(digits_task, swallowed, tmp_path):
    events = []

    def progress(name, done, total, info):
        events.append((name, done, total))
        if (name, done, total) == ("measure_teacher", 1, 3):
            _send_sigterm_where_it_is_swallowed("__del__", swallowed)

    with pytest.raises(Terminated):
        compress(TinyConvNet(), "macs=0.5x", data=digits_task, strategy="gp-prune",
                 config={"epochs": 0, "bisection_steps": 2, "calib_samples": 32}, **{**QUICK, "progress": progress})
    assert ("measure_teacher", 1, 3) in events
    assert events[-1] == ("measure_teacher", 1, 3), f"the run went on after the swallowed SIGTERM: {events[-3:]}"
    assert not any(name == "strategy" for name, *_ in events)
    assert swallowed and all(isinstance(e, Terminated) for e in swallowed)
