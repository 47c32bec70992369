"""Leak patterns: a service's ordinary history, then the slip. Copies of the slip are marked ``leak``.

Classes and deadlines (``base.LEAK_CLASSES``): ``visible_list`` must alert on the first leaking copy;
``header_leak``, ``per_copy_slip`` and ``spike`` within 60 s of event time after it.
"""

from __future__ import annotations

from .base import DAY_MS, HOUR_MS, MIN_MS, T0_MS, Gen, pattern, transactional


def _history(g: Gen, service: str, sender: str, days: float = 1.5, per_day: int = 400) -> int:
    """A day or two of one-To transactional mail; returns the time the leak starts (a weekday morning)."""
    transactional(g, service, sender, T0_MS, days, per_day)
    return T0_MS + int(days * DAY_MS) + 2 * HOUR_MS


# --- visible lists (deadline: the first copy) ------------------------------------------------------

@pattern("visible_list")
def concatenated_to_2019(g: Gen, s: float) -> None:
    """The 2019 incident: a bulk send loop appended each recipient to one To list instead of replacing
    it, so every copy shows the whole batch (up to 500) and goes to one customer."""
    sender = "Service <info@svc1.example>"
    t0 = _history(g, "svc1", sender)
    batch = g.people(g.n(500, 60))
    for i, (t, r) in enumerate(zip(g.spread(t0, len(batch), 20.0), batch)):
        g.emit(t, "svc1", sender, ", ".join(g.named(b) for b in batch), [r], campaign="march-news", leak=True)


