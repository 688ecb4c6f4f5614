from __future__ import annotations

from importer.progress import Progress


def test_weighted_phases_only_rise_and_end_at_100() -> None:
    p = Progress()
    p.total = 1000
    p.plan([("TransferScratch", 50, True), ("Convert", 50, False)])
    p.enter("TransferScratch")
    p.update(500)
    assert 24.9 < p.percent < 25.1
    p.update(500)
    assert p.percent == 50.0
    p.enter("Convert")
    assert p.percent == 50.0  # entering a phase never goes back
    p.set_fraction(0.5)
    assert p.percent == 75.0
    p.set_fraction(0.2)  # qemu-img progress is monotonic here too
    assert p.percent == 75.0
    p.set_fraction(1.0)
    assert p.percent < 100.0  # 100 only once the import has really finished
    p.finish()
    assert p.percent == 100.0


def test_a_followed_stage_starts_its_rate_from_zero() -> None:
    """-O's conversion stage follows the import's progress: its first line must not subtract
    the import's bytes from the new stage's (a negative rate)."""
    import io
    import time

    from importer.reporting import ProgressReporter

    first, second = Progress(), Progress()
    first.update(100 << 20)
    out = io.StringIO()
    reporter = ProgressReporter(first, "lines", interval=0.02, stream=out)
    time.sleep(0.1)
    second.enter("Convert to qcow2")
    reporter.follow(second)
    time.sleep(0.1)
    reporter.close()
    lines = out.getvalue().splitlines()
    assert any("convert to qcow2" in ln for ln in lines), lines
    assert not any(", -" in ln for ln in lines), lines  # no negative rate
