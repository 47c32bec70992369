"""Per-message disclosure signals: legitimate mail stays silent, every leak shape fires."""

from __future__ import annotations

import itertools
import uuid

import pytest

from mailaudit.config import DisclosureRules
from mailaudit.detect.signals import (
    BENIGN, BCC_HEADER, CONCATENATED_TO, FIRE, RUN_TOGETHER, VISIBLE_DISCLOSURE, WAIT, disclosed_addresses,
    disclosure_signals,
)
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.wire import Event

_ids = itertools.count()
RULES = DisclosureRules()


def ev(to, env, *, cc="", bcc=None, t=0, service="svc", mid=None, campaign=None, template=None):
    n = next(_ids)
    return Event(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"sig-{n}")), sent_at_ms=1_790_000_000_000 + t,
        service=service, message_id=mid or f"<m{n}@example.net>", from_="Sender <noreply@acme.example>",
        to=to, envelope_to=list(env), cc=cc, bcc=bcc, campaign=campaign, template=template,
    )


def users(n, domain=None):
    return [f"user{i}@{domain or f'd{i % 37}.example'}" for i in range(n)]


def sig(event, rules=RULES):
    return disclosure_signals(parse_event(event), rules)


# --- legitimate mail: never fires -----------------------------------------------------------------

def test_internal_announcement_visible_list_equals_envelope_is_benign():
    staff = users(300, "acme.example")
    s = sig(ev(", ".join(staff), staff))
    assert s.visible == 300 and s.envelope == 300
    assert s.strangers == ()
    assert s.verdict == BENIGN and s.kinds == ()


def test_small_group_thread_as_one_submission_is_benign():
    people = ['"Doe, Jane" <jane@a.example>', "bob@b.example"]
    s = sig(ev(", ".join(people), ["jane@a.example", "bob@b.example", "carol@c.example"],
               cc="Carol <carol@c.example>"))
    assert s.visible == 3 and s.strangers == () and s.verdict == BENIGN


def test_one_to_per_copy_newsletter_is_benign():
    for u in users(50):
        s = sig(ev(f"Reader <{u}>", [u], campaign="nl-1"))
        assert s.verdict == BENIGN and s.strangers == ()


def test_transactional_mail_is_benign():
    s = sig(ev('"Customer" <c@x.example>', ["c@x.example"], template="receipt"))
    assert s.verdict == BENIGN and s.visible == 1


@pytest.mark.parametrize("to", ["undisclosed-recipients:;", "Undisclosed recipients:;", ""])
def test_undisclosed_recipients_with_big_envelope_is_benign(to):
    s = sig(ev(to, users(5000)))
    assert s.visible == 0 and s.verdict == BENIGN and s.kinds == ()


def test_one_stranger_is_not_suspicious():
    # A list address in To with the real recipients in the envelope (mailing-list style).
    s = sig(ev("All Staff <all-staff@acme.example>", users(40, "acme.example")))
    assert len(s.strangers) == 1 and s.verdict == BENIGN


def test_bcc_header_naming_only_the_copys_own_recipient_is_allowed():
    # RFC 5322 3.6.3: the copy for a Bcc recipient may carry a Bcc: with that recipient alone.
    s = sig(ev("a@x.example", ["boss@acme.example"], bcc="boss@acme.example"))
    assert s.bcc_exposed == () and s.verdict == BENIGN


def test_per_recipient_copy_of_a_small_group_waits_rather_than_fires():
    s = sig(ev("a@x.example, b@y.example, c@z.example", ["a@x.example"], mid="<g1@x>"))
    assert s.strangers == ("b@y.example", "c@z.example")
    assert s.verdict == WAIT and s.kinds == ()


# --- leaks: fire on the copy itself ---------------------------------------------------------------

def test_concatenated_to_fires_critical():
    audience = users(200)
    s = sig(ev(", ".join(audience), [audience[0]], campaign="c1"))
    assert s.verdict == FIRE and s.severity == "critical"
    assert s.kinds[0] == CONCATENATED_TO and VISIBLE_DISCLOSURE in s.kinds
    assert s.concatenated == "to" and len(s.strangers) == 199


