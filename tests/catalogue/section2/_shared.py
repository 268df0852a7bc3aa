"""What several of Section 2's catalogue modules share: the reference solutions (`R`), loaded once."""

from __future__ import annotations

from utils.reference import load

ref = load("section2")
R = ref
