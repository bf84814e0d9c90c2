"""How DNs decide a message's state: one rule for the DN writer and the send path.

**The last DN received is final.** A message's delivery fields are a function of its DN with
the highest receipt sequence (`delivery_notifications.id`, a database sequence). Writers move
a message only forward (`_ONLY_FORWARD`), so a transaction that commits late never puts an
older DN on top of a newer one. A DN is final when its status is DELIVERED or UNDELIVERED and
its error code is not one the provider sends while it keeps trying (`NON_FINAL_DN_CODES`:
556, "SMS buffered"); a non-final last DN takes a delivered/undelivered message back to
`pending` and leaves any other status (`pending`, `expired`) as it is.

**Which message a DN belongs to.** The one whose ref is its msgid; failing that, the one whose
ref is the msgid cut at one of its last `MAX_SUFFIX_CUTS` `-`/`.` boundaries, the longest such
ref winning (`E2104yMYer2weOB-X46dBlYa79-0` belongs to `E2104yMYer2weOB-X46dBlYa79`, whose
own `-` is a multi-recipient ref's). Never the other way: a DN `X-0` does not belong to a
message `X-0-1`. The candidates of a msgid (`candidate_refs`) are few, so each is one probe
of the unique index on `messages.ref`. A DN matched this way keeps its raw msgid. (Refs of
one provider answer share no prefix with another answer's, so a DN attached to a ref is never
claimed later by a longer one.)

**The race this module closes.** A DN may arrive before the send path has recorded the ref it
names (the provider answers the send, sends the DN, and our UPDATE of the ref has not
committed yet). Both sides take a transaction-scoped advisory lock per ref, sorted so two
writers never deadlock, before they read or write: the send path on each ref it records, the
DN writer on every candidate ref of each msgid (so a DN `X-0` and a send recording `X`
serialise; shared on the cuts, see `dn_batch_locks`). Whichever commits second sees the other's
rows: the DN writer matches the ref, or the send path attaches the waiting DN
(`attach_sql`, run by the database function `record_send_answers`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from app.bulk360.codes import DN_STATUSES, NON_FINAL_DN_CODES, ErrorCategory, message_error_category
from app.vocabulary import MessageStatus

# A msgid is cut at its last few separators only: real ones carry one or two suffixes
# (`-0`, `.0602-0`) after a ref with at most one `-`; a longer run is not worth a lock each.
MAX_SUFFIX_CUTS: Final = 4

_FINAL_STATUSES_SQL = ", ".join(f"'{status}'" for status in DN_STATUSES)  # DELIVERED, UNDELIVERED
_NON_FINAL_CODES_SQL = ", ".join(f"'{code}'" for code in sorted(NON_FINAL_DN_CODES))
_IS_FINAL = (
    f"(upper(d.status) IN ({_FINAL_STATUSES_SQL})"
    f" AND coalesce(d.error_code, '') NOT IN ({_NON_FINAL_CODES_SQL}))"
)

_DELIVERED, _UNDELIVERED, _PENDING = (
    MessageStatus.DELIVERED.value,
    MessageStatus.UNDELIVERED.value,
    MessageStatus.PENDING.value,
)

# The message's delivery fields, from its last DN `d`.
_FROM_LAST_DN = {
    "last_dn_seq": "d.id",
    "delivery_status": "d.status",
    "error_code": "d.error_code",
    "error_description": "d.error_description",
    "status": f"""CASE WHEN NOT {_IS_FINAL} THEN
            CASE WHEN messages.status IN ('{_DELIVERED}', '{_UNDELIVERED}') THEN '{_PENDING}'
                 ELSE messages.status END
        WHEN upper(d.status) = 'DELIVERED' THEN '{_DELIVERED}'
        ELSE '{_UNDELIVERED}' END""",
    # A non-final DN keeps an expired message's final_at (when it expired) with its status.
    "final_at": f"""CASE WHEN {_IS_FINAL} THEN d.received_at
        WHEN messages.status IN ('{_DELIVERED}', '{_UNDELIVERED}') THEN NULL
        ELSE messages.final_at END""",
}
# Never move a message back to an older DN, whatever the commit order.
_ONLY_FORWARD = "(messages.last_dn_seq IS NULL OR messages.last_dn_seq <= d.id)"

# The DN writer's batch (notifications/repository.py): `d` is each matched message's newest
# DN of the batch and `d.n` its count of DNs in the batch. Only the count is added (exact:
# every writer of a ref holds its lock); the delivery fields move forward only. One pass over
# the new rows, none over a message's history.
APPLY_BATCH_SET: Final = (
    "dn_count = messages.dn_count + d.n,\n"
    + "".join(
        f"    {column} = CASE WHEN {_ONLY_FORWARD} THEN {expr} ELSE messages.{column} END,\n"
        for column, expr in _FROM_LAST_DN.items()
    )
    + "    updated_at = CURRENT_TIMESTAMP"
)

# Recompute messages ({ids}: an SQL bigint[]) from their newest DN, counting every DN: after DNs
# were attached.
# DISTINCT ON walks the (message_id, id) index once per message. Fixed text only.
_REFRESH_SQL = (
    "UPDATE messages SET\n"  # noqa: S608
    "    dn_count = (SELECT count(*) FROM delivery_notifications c"
    " WHERE c.message_id = messages.id),\n"
    + "".join(f"    {column} = {expr},\n" for column, expr in _FROM_LAST_DN.items())
    + """    updated_at = CURRENT_TIMESTAMP
