"""The library's host (runtime/api.py, ``Host.accept`` and ``Host.close``) at the edges of its
life: an ``accept`` called while ``close`` runs, and a guest that pairs after the application
stopped waiting (attack review atk14a).

Since session 14 the host serves links in a task of its own (``accept_loop`` behind
``_WhileWanted``), started as it opens and again by an ``accept`` that finds none.  ``close``
cancels that task, then closes what the host holds, over several awaits.  An application whose
loop calls ``accept`` again when one fails (``LinkClosedError`` is a ``PairingError``, as a
guest's failures were before session 14) does so inside that window: the first ``accept`` is
woken by the cancelled task before ``close`` is.

Played over real links: the in-process loopback and bumble virtual controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from pathlib import Path
from typing import Any

import pytest

import pairkit
from pairkit.delegate import Grant, Role
from pairkit.keystore import Argon2Params
from pairkit.pairing.errors import ConfigError, PairingError, PairingTimeout
from tests.ble_harness import World, world  # noqa: F401


def device(tmp_path: Path, name: str) -> pairkit.Device:
    return pairkit.Device.create(
        tmp_path / f"{name}.keystore", "a passphrase", name=name, kdf=Argon2Params.cheapest()
    )


def _servers() -> list[asyncio.Task[Any]]:
    """The links' servers running now (the host's ``accept_loop`` tasks)."""
    return [t for t in asyncio.all_tasks()
            if not t.done() and getattr(t.get_coro(), "__name__", "") == "accept_loop"]


@pytest.mark.parametrize("transport", ["loopback", "bumble"])
async def test_an_accept_called_while_the_host_closes_leaves_nothing_running(
    tmp_path: Path, transport: str, world: World  # noqa: F811
) -> None:
    """The application waits in ``accept``; another task closes the host; the application's
    loop, told ``LinkClosedError``, calls ``accept`` again at once (before ``close`` is done).
    Once ``close`` returned, that ``accept`` must end (it is a closed host) and no links' server
    may be left running, nor an error left for the event loop to print.

    On main the second ``accept`` starts a new ``accept_loop`` (``self._serving`` was already
    None, ``_listener`` not yet) with ``_wanted`` set.  Over bumble, whose transport object,
    given by the application, is its own listener and is not the host's to close, that server
    and that ``accept`` wait on until the radio is closed: ``accept`` never returns on the
    closed host.  Over the loopback the listener is closed a moment later and the stray server
    dies with ``LinkClosedError``, which nobody retrieves (asyncio logs "Task exception was never
    retrieved" with a traceback).  Fixed (session 14): ``close`` marks the host closing first,
    and an ``accept`` on a closing host ends with ``LinkClosedError``."""
    paul = device(tmp_path, "Paul")
    spec: Any = "loopback:lifecycle" if transport == "loopback" else await world.device(
        prefer_l2cap=False)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    calls: list[str] = []

    host = paul.host(spec, methods=["pin"], delegate=pairkit.Agree())
    await host.__aenter__()

    async def application(host: pairkit.Host) -> None:
        while True:
            try:
                await host.accept()
            except ConfigError:
                calls.append("not open")
                return
            except PairingError as exc:  # a guest's failure: wait for the next
                calls.append(type(exc).__name__)
                if len(calls) > 1:  # at once the first time, then no busy loop
                    await asyncio.sleep(0.05)
                continue

    app = asyncio.ensure_future(application(host))
    try:
        await asyncio.sleep(0.2)
        await host.close()
        servers = _servers()  # right as close() returned
        # The application's accept ends with the host (an error, not a wait without end).
        done, _ = await asyncio.wait({app}, timeout=5)
        await asyncio.sleep(0.5)  # a stray server, if any, fails meanwhile
        del host
        gc.collect()  # an error nobody retrieved is told to the loop as its task goes
        assert app in done, f"accept() still waits on the closed host (calls: {calls})"
        assert servers == [], "a links' server still runs after close()"
        assert unhandled == [], f"left for the event loop: {unhandled[0].get('message')}"
    finally:
        app.cancel()
        with contextlib.suppress(BaseException):
            await app
        for task in _servers():
            task.cancel()
        loop.set_exception_handler(None)


class AskedAndWaits(pairkit.Agree):
    """The owner's dialog: asked to let a stranger join, it answers (yes) only when told."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def allow_join(self, q: Any) -> Any:
        self.asked.set()
        await self.answer.wait()
        return await super().allow_join(q)


@pytest.mark.parametrize("stop", ["cancel", "timeout"])
async def test_a_guest_the_application_stopped_waiting_for_is_not_left_paired(
    tmp_path: Path, stop: str
) -> None:
    """The application waits in ``accept``; George joins by PIN and the owner is asked whether
    he may; the application stops waiting (``accept`` cancelled: its user pressed "stop"; or
    its timeout runs out), then the question still open is answered.  Before session 14 the
    cancel ended George's pairing (``accept`` ran it in its own task).  On main the links'
    server goes on with it: George pairs, is stored in Paul's keystore with his grant
    (``Device.peers()`` lists him, and he can ``resume`` later with nobody asked), and his
    session, never returned by any ``accept``, is closed with the host: the application never
    sees the guest it now trusts.

    Fixed (session 14): an ``accept`` that ends without a guest while no other waits stops
    the pairings under way (the links' server is cancelled; the next ``accept`` starts it
    again).  Its timeout does as a cancel does, as before session 14: ``accept(timeout=...)``
    bounds the wait for a guest, and a guest not paired by then is not paired behind the
    application's back.  The next ``accept`` serves George's next try."""
    paul, george = device(tmp_path, "Paul"), device(tmp_path, "George")
    owner = AskedAndWaits()
    async with paul.host("loopback:stopped", methods=["pin"], delegate=owner) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=5 if stop == "timeout" else None))
        joining = asyncio.ensure_future(george.join("loopback:stopped", pin=host.pin))
        try:
            await asyncio.wait_for(owner.asked.wait(), 5)
            if stop == "cancel":
                accepting.cancel()  # the application stops waiting for a guest
            with contextlib.suppress(asyncio.CancelledError, PairingTimeout):
                await accepting
            owner.answer.set()  # the dialog left open is answered
            with contextlib.suppress(PairingError):
                async with await asyncio.wait_for(joining, 15):
                    pass
            assert [p.name for p in paul.peers()] == [], (
                "paired and stored, never returned by accept()")
            # The next accept() serves links again: George's next try pairs.
            accepting = asyncio.ensure_future(host.accept(timeout=15))
            joining = asyncio.ensure_future(george.join("loopback:stopped", pin=host.pin))
            async with await accepting as on_paul, await joining:
                assert on_paul.peer.name == "George"
        finally:
            for task in (accepting, joining):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


