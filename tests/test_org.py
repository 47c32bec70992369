"""The organisation model and disclosure judged by who is exposed (issue 12, items 1-2): pure logic,
hand-built events, no servers."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailaudit.config import DetectConfig, DisclosureRules, SpikeRules
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.exposure import summarise
from mailaudit.detect.org import OrgModel, is_consumer, org_domain
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.wire import Event

T0 = 1_790_000_040_000
_ids = itertools.count()


def ev(to, env, *, t=0, service="svc", mid=None, cc="", bcc=None, campaign=None, template=None,
       from_="Acme News <news@acme.example>"):
    n = next(_ids)
    return Event(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"org-{n}")), sent_at_ms=T0 + t, service=service,
        message_id=mid or f"<m{n}@acme.example>", from_=from_, to=to, envelope_to=list(env), cc=cc, bcc=bcc,
        campaign=campaign, template=template,
    )


PROVIDERS = ("gmail.com", "yahoo.com", "outlook.com", "gmx.de")


def customers(n, offset=0, providers=PROVIDERS):
    return [f"cust{i}@{providers[i % len(providers)]}" for i in range(offset, offset + n)]


def engine(hasher=None, **rules) -> DetectionEngine:
    return DetectionEngine(DetectConfig(spikes=SpikeRules(enabled=False), disclosure=DisclosureRules(**rules)),
                           hasher=hasher)


def run(eng, events):
    out = []
    for e in events:
        out.extend(eng.process(e))
    return out + eng.flush()


# --- the model itself -----------------------------------------------------------------------------

def test_org_domain_and_consumer_providers():
    assert org_domain("news.acme.example") == "acme.example"
    assert org_domain("mail.shop.co.uk") == "shop.co.uk"
    assert is_consumer("gmail.com") and is_consumer("yahoo.co.uk") and is_consumer("hotmail.fr")
    assert is_consumer("web.de") and is_consumer("mail.ru") and is_consumer("qq.com")
    assert not is_consumer("acme.example") and not is_consumer("isp.example")


def test_role_addresses_are_learned_only_at_own_domains_and_never_at_consumer_providers():
    ids = {}

    def ident(a):
        return ids.setdefault(a, len(ids) + 1)

    m = OrgModel(learn_copies=3)
    m.see_from(("news@news.acme.example",))
    m.see_from(("shop.owner@gmail.com",))                  # a consumer From never makes gmail "ours"
    for i in range(3):
        env = (f"c{i}@gmail.com",)
        m.observe("nl", ("j.berg@acme.example", "friend@gmail.com"), env, ident)
    assert m.is_org("j.berg@acme.example", ident)
    assert not m.is_org("friend@gmail.com", ident)
    # Shown three times to the SAME envelope: not learned.
    for _ in range(5):
        m.observe("nl", ("k.roth@acme.example",), ("same@gmail.com",), ident)
    assert not m.is_org("k.roth@acme.example", ident)
    # A copy showing many own-domain addresses is a leaked list, not a role pattern: it teaches nothing.
    many = tuple(f"u{i}@acme.example" for i in range(5))
    for i in range(5):
        m.observe("nl", many, (f"x{i}@gmail.com",), ident)
    assert not any(m.is_org(a, ident) for a in many)
    # State is plain JSON and round-trips.
    back = OrgModel.from_state(json.loads(json.dumps(m.to_state())), learn_copies=3)
    assert back.is_org("j.berg@acme.example", ident) and back.own == m.own
    assert m.is_org("support@acme.example", ident)          # a role mailbox name at our own domain


def test_configured_org_domains_and_role_addresses_are_us():
    m = OrgModel(org_domains=["acme.example"], role_addresses=["Help@Partner.example"])
    assert m.is_org("anyone@staff.acme.example", hash) and m.is_org("help@partner.example", hash)
    assert not m.is_org("someone@partner.example", hash)


# --- own role addresses never make a disclosure ---------------------------------------------------

def test_announcement_to_own_list_cc_own_support_each_copy_one_customer_is_silent():
    """The false critical of issue 12: To = our list, Cc = our support mailbox, envelope = a customer."""
    eng = engine()
    out = []
    for i, c in enumerate(customers(200)):
        out += eng.process(ev("Acme customers <customers@acme.example>", [c], cc="Support <support@acme.example>",
                              t=i * 400, campaign="launch"))
    out += eng.flush()
    assert out == []


def test_slow_announcement_still_learns_its_roles_before_judging():
    eng = engine()
    evs = [ev("list@acme.example", [c], cc="support@acme.example", t=i * 9_000, campaign="notice")
           for i, c in enumerate(customers(12))]
    assert run(eng, evs) == []


def test_configured_roles_clear_the_first_copy_at_once():
    eng = engine(role_addresses=["list@acme.example", "support@acme.example"])
    assert run(eng, [ev("list@acme.example", ["c@gmail.com"], cc="support@acme.example", campaign="x")]) == []
    assert eng.stats["waits"] == 0


def test_isp_customers_at_the_senders_domain_still_count_as_people():
    """An ISP's customers share its domain: a chunk showing 30 of them to each other is a leak."""
    eng = engine()
    subs = [f"sub{i}@isp.example" for i in range(30)]
    out = run(eng, [ev(", ".join(subs), subs, from_="ISP <news@isp.example>", campaign="outage")])
    assert out and out[0].kind == "visible_disclosure" and out[0].severity == "critical"
    assert out[0].evidence["parties"] == 30