@pattern("visible_list")
def mass_visible_chunk_submissions(g: Gen, s: float) -> None:
    """A mass visible list sent as one submission per chunk: To lists a few hundred customers, every
    one of them an envelope recipient of that submission (Outlook "To: paste the list", or an ESP
    send with all recipients in one personalization), from a service whose normal mail has one To;
    customers on gmail/outlook/yahoo and the like (issue 12, class 1)."""
    sender = "Energy Co <kundenservice@energy.example>"
    t0 = _history(g, "energy", sender)
    custs = g.people(g.n(900, 60))
    k = max(25, len(custs) // 3)
    for i in range(0, len(custs), k):
        chunk = custs[i:i + k]
        g.emit(t0 + i * 40, "energy", sender, ", ".join(g.named(c) for c in chunk), chunk,
               campaign="price-change", leak=True)


@pattern("visible_list")
def small_batch_25_in_to(g: Gen, s: float) -> None:
    """A batch of 25 customers in one To, all recipients of one submission (a clinic's appointment
    reminder sent from a spreadsheet by hand, ICO enforcement notices cite such cases)."""
    sender = "Clinic <termine@clinic.example>"
    t0 = _history(g, "clinic", sender, per_day=150)
    for j in range(3):
        batch = g.people(25)
        g.emit(t0 + j * 90_000, "clinic", sender, ", ".join(g.named(b) for b in batch), batch,
               campaign="reminders", leak=True)


@pattern("visible_list")
def cc_instead_of_bcc(g: Gen, s: float) -> None:
    """Cc used instead of Bcc: one message to 80 customers, all in Cc, To = the sender itself (the HIV
    clinic 56 Dean Street incident, 2015, ICO fine), one submission."""
    sender = "Practice <admin@practice.example>"
    t0 = _history(g, "practice", sender, per_day=150)
    pts = g.people(g.n(80, 30))
    g.emit(t0, "practice", sender, sender, ["admin@practice.example"] + pts, cc=", ".join(g.named(p) for p in pts),
           campaign="newsletter", leak=True)


@pattern("visible_list")
def cc_leak_per_copy(g: Gen, s: float) -> None:
    """A template bug puts the campaign's recipient list into Cc while each copy still goes to one
    customer (To = that customer): every copy shows 60 other customers in Cc."""
    sender = "Gym <members@gym.example>"
    t0 = _history(g, "gym", sender)
    lst = g.people(g.n(60, 30))
    for t, r in zip(g.spread(t0, len(lst), 10.0), lst):
        g.emit(t, "gym", sender, g.named(r), [r], cc=", ".join(g.named(x) for x in lst if x != r),
               campaign="opening-hours", leak=True)


@pattern("visible_list")
def semicolon_joined_list(g: Gen, s: float) -> None:
    """A list pasted from Outlook/Excel joined with ``;`` (not an RFC 5322 separator) into To, sent one
    copy per recipient: each copy shows everyone in a malformed list."""
    sender = "Events <events@venue.example>"
    t0 = _history(g, "venue", sender)
    lst = g.people(g.n(120, 30))
    for t, r in zip(g.spread(t0, len(lst), 15.0), lst):
        g.emit(t, "venue", sender, "; ".join(lst), [r], campaign="tickets", leak=True)


@pattern("visible_list")
def named_group_with_members(g: Gen, s: float) -> None:
    """A named group written *with* its members (``Customers: a@x, b@y, ...;``, RFC 5322 §3.4), a
    mailer that meant an empty group: every recipient sees the member list; 100 per submission."""
    sender = "Airline <news@air.example>"
    t0 = _history(g, "airline", sender)
    custs = g.people(g.n(400, 50))
    for i in range(0, len(custs), 100):
        chunk = custs[i:i + 100]
        g.emit(t0 + i * 50, "airline", sender, "Customers: " + ", ".join(chunk) + ";", chunk,
               campaign="schedule-change", leak=True)


@pattern("visible_list")
def isp_customers_visible(g: Gen, s: float) -> None:
    """An ISP mails its own mailbox customers (who share its domain) with the list visible in To, one
    submission per 150: its customers are people, not colleagues, though their domain is the ISP's."""
    sender = "ISP <service@isp2.example>"
    for t in g.daily_times(T0_MS, 1.5, 400):
        r = g.person("isp2.example")
        g.emit(t, "isp2", sender, g.named(r), [r], template="billing")
    custs = g.people(g.n(450, 60), "isp2.example")
    t0 = T0_MS + int(1.5 * DAY_MS) + 2 * HOUR_MS
    for i in range(0, len(custs), 150):
        chunk = custs[i:i + 150]
        g.emit(t0 + i * 30, "isp2", sender, ", ".join(g.named(c) for c in chunk), chunk,
               campaign="tariff-notice", leak=True)


@pattern("visible_list")
def concatenated_to_idn(g: Gen, s: float) -> None:
    """The concatenated-To bug on a customer base with internationalised addresses (EAI local parts,
    IDN domains): every copy shows 150 customers, each copy to one of them."""
    sender = "Shop <kontakt@laden.example>"
    t0 = _history(g, "laden", sender)
    doms = ("gmail.com", "müller.de", "xn--mller-kva.de", "web.de", "correo.es")
    lst = list(dict.fromkeys(f"{g.rng.choice(('jürgen', 'zoë', 'søren', 'anna', 'josé'))}{g.rng.randint(1, 9999)}@"
                             f"{g.rng.choice(doms)}" for _ in range(g.n(150, 40))))
    for t, r in zip(g.spread(t0, len(lst), 20.0), lst):
        g.emit(t, "laden", sender, ", ".join(lst), [r], campaign="sale", leak=True)


# --- header slips (deadline 60 s) ---------------------------------------------------------------

@pattern("header_leak")
def bcc_header_left_in(g: Gen, s: float) -> None:
    """A mailer that writes the Bcc header into the sent copy (RFC 5322 §3.6.3 allows three ways;
    some libraries keep it in all copies): one submission to 40 Bcc customers, each copy shows them."""
    sender = "Council <info@council.example>"
    t0 = _history(g, "council", sender, per_day=200)
    rcpts = g.people(g.n(40, 10))
    g.emit(t0, "council", sender, sender, ["info@council.example"] + rcpts, bcc=", ".join(rcpts),
           campaign="consultation", leak=True)


@pattern("header_leak")
def run_together_addresses(g: Gen, s: float) -> None:
    """Addresses run together with no separator (``a@x.comb@y.com``), from string concatenation in a
    send script, one copy per recipient, each showing the whole run."""
    sender = "Tours <booking@tours.example>"
    t0 = _history(g, "tours", sender)
    lst = g.people(g.n(30, 10))
    for t, r in zip(g.spread(t0, len(lst), 5.0), lst):
        g.emit(t, "tours", sender, "".join(lst), [r], campaign="itinerary", leak=True)


@pattern("header_leak")
def bcc_header_small_group(g: Gen, s: float) -> None:
    """A small Bcc group whose header survives: To = one customer, Bcc header names four more customers
    who also receive the copy (a PHP mail() script passing Bcc in the headers string)."""
    sender = "Landlord <office@lettings.example>"
    t0 = _history(g, "lettings", sender, per_day=100)
    for j in range(4):
        ppl = g.people(5)
        g.emit(t0 + j * 20_000, "lettings", sender, g.named(ppl[0]), ppl, bcc=", ".join(ppl[1:]),
               campaign="heating", leak=True)


# --- per-copy slips (deadline 60 s) ----------------------------------------------------------------

@pattern("per_copy_slip")
def mail_merge_cc_next_customer(g: Gen, s: float) -> None:
    """Mail-merge off-by-one: each customer's copy Cc's the next row's customer (a merge field bound to
    the wrong column), a distinct Message-ID per copy; every copy has one stranger (issue 12, item 2)."""
    sender = "Dental <praxis@dental.example>"
    t0 = _history(g, "dental", sender)
    lst = g.people(g.n(200, 40) + 1)
    for i, t in enumerate(g.spread(t0, len(lst) - 1, 4.0)):
        g.emit(t, "dental", sender, g.named(lst[i]), [lst[i]], cc=g.named(lst[i + 1]), campaign="recall", leak=True)


@pattern("per_copy_slip")
def mail_merge_to_two_rows(g: Gen, s: float) -> None:
    """Mail-merge range error: each copy's To holds its row and the previous row (a formula dragged one
    cell too far), sent to its own row only: one other customer visible per copy."""
    sender = "Garage <service@garage.example>"
    t0 = _history(g, "garage", sender)
    lst = g.people(g.n(150, 40) + 1)
    for i, t in enumerate(g.spread(t0, len(lst) - 1, 3.0)):
        g.emit(t, "garage", sender, f"{g.named(lst[i + 1])}, {g.named(lst[i])}", [lst[i + 1]],
               campaign="mot-due", leak=True)


@pattern("per_copy_slip")
def crm_cc_previous_two(g: Gen, s: float) -> None:
    """A CRM workflow that Cc's "related contacts" from a stale cache: each customer's copy Cc's the two
    customers handled just before, distinct Message-IDs, one copy per customer."""
    sender = "Broker <team@broker.example>"
    t0 = _history(g, "broker", sender)
    lst = g.people(g.n(120, 40) + 2)
    for i, t in enumerate(g.spread(t0, len(lst) - 2, 2.0)):
        r = lst[i + 2]
        g.emit(t, "broker", sender, g.named(r), [r], cc=f"{g.named(lst[i])}, {g.named(lst[i + 1])}",
               campaign="quote-follow-up", leak=True)


# --- spikes (deadline 60 s) ------------------------------------------------------------------------

@pattern("spike")
def recipient_count_jump(g: Gen, s: float) -> None:
    """A service whose messages always had one recipient suddenly sends messages of 300 envelope
    recipients (a bug passing the whole list as RCPT TO, To = undisclosed): an order-of-magnitude jump
    after only six hours of one-To history (issue 13, item 3)."""
    sender = "Receipts <receipts@pay.example>"
    for t in g.daily_times(T0_MS + 6 * HOUR_MS, 0.25, 2000):
        r = g.person()
        g.emit(t, "pay", sender, g.named(r), [r], template="receipt")
    t0 = T0_MS + 12 * HOUR_MS
    for j in range(4):
        g.emit(t0 + j * 5000, "pay", sender, "undisclosed-recipients:;", g.people(300), template="receipt", leak=True)


@pattern("spike")
def volume_surge_at_night(g: Gen, s: float) -> None:
    """A volume surge at an unusual hour: a service sending a few messages a minute in the daytime
    suddenly sends ~3,000 in ten minutes at 03:00 UTC (a runaway retry loop or a compromised API key)."""
    sender = "Alerts <alerts@app.example>"
    transactional(g, "app", sender, T0_MS, 2.0, 1500)
    t0 = T0_MS + 2 * DAY_MS + 3 * HOUR_MS
    for t in g.spread(t0, g.n(3000, 400), 5.0):
        r = g.person()
        g.emit(t, "app", sender, g.named(r), [r], template="alert", leak=True)


@pattern("spike")
def compromised_account_spam(g: Gen, s: float) -> None:
    """A compromised customer account on a transactional service: from a steady ~1/min the service jumps
    to ~10 messages a second of spam to random free-mail addresses, mid-afternoon."""
    sender = "Invoices <invoices@smallbiz.example>"
    transactional(g, "smallbiz", sender, T0_MS, 2.0, 1000)
    t0 = T0_MS + 2 * DAY_MS + 15 * HOUR_MS
    for t in g.spread(t0, g.n(2000, 300), 10.0):
        r = g.person()
        g.emit(t, "smallbiz", sender, g.named(r), [r], template="invoice", leak=True)
