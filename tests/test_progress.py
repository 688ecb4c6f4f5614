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