def test_isp_mail_merge_slip_among_own_domain_customers_is_caught():
    eng = engine()
    subs = [f"sub{i}@isp.example" for i in range(40)]
    evs = [ev(subs[i], [subs[i]], cc=subs[i + 1], t=i * 1000, from_="ISP <billing@isp.example>", campaign="bill")
           for i in range(39)]
    out = run(eng, evs)
    opened = [a for a in out if a.status == "open"]
    assert len(opened) == 1 and opened[0].evidence["pattern"] == "per_copy_slip"


# --- open lists of private people -----------------------------------------------------------------

def test_campaign_batch_of_25_customers_in_to_all_recipients_fires_on_the_first_copy():
    eng = engine()
    batch = customers(25)
    first = eng.process(ev(", ".join(batch), batch, campaign="reminders"))
    assert len(first) == 1 and first[0].kind == "visible_disclosure" and first[0].severity == "critical"
    assert first[0].evidence["parties"] == 25 and first[0].exposed == 25


def test_hundreds_of_people_over_a_few_free_mail_providers_are_not_an_all_hands():
    """issue 12, class 1: one submission per chunk, every visible address a recipient, no campaign."""
    eng = engine()
    chunk = customers(300, providers=("gmail.com", "yahoo.com", "hotmail.com"))
    out = eng.process(ev(", ".join(chunk), chunk))
    assert out and out[0].severity == "critical" and out[0].evidence["parties"] == 300


def test_campaign_copy_with_four_customers_fires_and_household_of_two_does_not():
    eng = engine()
    four = customers(4)
    assert eng.process(ev(", ".join(four), [four[0]], campaign="c1"))
    house = ["jane.doe@gmail.com", "john.doe@yahoo.com"]
    eng2 = engine()
    assert run(eng2, [ev(", ".join(house), house, campaign="c1")]) == []


def test_reply_all_among_a_few_organisations_staff_is_silent():
    eng = engine()
    party = [f"p{i}@{d}" for d in ("corp.example", "supplier.example", "consult.example", "client.example")
             for i in range(3)]
    evs = []
    for k in range(6):
        author = party[k % 3]
        others = [p for p in party if p != author]
        evs.append(ev(others[0], others, cc=", ".join(others[1:]), t=k * 60_000, from_=author, template="relay"))
    assert run(eng, evs) == []


def test_meeting_invitation_among_two_organisations_is_silent():
    eng = engine()
    attendees = [f"a{i}@corp.example" for i in range(15)] + [f"b{i}@vendor.example" for i in range(10)]
    assert run(eng, [ev(", ".join(attendees), attendees, from_="a0@corp.example", template="invite")]) == []


