"""The one place where part_tests reaches into grading (imports otherwise run grading -> part_tests -> utils).

The tests' `call` (part_tests/_common.py) takes an identity fingerprint of what the tests judge with
before the student's function runs and compares it after the function returns, so that a function
that switched a check off fails even outside the grader. The fingerprint is the grader's own
(grading/fingerprint.py), the one the graded runner uses; it is imported here, when the tests are
imported, so that `call` holds these very functions before any student code runs.
"""

from __future__ import annotations

from grading.fingerprint import changed_since, fingerprint

__all__ = ["changed_since", "fingerprint"]