def test_many_strangers_below_visible_max_fire_visible_disclosure_at_once():
    audience = users(12)
    s = sig(ev(", ".join(audience), [audience[0]]))
    assert len(s.strangers) == RULES.strangers_critical + 1
    assert s.verdict == FIRE and VISIBLE_DISCLOSURE in s.kinds and s.severity == "critical"


def test_cc_leak_fires_visible_disclosure_naming_the_cc_header():
    cc = users(30)
    s = sig(ev("Customer <c@x.example>", ["c@x.example"], cc=", ".join(cc)))
    assert s.verdict == FIRE and s.kind == VISIBLE_DISCLOSURE and s.concatenated == "cc"
    assert s.severity == "critical" and CONCATENATED_TO not in s.kinds


def test_cc_instead_of_bcc_open_list_fires_even_when_all_are_recipients():
    customers = users(80)  # 37 domains
    s = sig(ev("news@acme.example", customers + ["news@acme.example"], cc=", ".join(customers)))
    assert s.strangers == ()
    assert s.open_list and s.verdict == FIRE and s.kind == VISIBLE_DISCLOSURE


def test_run_together_fires():
    s = sig(ev("jane@gmail.comuser2@yahoo.combob@orange.fr", ["jane@gmail.com"]))
    assert s.run_together and len(s.strangers) == 2
    assert s.verdict == FIRE and RUN_TOGETHER in s.kinds and s.severity == "critical"


def test_run_together_the_parser_cannot_split_still_fires():
    # Unknown TLDs: nothing parses, but a header holding several '@' in one lump is not "nobody".
    s = sig(ev("a1@x.examplea2@y.examplea3@z.example", ["a1@x.example"]))
    assert s.run_together
    assert s.verdict == FIRE and s.kinds == (RUN_TOGETHER,)


def test_bcc_left_in_fires_and_discloses_the_bcc_addresses():
    people = users(12)
    e = ev("Undisclosed recipients:;", people, bcc=", ".join(people))
    s = sig(e)
    assert s.verdict == FIRE and s.kind == BCC_HEADER and s.severity == "critical"
    assert set(s.bcc_exposed) == set(people)
    assert set(disclosed_addresses(parse_event(e), s, s.kinds)) == set(people)


def test_small_bcc_leak_is_a_warning():
    e = ev("a@x.example", ["a@x.example", "b@y.example"], bcc="b@y.example")
    s = sig(e)
    assert s.verdict == FIRE and s.kinds == (BCC_HEADER,) and s.severity == "warning"
    assert s.bcc_exposed == ("b@y.example",)


def test_rules_switch_kinds_off_and_thresholds_move():
    people = users(12)
    off = DisclosureRules(bcc_header=False)
    assert sig(ev("Undisclosed recipients:;", people, bcc=", ".join(people)), off).verdict == BENIGN
    strict = DisclosureRules(strangers_critical=3)
    s = sig(ev("a@x.example, b@y.example, c@z.example, d@w.example", ["a@x.example"]), strict)
    assert s.verdict == FIRE and VISIBLE_DISCLOSURE in s.kinds
    assert sig(ev("a@x.example, b@y.example, c@z.example, d@w.example", ["a@x.example"])).verdict == WAIT


def test_fingerprint_identifies_the_same_list_in_any_order():
    a = users(5)
    s1 = sig(ev(", ".join(a), [a[0]]))
    s2 = sig(ev(", ".join(reversed(a)), [a[3]]))
    s3 = sig(ev(", ".join(a[:4] + ["other@q.example"]), [a[0]]))
    assert s1.fingerprint == s2.fingerprint
    assert s1.fingerprint != s3.fingerprint
    assert sig(ev("only@x.example", ["only@x.example"])).fingerprint is None


# --- who is exposed: parties and the organisation's own addresses (issue 12) ------------------------

def test_parties_count_people_at_consumer_providers_not_domains():
    people = [f"p{i}@{('gmail.com', 'yahoo.com', 'hotmail.com')[i % 3]}" for i in range(40)]
    s = sig(ev(", ".join(people), people))
    assert s.domains == 3 and s.parties == 40
    assert s.open_list and s.verdict == FIRE and s.kind == VISIBLE_DISCLOSURE and s.severity == "critical"