def test_user_chosen_share_to_a_few_friends_is_silent():
    """A user of the service shares through it with people they chose: no campaign, few recipients."""
    eng = engine()
    friends = customers(5)
    assert run(eng, [ev(", ".join(friends), friends, from_="Docs <share@docs.example>", template="share")]) == []


def test_internal_all_hands_of_colleagues_is_silent_and_org_domains_make_them_us():
    staff = [f"s{i}@bigcorp.example" for i in range(200)]
    assert run(engine(), [ev(", ".join(staff), staff, from_="ceo@bigcorp.example")]) == []
    # With org_domains even a leaky-looking internal copy is judged as staff, not strangers.
    eng = engine(org_domains=["bigcorp.example"])
    assert run(eng, [ev(", ".join(staff), [staff[0]], from_="ceo@bigcorp.example")]) == []


# --- per-copy slips -------------------------------------------------------------------------------

def test_mail_merge_cc_next_customer_is_caught_within_a_minute():
    eng = engine()
    lst = customers(60)
    evs = [ev(lst[i], [lst[i]], cc=lst[i + 1], t=i * 2000, campaign="renewal") for i in range(59)]
    out = []
    first_alert_t = None
    for e in evs:
        got = eng.process(e)
        if got and first_alert_t is None:
            first_alert_t = e.sent_at_ms
        out += got
    out += eng.flush()
    opened = [a for a in out if a.status == "open"]
    assert len(opened) == 1 and opened[0].kind == "visible_disclosure" and opened[0].severity == "critical"
    assert opened[0].evidence["pattern"] == "per_copy_slip"
    assert first_alert_t is not None and first_alert_t - T0 <= 60_000
    final = out[-1]
    assert final.status == "resolved" and final.exposed >= 50


def test_one_constant_cc_and_same_company_colleagues_are_not_slips():
    eng = engine()
    evs = []
    for i in range(60):
        # A partner's archive mailbox on every copy: one address, not a pattern of different people.
        evs.append(ev(f"c{i}@gmail.com", [f"c{i}@gmail.com"], cc="archive@partner.example", t=i * 1000,
                      campaign="a"))
        # The customer's own colleague, not delivered: same organisation as the recipient.
        evs.append(ev(f"buyer{i}@client{i}.example", [f"buyer{i}@client{i}.example"],
                      cc=f"boss{i}@client{i}.example", t=i * 1000 + 500, campaign="b"))
    assert run(eng, evs) == []


def test_group_message_sent_per_recipient_with_one_message_id_is_not_a_slip():
    eng = engine()
    evs = []
    for k in range(20):
        a, b = f"x{k}@gmail.com", f"y{k}@yahoo.com"
        mid = f"<g{k}@acme.example>"
        evs += [ev(a, [a], cc=b, t=k * 3000, mid=mid, template="ticket"),
                ev(a, [b], cc=b, t=k * 3000 + 800, mid=mid, template="ticket")]
    assert run(eng, evs) == []


# --- sides in evidence and exposure ---------------------------------------------------------------

def test_evidence_and_exposure_rows_say_which_side_each_address_is_on():
    h = AddressHasher(b"k" * 32, "k1")
    eng = engine(hasher=h, role_addresses=["support@acme.example"])
    batch = customers(30)
    e = ev(", ".join(batch), [batch[0]], cc="support@acme.example", campaign="oops")
    (a,) = eng.process(e)
    assert a.evidence["sides"] == {"org": 1, "external": 30}
    assert a.evidence["exposed_org"] == 1 and a.exposed == 29
    assert a.evidence["exposed_including_org"] == 30             # the figure before the org model
    rows = eng.take_exposures()
    sides = {r.address_masked: r.side for r in rows}
    assert list(sides.values()).count("org") == 1
    report = summarise(rows)
    assert report[-1].side == "org" and all(x.side == "external" for x in report[:-1])
    assert report[-1].to_dict()["side"] == "org"