FROM (
    SELECT DISTINCT ON (dn.message_id)
           dn.id, dn.message_id, dn.status, dn.error_code, dn.error_description, dn.received_at
    FROM delivery_notifications dn
    WHERE dn.message_id = ANY({ids})
    ORDER BY dn.message_id, dn.id DESC
) AS d
WHERE messages.id = d.message_id
  AND """
    + _ONLY_FORWARD
)

# SQL for "is `ref` a candidate ref of d.msgid" (the same cut as `candidate_refs`): the msgid
# is the ref, or the ref followed by a separator and at most MAX_SUFFIX_CUTS separators in all.
_REST = "substr(d.msgid, length({ref}) + 1)"
_IS_CANDIDATE = (
    "(d.msgid = {ref} OR (substr(d.msgid, length({ref}) + 1, 1) IN ('-', '.') AND "
    f"length({_REST}) - length(translate({_REST}, '-.', '')) <= {MAX_SUFFIX_CUTS}))"
)
# DNs not attached to any message whose msgid starts with `ref` followed by nothing, `-` or
# `.` (and a few others: a superset, cheap to test). In byte order '-' < '.' < '/', so that is
# one range of the partial index ix_delivery_notifications_unmatched_msgid (text_pattern_ops).
_WAITING = "d.message_id IS NULL AND d.msgid ~>=~ {ref} AND d.msgid ~<~ ({ref} || '/')"

# DNs stored before their message's ref was recorded, attached to the longest candidate ref of
# those being recorded ({ids}: message ids, {refs}: their refs; SQL arrays).
_ATTACH_SQL = f"""
WITH pick AS (
    SELECT DISTINCT ON (d.id) d.id, v.id AS message_id
    FROM unnest({{ids}}, {{refs}}) AS v(id, ref)
    JOIN delivery_notifications d ON {_WAITING.format(ref="v.ref")}
    WHERE {_IS_CANDIDATE.format(ref="v.ref")}
    ORDER BY d.id, length(v.ref) DESC
)
UPDATE delivery_notifications d SET message_id = pick.message_id
FROM pick WHERE d.id = pick.id
RETURNING d.message_id
"""  # noqa: S608 - fixed text only


def refresh_sql(ids: str) -> str:
    """The statement recomputing messages `ids` (an SQL bigint[] expression) from their DNs."""
    return _REFRESH_SQL.format(ids=ids)


def attach_sql(ids: str, refs: str) -> str:
    """The statement attaching waiting DNs to messages `ids` with refs `refs` (SQL arrays);
    it returns the message id of each DN attached."""
    return _ATTACH_SQL.format(ids=ids, refs=refs)


def category_of_dn(status: str, error_code: str | None) -> ErrorCategory:
    """A DN's error category: its message's, were this DN its last (a non-final DN leaves the
    message as it was, `pending` in the common case)."""
    final = status.upper() in DN_STATUSES and error_code not in NON_FINAL_DN_CODES
    return message_error_category(status.lower() if final else _PENDING, error_code, None)


def candidate_refs(msgid: str) -> list[str]:
    """The refs a DN with this msgid may belong to, longest (the msgid itself) first."""
    refs = [msgid]
    end = len(msgid)
    while len(refs) <= MAX_SUFFIX_CUTS:
        # From 1: a cut is never the empty ref. rfind, not a loop over the characters: this
        # runs for every DN.
        cut = max(msgid.rfind("-", 1, end), msgid.rfind(".", 1, end))
        if cut < 1:
            break
        refs.append(msgid[:cut])
        end = cut
    return refs


def cuts_sql(msgid: str) -> str:
    """SQL for `candidate_refs(msgid)[1:]` (`msgid`: an SQL expression): the same cuts, longest
    first; an empty array for a msgid without `-` or `.` (tests/notifications pin the two)."""
    series = f"generate_series(length({msgid}), 2, -1) AS p"
    return (
        f"ARRAY(SELECT left({msgid}, p - 1) FROM {series}"  # noqa: S608 - our SQL, never input
        f" WHERE substr({msgid}, p, 1) IN ('-', '.') ORDER BY p DESC LIMIT {MAX_SUFFIX_CUTS})"
    )


def dn_lock_keys(msgid: str) -> tuple[int, ...]:
    """The advisory lock keys a DN with this msgid takes: its msgid's first (exclusive), then
    its cuts' (shared, see `dn_batch_locks`)."""
    if "-" not in msgid and "." not in msgid:  # most msgids have no cut: no scan
        return (lock_key(msgid),)
    return tuple(lock_key(ref) for ref in candidate_refs(msgid))


def dn_batch_locks(keys_per_dn: Iterable[tuple[int, ...]]) -> tuple[list[int], list[bool]]:
    """A DN batch's locks from its DNs' `dn_lock_keys`, in key order, with their modes
    (True: exclusive): exclusive on each msgid, shared on the cuts that are not msgids of
    the batch. Shared, so DNs of different msgids with one cut (`X-0`, `X.0602-0`, `X-1-0` of
    the bench's refs) do not queue behind each other; a send recording `X` (exclusive)
    waits for them all."""
    modes: dict[int, bool] = {}
    cuts: list[int] = []
    for keys in keys_per_dn:
        modes[keys[0]] = True
        cuts.extend(keys[1:])
    for key in cuts:
        modes.setdefault(key, False)
    ordered = sorted(modes)
    return ordered, [modes[key] for key in ordered]


def lock_key(ref: str) -> int:
    """The advisory lock key of a ref (signed 64-bit, as Postgres' bigint)."""
    digest = hashlib.blake2b(ref.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def waiting_dns_exist(ref_sql: str) -> str:
    """An SQL condition, true when a DN stored before the ref `ref_sql` (an SQL expression)
    was recorded may be waiting for it: then attach it (`attach_sql`). Never false when one
    is; rarely true when none is."""
    waiting = _WAITING.format(ref=ref_sql)
    return f"EXISTS (SELECT 1 FROM delivery_notifications d WHERE {waiting})"  # noqa: S608