def test_staff_of_a_few_organisations_are_a_few_parties():
    staff = [f"s{i}@{d}" for d in ("corp.example", "labs.corp.example", "vendor.example") for i in range(30)]
    s = sig(ev(", ".join(staff), staff))
    assert s.parties == 2 and not s.open_list and s.verdict == BENIGN      # corp.example counted once


def test_campaign_threshold_is_lower_than_the_any_mail_threshold():
    four = ["a@gmail.com", "b@yahoo.com", "c@gmx.de", "d@web.de"]
    assert sig(ev(", ".join(four), four, campaign="c")).verdict == FIRE
    assert sig(ev(", ".join(four), four, template="share")).verdict == BENIGN
    assert sig(ev(", ".join(four[:2]), four[:2], campaign="c")).verdict == BENIGN      # a household
    off = DisclosureRules(campaign_list_parties=0, open_list_domains=0)
    assert sig(ev(", ".join(four), four, campaign="c"), off).verdict == BENIGN


def test_the_copys_own_from_address_is_never_a_stranger_nor_a_bcc_disclosure():
    e = ev("noreply@acme.example, c@gmail.com", ["c@gmail.com"], bcc="noreply@acme.example")
    s = sig(e)
    assert s.org == ("noreply@acme.example",) and s.strangers == () and s.bcc_exposed == ()
    assert s.all_strangers == 1 and s.verdict == BENIGN


def test_configured_roles_and_org_domains_leave_the_strangers():
    from mailaudit.detect.org import OrgModel
    org = OrgModel(org_domains=["acme.example"], role_addresses=["list@partner.example"])
    e = ev("list@partner.example", ["c@gmail.com"], cc="bob@staff.acme.example, eve@gmail.com")
    s = disclosure_signals(parse_event(e), RULES, org=org, ident=hash)
    assert set(s.org) == {"list@partner.example", "bob@staff.acme.example"}
    assert s.strangers == ("eve@gmail.com",) and s.all_strangers == 3


def test_stateless_callers_get_the_configured_organisation_and_the_copys_own_domain():
    """The inline milter policy calls disclosure_signals without a service's model."""
    rules = DisclosureRules(role_addresses=["list@partner.example"], org_domains=["staff.example"])
    e = ev("list@partner.example, boss@staff.example, support@acme.example, x@gmail.com, y@yahoo.com",
           ["c@gmail.com"])
    s = sig(e, rules)
    assert set(s.org) == {"list@partner.example", "boss@staff.example", "support@acme.example"}
    assert s.strangers == ("x@gmail.com", "y@yahoo.com") and s.verdict == WAIT


def test_strangers_fast_path_equals_the_definition():
    """``ParsedEvent.strangers`` skips the dict and the set for one To and no Cc (the bulk of traffic):
    the same tuple as "visible addresses not in the envelope", over headers and envelopes of every shape."""
    import random
    from mailaudit.ingest.parsed import visible_addresses
    rng = random.Random(3)
    pool = ["a@x.example", "b@x.example", "C@Y.example", "c@y.example", "d@z.example"]
    shapes = 0
    for i in range(3000):
        to = ", ".join(rng.sample(pool, rng.randrange(0, 3)))
        cc = ", ".join(rng.sample(pool, rng.randrange(0, 2))) if rng.random() < 0.3 else ""
        env = [rng.choice(pool + ["<b@x.example>", " A@X.example "]) for _ in range(rng.randrange(0, 3))]
        p = parse_event(Event(event_id=str(uuid.uuid4()), sent_at_ms=0, service="s", message_id="<m@x>",
                              from_="n@x.example", to=to, envelope_to=env, cc=cc or None))
        env_set = set(p.envelope)
        want = tuple(a for a in visible_addresses(p.to.addresses, p.cc.addresses) if a not in env_set)
        assert p.strangers == want and type(p.strangers) is tuple, (to, cc, env)
        shapes += len(p.to.addresses) <= 1 and not p.cc.addresses
    assert 0 < shapes < 3000           # both paths taken