class Dialog(pairkit.Agree):
    """An application's one dialog, as one writes it for a host that asks one question at a
    time (the library's before session 14, ``pairkit host``'s Terminal still): each question
    puts its code on the screen, then takes the person's next answer."""

    def __init__(self) -> None:
        super().__init__()
        self.screen = ""
        self.asked: list[str] = []
        self.answers: asyncio.Queue[bool] = asyncio.Queue()

    async def confirm_code(self, q: Any) -> bool:
        self.screen = f"{q.peer_name}: {q.code}"
        self.asked.append(q.code)
        return await self.answers.get()


class Shows(pairkit.Agree):
    """A guest's person: notes the code its screen shows and says yes (it is the one shown)."""

    def __init__(self) -> None:
        super().__init__(confirm_codes=True)
        self.code: str | None = None

    async def confirm_code(self, q: Any) -> bool:
        self.code = q.code
        return True


async def _person(dialog: Dialog, george: Shows) -> None:
    """Paul's person: once the screen has settled on a question, compares its code with the
    one George's screen shows and answers, once per question on the screen."""
    answered = ""
    while True:
        await _until(lambda done=answered: george.code is not None  # type: ignore[misc]
                     and dialog.screen not in ("", done))
        screen = dialog.screen
        await asyncio.sleep(0.3)  # a person's look, not instant: the screen settles
        if dialog.screen != screen:
            continue
        dialog.answers.put_nowait(george.code is not None and george.code in screen)
        answered = screen