def test_state_with_org_and_slips_round_trips_through_json():
    eng = engine()
    lst = customers(8)
    for i in range(4):
        eng.process(ev("list@acme.example", [lst[i]], cc="support@acme.example", t=i * 100, campaign="n"))
        eng.process(ev(lst[i], [lst[i]], cc=lst[i + 1], t=i * 100 + 50, campaign="m"))
    state = json.loads(json.dumps(eng.state_dict()))
    eng2 = engine()
    eng2.load_state(state)
    rest = [ev("list@acme.example", [c], cc="support@acme.example", t=1000 + i * 100, campaign="n")
            for i, c in enumerate(customers(4, 100))]
    out = run(eng2, rest)
    # The learning in progress for "n" survived (its roles stay silent); the slip in "m" was already
    # three copies deep and its confirmation survived too: it fires after the restore, once.
    assert [(a.status, a.campaign) for a in out] == [("open", "m"), ("resolved", "m")]
    assert out[0].evidence["pattern"] == "per_copy_slip"


# --- robustness -----------------------------------------------------------------------------------

_addr = st.sampled_from(["a@gmail.com", "b@acme.example", "list@acme.example", "c@isp.example", "d@x.co.uk",
                         "e@yahoo.co.uk", "f@sub.acme.example", "", "bad@", "@bad", "x@y@z", "=?utf-8?q?x?= <g@h.io>"])
_header = st.lists(_addr, max_size=8).map(", ".join) | st.text(max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_header, st.lists(_addr, max_size=4), _header, st.one_of(st.none(), _header),
                          st.sampled_from([None, "c1", "c2"]), st.integers(0, 120_000),
                          st.sampled_from(["news@acme.example", "x@gmail.com", "", "Bad <"])),
                min_size=1, max_size=25))
def test_any_events_leave_the_engine_running_with_org_and_slips(events):
    eng = engine(role_addresses=["list@acme.example"], org_domains=["sub.acme.example"], role_learn_copies=2,
                 slip_copies=2)
    for i, (to, env, cc, bcc, camp, t, frm) in enumerate(events):
        eng.process(ev(to, env, cc=cc, bcc=bcc, campaign=camp, t=t, from_=frm, mid=f"<m{i % 3}@x>"))
    eng.advance(T0 + 10_000_000)
    eng.flush()
    json.dumps(eng.state_dict())


def test_role_mailboxes_at_a_brand_domain_next_to_the_esp_domain_are_learned():
    """From is the ESP-side domain, the list and support addresses sit at the brand's domain."""
    eng = engine()
    out = []
    for i, c in enumerate(customers(100)):
        out += eng.process(ev("Customers <customers@acme.example>", [c], cc="support@acme.example", t=i * 300,
                              campaign="launch", from_="Acme <news@acme-mail.example>"))
    assert out + eng.flush() == []


def test_a_repeated_list_of_business_people_still_fires_as_a_template_bug():
    eng = engine()
    g = ["jane.roe@client-a.example", "max.muster@client-b.example"]
    out = []
    for i, c in enumerate(customers(3)):
        out += eng.process(ev(", ".join(g), [c], t=i * 10, campaign="promo"))
    assert [a.status for a in out] == ["open"] and out[0].evidence["repeated_on_messages"] == 3


def test_invitation_sent_one_copy_per_attendee_with_a_message_id_each_is_silent():
    """iTIP REQUEST per attendee (RFC 6047 servers, calendar APIs): each copy shows every attendee, each
    has its own Message-ID; every attendee receives one, so nobody is exposed to a stranger."""
    eng = engine()
    evs = []
    for k in range(10):
        att = [f"a{k}@corp.example", f"b{k}@vendor.example", f"c{k}@gmail.com", f"d{k}@client.example"]
        for j, a in enumerate(att):
            evs.append(ev(", ".join(att), [a], t=k * 60_000 + j * 700, template="invite",
                          from_=f"Cal <calendar-notification@cal.example>"))
    assert run(eng, evs) == []
    assert eng.stats["waits"] > 0


def test_household_copies_each_to_one_member_with_distinct_message_ids_are_not_a_slip():
    eng = engine()
    evs = []
    for k in range(30):
        pair = [f"john{k}@gmail.com", f"jane{k}@yahoo.com"]
        for j, a in enumerate(pair):
            evs.append(ev(", ".join(pair), [a], t=k * 500 + j * 100, campaign="statement"))
    assert run(eng, evs) == []


