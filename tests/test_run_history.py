"""`mailaudit run` on a stack that already holds traffic (the README's main command run twice)."""

from mailaudit.commands.run import history_to_load


def test_run_loads_no_history_over_traffic_the_stack_already_holds():
    """A second `mailaudit run` on a stack left running loads only the time since its newest event:
    an hour reloaded behind the detector's restored watermark raised false disclosures."""
    now = 1_800_000_000_000
    assert history_to_load(3600, None, now) == 3600                  # a new stack: all of it
    assert history_to_load(3600, now - 90_000, now) == 90            # 90 s since the last run's traffic
    assert history_to_load(3600, now - 7_200_000, now) == 3600       # older than asked: as asked
    assert history_to_load(3600, now + 5_000, now) == 0              # traffic up to now (or a clock ahead)
    assert history_to_load(0, now - 90_000, now) == 0