async def _until(condition: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_owners_yes_to_the_code_on_the_screen_goes_to_that_guest_only(
    tmp_path: Path,
) -> None:
    """Mallory, a stranger who calls herself George, joins Paul's library host by compare; just
    after, the real George does.  Paul's application shows each question on its one screen and
    takes the person's answers in turn (what a host that asks one question at a time allows).
    Paul's person answers what the screen shows: yes when its code is the one George's own
    screen shows, else no.  A yes must make George's pairing, never Mallory's.

    On main both questions are out at once (the library host serves every link at once, and a
    compare host shows up to five codes at once, docs/security.md), and nothing keeps the second
    from the screen while the first waits: the screen shows "George: <George's code>", and the
    person's yes to it answers Mallory's question, asked first.  Mallory is paired and stored
    as an authenticated peer, whose code no person ever saw.  ``pairkit host`` asks one
    question at a time (README, "Prompts and waits": "an answer always goes to the question on
    the screen"); the library says nothing of questions at once, and before session 14 asked
    one at a time too.  Fixed (session 14): the library host asks its delegate one question
    at a time, as ``pairkit host`` does."""
    paul = device(tmp_path, "Paul")
    mallory, george = device(tmp_path, "George"), device(tmp_path, "George-really")
    dialog = Dialog()
    seen = Shows()
    async with paul.host("loopback:dialog", methods=["compare"], delegate=dialog) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        by_mallory = asyncio.ensure_future(mallory.join(
            "loopback:dialog", method="compare", delegate=pairkit.Agree(confirm_codes=True)))
        tasks = [accepting, by_mallory]
        try:
            await _until(lambda: len(dialog.asked) == 1)
            by_george = asyncio.ensure_future(george.join(
                "loopback:dialog", method="compare", delegate=seen))
            tasks.append(by_george)
            tasks.append(asyncio.ensure_future(_person(dialog, seen)))
            await asyncio.wait({accepting}, timeout=10)
            mallorys_key = mallory.fingerprint
            assert mallorys_key not in {p.fingerprint for p in paul.peers()}, (
                "Mallory paired by the yes given to George's code")
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


class JoinDialog(pairkit.Agree):
    """The owner's one dialog for join requests, as ``Dialog`` for codes: each puts who asks on
    the screen, then takes the person's next answer."""

    def __init__(self) -> None:
        super().__init__()
        self.screen = ""
        self.asked: list[str] = []
        self.answers: asyncio.Queue[Grant | None] = asyncio.Queue()

    async def allow_join(self, q: Any) -> Grant | None:
        self.screen = f"{q.name} asks to join as {q.wants.name.lower()}"
        self.asked.append(q.name)
        return await self.answers.get()


async def _lets_in(dialog: JoinDialog, name: str) -> None:
    """Paul's person: once the screen has settled on a request, lets ``name`` in as a guest
    and refuses anyone else, once per request on the screen."""
    answered = ""
    while True:
        await _until(lambda done=answered: dialog.screen not in ("", done))  # type: ignore[misc]
        screen = dialog.screen
        await asyncio.sleep(0.3)  # a person's look: the screen settles
        if dialog.screen != screen:
            continue
        yes = screen.startswith(f"{name} asks ")
        dialog.answers.put_nowait(Grant(Role.GUEST, 3600) if yes else None)
        answered = screen


async def test_the_owners_yes_to_the_guest_on_the_screen_lets_that_guest_in_only(
    tmp_path: Path,
) -> None:
    """As the compare test above, for the owner's other question: ``allow_join``, asked before
    the PIN is typed (README: the owner lets a guest in, then the guest types the PIN).
    Mallory, who read the PIN on Paul's screen over his shoulder, asks to join; just after,
    George does.  Paul's person lets George in and refuses Mallory, answering what the screen
    shows.  Were both requests out at once, the screen would show George's, and the person's
    yes to it would answer Mallory's, asked first: she would pair with the PIN she read.  The
    library host asks one question at a time (session 14, fix of atk14a finding 3): Mallory is
    refused, George pairs."""
    paul = device(tmp_path, "Paul")
    mallory, george = device(tmp_path, "Mallory"), device(tmp_path, "George")
    dialog = JoinDialog()
    async with paul.host("loopback:joins", methods=["pin"], delegate=dialog) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        by_mallory = asyncio.ensure_future(mallory.join("loopback:joins", pin=host.pin))
        tasks = [accepting, by_mallory]
        try:
            await _until(lambda: len(dialog.asked) == 1)
            tasks.append(asyncio.ensure_future(george.join("loopback:joins", pin=host.pin)))
            tasks.append(asyncio.ensure_future(_lets_in(dialog, "George")))
            await asyncio.wait({accepting}, timeout=15)
            paired = {p.fingerprint for p in paul.peers()}
            assert mallory.fingerprint not in paired, "Mallory let in by the yes given to George"
            assert george.fingerprint in paired, "George, let in, did not pair"
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def test_a_question_given_up_while_waiting_its_turn_is_never_asked(
    tmp_path: Path,
) -> None:
    """The host's questions wait their turn (one at a time); a guest who goes away while his
    waits ends it there: it is never put to the owner, and the turn goes on to the next.
    Mallory's request is on the screen; Ringo asks, then gives up (his join cancelled, his
    link closed) while his request waits behind hers; Mallory is refused; George asks and the
    owner lets him in.  Were Ringo's request left in the queue, the owner's yes meant for
    George would answer it (a guest gone), and George would wait for an answer that never
    comes."""
    paul = device(tmp_path, "Paul")
    mallory, ringo, george = (device(tmp_path, n) for n in ("Mallory", "Ringo", "George"))
    dialog = JoinDialog()
    async with paul.host("loopback:turns", methods=["pin"], delegate=dialog) as host:
        accepting = asyncio.ensure_future(host.accept(timeout=30))
        by_mallory = asyncio.ensure_future(mallory.join("loopback:turns", pin=host.pin))
        tasks = [accepting, by_mallory]
        try:
            await _until(lambda: dialog.asked == ["Mallory"])
            by_ringo = asyncio.ensure_future(ringo.join("loopback:turns", pin=host.pin))
            tasks.append(by_ringo)
            await asyncio.sleep(0.5)  # Ringo's request reaches the host and waits its turn
            by_ringo.cancel()  # Ringo gives up
            with contextlib.suppress(BaseException):
                await by_ringo
            await asyncio.sleep(0.5)  # the host sees his link close
            dialog.answers.put_nowait(None)  # Mallory refused
            tasks.append(asyncio.ensure_future(george.join("loopback:turns", pin=host.pin)))
            await _until(lambda: len(dialog.asked) == 2)
            dialog.answers.put_nowait(Grant(Role.GUEST, 3600))  # the one on the screen
            async with await accepting as on_paul:
                assert on_paul.peer.name == "George"
            assert dialog.asked == ["Mallory", "George"], "a request given up was still asked"
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