def test_a_list_some_of_whose_members_never_get_the_mail_still_fires_after_the_wait():
    eng = engine()
    att = ["a@corp.example", "b@vendor.example", "c@gmail.com", "d@client.example"]
    evs = [ev(", ".join(att), [a], t=j * 700, template="invite") for j, a in enumerate(att[:2])]
    out = run(eng, evs)
    assert out and out[0].severity == "warning" and out[0].evidence["strangers_unaccounted"] == 2


def test_own_domain_role_mailbox_names_are_us_from_the_first_copy():
    """A once-a-minute announcement: no time to learn, but support@/customers@ at our domain are functions."""
    eng = engine()
    evs = [ev("customers@acme.example", [c], cc="support@acme.example", t=i * 60_000, campaign="slow")
           for i, c in enumerate(customers(3))]
    assert run(eng, evs) == [] and eng.stats["waits"] == 0
    # A person at our domain is not: an ISP's customers stay people until learned (or never).
    evs = [ev("sub1@acme.example, sub2@acme.example", [c], t=i * 60_000, campaign="slow2")
           for i, c in enumerate(customers(2, 50))]
    run(eng, evs)
    assert eng.stats["waits"] == 2


def test_checkpoint_with_org_and_slip_state_holds_no_raw_address():
    h = AddressHasher(b"s" * 32, "k1")
    eng = engine(hasher=h)
    lst = customers(6)
    for i in range(5):
        eng.process(ev("j.berg@acme.example, k.roth@acme.example", [lst[i]], t=i * 100, campaign="n"))
        eng.process(ev(lst[i], [lst[i]], cc=lst[i + 1], t=i * 100 + 50, campaign="m"))
        eng.process(ev(f"support@acme.example, {lst[i]}, x{i}@yahoo.com, y{i}@gmx.de", [lst[i]],
                       t=i * 100 + 70))                                            # waits (pending)
    blob = json.dumps(eng.state_dict())
    assert eng.services["svc"].pending and eng.services["svc"].slips.scopes
    for a in lst + ["j.berg@acme.example", "k.roth@acme.example", "x1@yahoo.com", "support@acme.example"]:
        assert a not in blob and a.split("@")[0] not in blob


@pytest.mark.servers
def test_stored_exposure_report_says_which_side_each_address_is_on(make_cfg):
    """`mailaudit exposure` reads ClickHouse: the org side comes from the alerts' `org_hashes` evidence."""
    from mailaudit.detect.report import exposure_report
    from mailaudit.detect.sinks import ClickHouseSink
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.schema import migrate

    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    h = AddressHasher(cfg.privacy.hash_key.encode(), "k1")
    eng = engine(hasher=h)
    batch = customers(12)
    alerts = []
    for i in range(3):
        alerts += eng.process(ev(", ".join(batch), [batch[i]], cc="support@acme.example", t=i * 100, campaign="oops"))
    alerts += eng.flush()
    copies: dict = {}
    for r in eng.take_exposures():
        rec = copies.setdefault(r.event_id, {
            "incident_id": r.incident_id, "event_id": r.event_id, "sent_ms": r.sent_at_ms, "service": "svc",
            "campaign": "oops", "key_id": r.key_id, "exposed_hashes": [], "exposed_masked": [],
            "exposed_domains": [], "recipient_hashes": [h.hash("x@y.example")]})
        rec["exposed_hashes"].append(r.address_hash)
        rec["exposed_masked"].append(r.address_masked)
        rec["exposed_domains"].append(r.domain)
    ClickHouseSink(db).deliver([{"type": "alert", "alert": a.to_dict()} for a in alerts]
                               + [{"type": "exposure", "row": rec} for rec in copies.values()])
    report = exposure_report(db, alerts[0].incident_id)
    sides = {r["address_hash"]: r["side"] for r in report}
    assert sides[h.hash("support@acme.example")] == "org"
    assert [r["side"] for r in report].count("org") == 1 and len(report) == 13
    assert all(sides[h.hash(c)] == "external" for c in batch) and report[-1]["side"] == "org"
    assert alerts[0].exposed == 11 and alerts[-1].exposed == 12       # people only; support@ is ours
    db.disconnect()
