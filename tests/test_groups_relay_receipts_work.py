"""The relay's receipt store, :class:`pairkit.pairing.groups.RelayReceipts`: the work of
``add`` and its behaviour over long runs (session 20).

``add`` rebuilt its tuple and scanned every receipt held, several times, at each call: filling a
store of n receipts one by one examined about n**2 receipts.  The work is counted here as the
receipts' fields read (a receipt examined is a receipt whose fields are read), never timed.
The behaviour is held to the docstring's words by a plain model of them
(:func:`model_add`), over the two controllers' 1,024 receipts each and over any sequence
Hypothesis finds, an older store added to included.  test_groups_receipts_core.py holds the
store's first tests, unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from pairkit.pairing import groups
from pairkit.pairing.groups import MAX_QUEUE, GroupReceipt, RelayReceipts

A, B = b"\x0a" * 16, b"\x0b" * 16
MEMBERS = (b"\x01" * 16, b"\x02" * 16)


class Counted(GroupReceipt):
    """A receipt that counts every read of the fields that place it in the store."""

    reads: ClassVar[list[int]] = [0]

    def __getattribute__(self, name: str) -> Any:
        if name in ("controller", "member", "group", "epoch"):
            Counted.reads[0] += 1
        return super().__getattribute__(name)


def receipt(controller: bytes, member: bytes, group: str, epoch: int = 1,
            cls: type[GroupReceipt] = GroupReceipt) -> GroupReceipt:
    return cls(controller=controller, member=member, group=group, epoch=epoch,
               envelope=bytes([epoch % 256]) * 32, ok=True, signature=b"\x05" * 64)


def model_add(held: tuple[GroupReceipt, ...], new: GroupReceipt) -> tuple[GroupReceipt, ...]:
    """The docstring's words as a model: at most one receipt per controller, member and group,
    the newest epoch (an older one changes nothing); at most MAX_QUEUE per controller, its
    oldest going first; the new receipt last."""
    limit = groups.MAX_QUEUE
    def slot(r: GroupReceipt) -> tuple[bytes, bytes, str]:
        return (r.controller, r.member, r.group)

    if any(slot(r) == slot(new) and r.epoch > new.epoch for r in held):
        return held
    kept = [r for r in held if slot(r) != slot(new)]
    theirs = [i for i, r in enumerate(kept) if r.controller == new.controller]
    gone = set(theirs[:max(0, len(theirs) - limit + 1)])
    return (*(r for i, r in enumerate(kept) if i not in gone), new)


def test_filling_the_store_examines_each_receipt_a_bounded_number_of_times() -> None:
    """1,024 receipts of one controller, then 1,024 of another, then 1,024 more of the first
    (each pushing out its oldest): every add reads the fields of a bounded number of receipts,
    whatever the store holds (before: about 7 reads per receipt held, 44 million in all)."""
    first = [receipt(A, MEMBERS[0], f"a{i}", cls=Counted) for i in range(MAX_QUEUE)]
    second = [receipt(B, MEMBERS[0], f"b{i}", cls=Counted) for i in range(MAX_QUEUE)]
    third = [receipt(A, MEMBERS[1], f"a{i}", cls=Counted) for i in range(MAX_QUEUE)]
    store = RelayReceipts()
    Counted.reads[0] = 0
    for r in (*first, *second, *third):
        store = store.add(r)
    adds = 3 * MAX_QUEUE
    assert Counted.reads[0] <= 16 * adds, f"{Counted.reads[0]} reads for {adds} adds"
    assert store.receipts == (*second, *third)


def test_two_controllers_1024_receipts_each_keep_the_docstrings_behaviour() -> None:
    """Each controller's MAX_QUEUE receipts are all kept, in order; one more of A pushes out
    A's oldest only; a newer epoch replaces its slot's receipt and goes last; an older one
    changes nothing."""
    a = [receipt(A, MEMBERS[0], f"g{i}") for i in range(MAX_QUEUE)]
    b = [receipt(B, MEMBERS[0], f"g{i}") for i in range(MAX_QUEUE)]
    store = RelayReceipts()
    for x, y in zip(a, b, strict=True):
        store = store.add(x).add(y)
    assert len(store) == 2 * MAX_QUEUE
    assert [r for r in store.receipts if r.controller == A] == a
    assert [r for r in store.receipts if r.controller == B] == b
    extra = receipt(A, MEMBERS[1], "g0")
    store = store.add(extra)
    assert [r for r in store.receipts if r.controller == A] == [*a[1:], extra]
    assert [r for r in store.receipts if r.controller == B] == b
    newer = receipt(B, MEMBERS[0], "g5", epoch=2)
    store = store.add(newer)
    assert store.receipts[-1] == newer and b[5] not in store.receipts
    assert len([r for r in store.receipts if r.controller == B]) == MAX_QUEUE
    assert store.add(receipt(B, MEMBERS[0], "g5", epoch=1)) == store
    assert store.find(B, [newer.envelope]) == (newer,)


#: one step: (which store so far to add to, counted from the newest; controller; member;
#: group; epoch)
STEPS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from([A, B]), st.sampled_from(MEMBERS),
              st.sampled_from(["g0", "g1", "g2"]), st.integers(1, 3)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(STEPS, st.integers(0, 4))
def test_any_sequence_of_adds_is_the_models(steps: list[Any], held: int) -> None:
    """Any sequence, with ``held`` receipts in the store as built (as ``from_plain`` builds
    it), each add made to the newest store or to an older one (which must not see what was
    added to the newer ones, nor they what is added to it), is what the model gives; with
    MAX_QUEUE at 3, so that a controller's oldest go."""
    with mock.patch.object(groups, "MAX_QUEUE", 3):
        check_steps(steps, held)


def check_steps(steps: list[Any], held: int) -> None:
    start = tuple(receipt(A, MEMBERS[1], f"h{i}") for i in range(held))
    stores = [(RelayReceipts(start), start)]
    for back, controller, member, group, epoch in steps:
        store, expected = stores[max(0, len(stores) - 1 - back)]
        new = receipt(controller, member, group, epoch)
        stores.append((store.add(new), model_add(expected, new)))
        for made, wanted in stores:
            assert made.receipts == wanted
            assert len(made) == len(wanted)
            assert made == RelayReceipts(wanted)
            assert RelayReceipts.from_plain(made.to_plain()) == made


def test_a_store_read_after_many_replacements_is_still_the_models() -> None:
    """300 newer epochs of one slot among a few others: the store read midway (where it drops
    the receipts gone from what it keeps), then added to, and an older store added to, are
    each what the model gives."""
    store, expected = RelayReceipts(), ()
    older = None
    for epoch in range(1, 301):
        for new in (receipt(A, MEMBERS[0], "g0", epoch), receipt(B, MEMBERS[epoch % 2], "g1")):
            store, expected = store.add(new), model_add(expected, new)
        if epoch == 150:
            assert store.receipts == expected
            older = (store, expected)
    assert store.receipts == expected and len(store) == len(expected) == 3
    assert older is not None
    new = receipt(A, MEMBERS[1], "g2")
    assert older[0].add(new).receipts == model_add(older[1], new)
    assert store.add(new).receipts == model_add(expected, new)
